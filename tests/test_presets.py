"""--preset: named defaults under the YAML file and the flags; the dalle preset's boilerplate-caption filter."""

from __future__ import annotations

import pytest
from paircurate.filters.caption import boilerplate_kind, check_caption
from paircurate.schemas.config import CaptionConfig, ConfigError, PipelineConfig
from paircurate.schemas.outcomes import Reason

from paircurate.cli import build_config, main, make_parser
from paircurate.config import PRESETS, load_config


def _cfg(*argv: str) -> PipelineConfig:
    args, beam_args = make_parser().parse_known_args(["run", "x.csv", "-o", "out", *argv])
    return build_config(args, beam_args)


def test_clip_preset_is_datacomp_basic_filtering():
    cfg = _cfg("--preset", "clip")
    assert (cfg.caption.min_words, cfg.caption.min_chars) == (3, 6)
    assert (cfg.image.min_image_size, cfg.image.max_aspect_ratio) == (200, 3.0)
    assert cfg.clip.enabled is True
    assert cfg.caption.reject_boilerplate is False
    # Everything the preset does not name keeps the plain default.
    assert cfg.image.image_size == PipelineConfig().image.image_size == 256
    assert cfg.download == PipelineConfig().download


def test_dalle_preset():
    cfg = _cfg("--preset", "dalle")
    assert (cfg.image.image_size, cfg.image.resize_mode) == (256, "center_crop")
    assert (cfg.image.max_aspect_ratio, cfg.image.min_image_size) == (2.0, 256)
    assert (cfg.caption.min_words, cfg.caption.reject_boilerplate) == (2, True)
    assert cfg.clip.enabled is False


def test_preset_under_yaml_under_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("image:\n  min_image_size: 150\ncaption:\n  min_chars: 10\n")
    cfg = _cfg("--preset", "clip", "--config", str(path), "--min-chars", "12", "--max-aspect-ratio", "4")
    assert cfg.image.min_image_size == 150  # YAML over preset
    assert cfg.caption.min_chars == 12  # flag over YAML over preset
    assert cfg.image.max_aspect_ratio == 4.0  # flag over preset
    assert cfg.caption.min_words == 3  # preset kept where neither file nor flag speaks
    assert cfg.clip.enabled is True


def test_load_config_matches_the_cli_and_names_unknown_presets(tmp_path):
    assert load_config("dalle") == PipelineConfig.from_dict(PRESETS["dalle"])
    assert load_config() == PipelineConfig()
    with pytest.raises(ConfigError, match="unknown preset 'laion'.*clip.*dalle"):
        load_config("laion")
    # Applying a preset does not mutate the table it came from.
    load_config("clip", None).with_overrides({"caption.min_words": 9})
    assert PRESETS["clip"]["caption"]["min_words"] == 3


def test_unknown_preset_on_the_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.csv", "-o", "out", "--preset", "laion"])
    assert exc.value.code == 2
    assert "invalid choice: 'laion'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "caption, kind",
    [
        ("image", "placeholder"),
        ("Photo.", "placeholder"),
        ("Untitled", "placeholder"),
        ("untitled-1", "placeholder"),
        ("image 3", "placeholder"),
        ("click to enlarge", "placeholder"),
        ("IMG_1234.JPG", "camera_file_name"),
        ("DSC_0001", "camera_file_name"),
        ("DSCN1234.jpg", "camera_file_name"),
        ("P1010001.JPG", "camera_file_name"),
        ("PXL_20210101_123456789.jpg", "camera_file_name"),
        ("IMG-20200101-WA0001.jpg", "camera_file_name"),
        ("Screenshot 2021-01-01 at 10.00.00.png", "camera_file_name"),
        ("holiday.jpg", "file_name"),
        ("my_vacation_2019.png", "file_name"),
    ],
)
def test_boilerplate_captions_are_recognised(caption, kind):
    assert boilerplate_kind(caption) == kind


