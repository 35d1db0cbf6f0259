import pytest
from paircurate.schemas.config import ConfigError, PipelineConfig

from paircurate.cli import build_config, make_parser


def test_defaults_are_valid_and_roundtrip():
    cfg = PipelineConfig()
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.image.resize_mode == "center_crop" and cfg.image.image_size == 256


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="imagee"):
        PipelineConfig.from_dict({"imagee": {}})
    with pytest.raises(ConfigError, match="image.sizee"):
        PipelineConfig.from_dict({"image": {"sizee": 3}})
    with pytest.raises(ConfigError, match="resize_mode"):
        PipelineConfig.from_dict({"image": {"resize_mode": "stretch"}})
    with pytest.raises(ConfigError, match="download.threads"):
        PipelineConfig.from_dict({"download": {"threads": "many"}})


def test_yaml_then_cli_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("image:\n  image_size: 384\n  resize_mode: border\noutput:\n  shard_size: 50\ninput:\n  save_cols: [a, b]\n")
    parser = make_parser()
    args, beam_args = parser.parse_known_args(
        ["run", "x.csv", "-o", "out", "--config", str(path), "--image-size", "128", "--runner", "DirectRunner"]
    )
    cfg = build_config(args, beam_args)
    assert cfg.image.image_size == 128  # flag wins
    assert cfg.image.resize_mode == "border"  # file value kept
    assert cfg.output.shard_size == 50
    assert cfg.input.save_cols == ("a", "b")
    assert cfg.input.paths == ("x.csv",)
    assert cfg.runner.beam_args == ("--runner", "DirectRunner")


def test_cli_save_cols_comma_list_and_clip_implied():
    args, beam_args = make_parser().parse_known_args(["run", "x.csv", "-o", "o", "--save-cols", "a,b", "--clip-threshold", "0.3"])
    cfg = build_config(args, beam_args)
    assert cfg.input.save_cols == ("a", "b")
    assert cfg.clip.enabled and cfg.clip.threshold == 0.3


def test_validate_for_run_requires_input_and_output():
    with pytest.raises(ConfigError, match="no input"):
        PipelineConfig().validate_for_run()
