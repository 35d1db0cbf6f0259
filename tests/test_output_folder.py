"""Output folders: paircurate writes, cleans and deletes only folders it made; bad flags and values are one line."""

from __future__ import annotations

import os

import pytest
from paircurate.storage.layout import MARKER_FILE as OUTPUT_MARKER
from paircurate.storage.layout import PLAN_FILE

from paircurate.cli import main


def url_list(folder, name="u.txt"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("http://example.invalid:99999/a.jpg\n")  # an invalid_url: runs without network
    return str(path)


def run(inputs, out, *extra):
    return main(["run", inputs, "-o", str(out), "--no-progress", "--no-report", *extra])


def test_overwrite_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    p = tmp_path / "p"
    inputs = url_list(p)
    (p / "thesis.txt").write_text("x")
    assert run(inputs, p, "--overwrite") == 2
    assert "is not empty and was not made by paircurate" in capsys.readouterr().err
    assert sorted(os.listdir(p)) == ["thesis.txt", "u.txt"]


def test_a_foreign_folder_is_refused_and_nothing_in_it_is_touched(tmp_path, capsys):
    inputs = url_list(tmp_path / "in")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in (".notes.tmp-1", "report.html", "_clip_cutoff.json"):
        (foreign / name).write_text("mine")
    assert run(inputs, foreign) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give -o a new or empty folder" in err
    assert {n: (foreign / n).read_text() for n in os.listdir(foreign)} == {".notes.tmp-1": "mine", "report.html": "mine", "_clip_cutoff.json": "mine"}


def test_our_folder_gets_a_marker_and_overwrite_replaces_it(tmp_path):
    inputs = url_list(tmp_path / "in")
    out = tmp_path / "out"
    assert run(inputs, out) == 0
    assert (out / OUTPUT_MARKER).exists()
    (out / "leftover").write_text("from an earlier run")
    assert run(inputs, out, "--overwrite") == 0
    assert not (out / "leftover").exists() and (out / OUTPUT_MARKER).exists()


def test_an_output_from_before_the_marker_counts_as_ours(tmp_path):
    inputs = url_list(tmp_path / "in")
    old = tmp_path / "old"
    old.mkdir()
    (old / PLAN_FILE).write_text("{}")
    assert run(inputs, old, "--overwrite") == 0
    assert (old / OUTPUT_MARKER).exists()


def test_an_empty_folder_is_used(tmp_path):
    inputs = url_list(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    assert run(inputs, tmp_path / "empty") == 0


def test_overwrite_refuses_our_folder_when_it_holds_an_input_or_the_working_directory(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("")
    inputs = url_list(out / "lists")
    assert run(inputs, out, "--overwrite") == 2
    assert "an input of this run" in capsys.readouterr().err
    assert os.path.exists(inputs)

    other = url_list(tmp_path / "in")
    monkeypatch.chdir(out)
    assert run(other, ".", "--overwrite") == 2
    assert "the working directory" in capsys.readouterr().err
    assert os.path.exists(inputs)


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    inputs = url_list(tmp_path / "in")
    (tmp_path / "f").write_text("x")
    assert run(inputs, tmp_path / "f") == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--clip-treshold", "0.3"], "unknown option --clip-treshold; did you mean --clip-threshold?"),
        (["--direct-num-workers", "2"], "did you mean --direct_num_workers?"),
        (["--max-eror-rate=0.1"], "did you mean --max-error-rate?"),
    ],
)
def test_an_unknown_option_is_an_error_naming_the_closest_one(tmp_path, capsys, args, says):
    inputs = url_list(tmp_path / "in")
    assert run(inputs, tmp_path / "out", *args) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_options_beam_declares_are_passed_on(tmp_path):
    inputs = url_list(tmp_path / "in")
    assert run(inputs, tmp_path / "out", "--direct_num_workers", "1", "--runner", "direct") == 0


@pytest.mark.parametrize(
    "yaml_text, says",
    [
        ("image: {max_pixels: .inf}", "image.max_pixels"),
        ("download: {deadline: .nan}", "download.deadline"),
        ("caption: {min_words: 2.5}", "caption.min_words"),
        ("runner: {max_error_rate: 2}", "runner.max_error_rate must be in [0, 1]"),
        ("dedup: {exact: [1]}", "dedup.exact"),
        ("1: 2", "unknown config key(s) ['1']"),
    ],
)
def test_every_bad_config_value_is_a_config_error_naming_the_key(tmp_path, capsys, yaml_text, says):
    inputs = url_list(tmp_path / "in")
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    assert run(inputs, tmp_path / "out", "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1


def test_a_runner_beam_cannot_make_is_refused_before_the_folder_is_touched(tmp_path, capsys):
    inputs = url_list(tmp_path / "in")
    assert run(inputs, tmp_path / "out", "--runner", "NoSuchRunner") == 2
    assert "--runner NoSuchRunner: Unexpected pipeline runner" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_overwrite_refuses_a_folder_holding_a_blocklist_of_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("")
    blocklist = out / "block.txt"
    blocklist.write_text("domain:example.com\n")
    assert run(url_list(tmp_path / "in"), out, "--overwrite", "--blocklist", str(blocklist)) == 2
    assert "an input of this run" in capsys.readouterr().err and blocklist.exists()