@pytest.mark.parametrize(
    "caption",
    ["a dog on a beach", "photo of a cat", "image of a red circle", "the photo", "P1 racing car",
     "2019 ford mustang", "Photo 2019 trip to paris", "pano 360 view of a beach", "", "sam"],
)
def test_real_captions_are_not_boilerplate(caption):
    assert boilerplate_kind(caption) is None


def test_check_caption_rejects_boilerplate_only_when_asked():
    on = CaptionConfig(reject_boilerplate=True)
    d = check_caption("IMG_1234.JPG", on)
    assert (d.keep, d.reason, d.detail) == (False, Reason.BOILERPLATE_CAPTION, "camera_file_name: 'IMG_1234.JPG'")
    assert Reason.BOILERPLATE_CAPTION.value == "boilerplate_caption"
    assert check_caption("IMG_1234.JPG", CaptionConfig()).keep
    assert check_caption("a red circle on a blue background", on).keep
    # The length filters come first, so a one-word placeholder still reads as too few words.
    words = check_caption("image", CaptionConfig(min_words=2, reject_boilerplate=True))
    assert words.reason == Reason.CAPTION_TOO_FEW_WORDS
    assert check_caption("untitled image", CaptionConfig(min_words=2, reject_boilerplate=True)).reason == Reason.BOILERPLATE_CAPTION


def test_boilerplate_rejects_flow_through_the_pipeline(loopback_server, tmp_path):
    import io
    import json

    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 120, 200)).save(buf, format="PNG")
    path = loopback_server.add("/a.png", buf.getvalue(), content_type="image/png")
    rows = [("a blue square picture", "kept"), ("IMG_1234.JPG", "boilerplate_caption"), ("untitled image", "boilerplate_caption")]
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text("".join(json.dumps({"url": loopback_server.url(path) + f"?v={i}", "caption": c}) + "\n" for i, (c, _) in enumerate(rows)))
    out = tmp_path / "out"
    rc = main(["run", str(inputs), "-o", str(out), "--preset", "dalle", "--min-words", "1", "--min-image-size", "64", "--image-size", "64",
               "--no-progress", "--allow-private-network", "--retries", "0"])
    assert rc == 0
    rejects = pq.read_table(out / "rejected" / "00000.parquet").to_pylist()
    assert sorted((r["source_row"], r["stage"], r["reason"]) for r in rejects) == [
        (1, "caption", "boilerplate_caption"), (2, "caption", "boilerplate_caption")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["funnel"]["kept"] == 1 and stats["funnel"]["reasons"] == {"boilerplate_caption": 2}
    assert stats["config"]["caption"]["reject_boilerplate"] is True and stats["config"]["caption"]["min_words"] == 1


@pytest.mark.parametrize(
    "caption, lang",
    [("un chien noir sur la plage", "fr"), ("Der schwarze Hund läuft im Park", "de"), ("新しい車", "ja")],
)
def test_english_only_rejects_confident_other_languages(caption, lang):
    d = check_caption(caption, CaptionConfig(english_only=True))
    assert (d.keep, d.reason) == (False, Reason.NON_ENGLISH_CAPTION)
    assert d.detail.startswith(f"{lang} (") and float(d.detail.split("(")[1].rstrip(")")) >= 0.9
    assert check_caption(caption, CaptionConfig()).keep  # off by default


@pytest.mark.parametrize(
    "caption",
    # Plain English, and short captions whose guess is unsure ("sunset" reads as German at 0.33).
    ["a dog running on a sandy beach", "a drawing of an orange diamond", "sunset", "purple square, orange background", ""],
)
def test_english_only_keeps_english_and_unsure_captions(caption):
    assert check_caption(caption, CaptionConfig(english_only=True)).keep


def test_english_only_flag():
    assert _cfg("--english-only").caption.english_only is True
    assert _cfg().caption.english_only is False
