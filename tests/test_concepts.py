"""Entry matching, label files and the balancing draw, without Beam; property-based where input is outside data."""

from __future__ import annotations

import json
import math
import os
import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paircurate.concepts.balancing import (
    CountSummary,
    decide,
    draw,
    keep_probability,
    summarize,
)
from paircurate.concepts.labels import load_label_set
from paircurate.concepts.matcher import EntryMatcher, normalize_text
from paircurate.schemas.config import UserError
from paircurate.schemas.outcomes import Reason

from paircurate.cli import main

# --- matcher ---------------------------------------------------------------------------------------


def test_substring_matching_as_metaclip():
    m = EntryMatcher(["Dog", "hot dog", "cat", "dog"])  # case folded, duplicates kept once
    assert m.entries == ["dog", "hot dog", "cat"]
    assert m.match("A HOT   Dog stand near the catalogue") == ["dog", "hot dog", "cat"]
    assert m.match("") == [] and m.match(None) == []


def test_whole_words():
    m = EntryMatcher(["cat", "hot dog", "c++"], whole_words=True)
    assert m.match("catalogue of a hot dog") == ["hot dog"]
    assert m.match("cat, hot-dog") == ["cat"]
    assert m.match("cat.") == ["cat"] and m.match("wildcat") == []
    assert m.match("I like c++!") == ["c++"]


def _reference(entries: list[str], caption: str, whole_words: bool) -> list[str]:
    text = normalize_text(caption)
    out = []
    for entry in dict.fromkeys(normalize_text(e) for e in entries if normalize_text(e)):
        start = text.find(entry)
        while start != -1:
            end = start + len(entry)
            if not whole_words or ((start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())):
                out.append(entry)
                break
            start = text.find(entry, start + 1)
    return out


_words = st.text(alphabet="abcé -.D\u00a0", min_size=0, max_size=8)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_words, max_size=12), caption=st.text(alphabet="abcé -.DX\n\t\u00a0", max_size=60), whole_words=st.booleans())
def test_matcher_equals_a_plain_scan(entries, caption, whole_words):
    assert EntryMatcher(entries, whole_words=whole_words).match(caption) == _reference(entries, caption, whole_words)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(st.text(max_size=10), max_size=8), caption=st.text(max_size=80))
def test_matcher_never_fails_on_any_unicode(entries, caption):
    found = EntryMatcher(entries).match(caption)
    assert all(e in normalize_text(caption) for e in found)


# --- label files ------------------------------------------------------------------------------------


def test_imagenet_is_open_clips_class_names():
    labels = load_label_set("imagenet")
    # 1,000 classes, 998 distinct names: "crane" (bird, machine) and "maillot" appear twice.
    assert len(labels) == 998 and labels.labels[0] == "tench" and "Golden Retriever" in labels.labels
    assert len(labels.prompts_for(0)) == 80 and labels.prompts_for(0)[0] == "a bad photo of a tench."


def test_every_file_format(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\ndog\n\n  hot   dog \ndog\n")
    (tmp_path / "a.json").write_text(json.dumps(["dog", "hot dog", ""]))
    (tmp_path / "a.csv").write_text("label,prompt\ndog,a photo of a dog\ndog,a dog\nhot dog,\n")
    (tmp_path / "a.tsv").write_text("label\tprompt\ndog\ta photo of a dog\ndog\ta dog\nhot dog\t\n")
    pq.write_table(pa.table({"label": ["dog", "dog", "hot dog"], "prompt": ["a photo of a dog", "a dog", None]}), tmp_path / "a.parquet")
    for name in ("a.txt", "a.json", "a.csv", "a.tsv", "a.parquet"):
        labels = load_label_set(str(tmp_path / name))
        assert labels.labels == ("dog", "hot dog"), name
    table = load_label_set(str(tmp_path / "a.parquet"))
    assert table.prompts == (("a photo of a dog", "a dog"), ())
    assert table.prompts_for(0) == ["a photo of a dog", "a dog"]
    assert table.prompts_for(1, templates=[lambda c: f"a photo of a {c}."]) == ["a photo of a hot dog."]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n# only a comment\n", "holds no labels"),
        ("bad.json", "{not json", "not valid JSON"),
        ("dict.json", '{"a": 1}', "must hold a list of strings"),
        ("ints.json", "[1, 2]", "item 0 is int"),
        ("nolabel.csv", "name\ndog\n", "needs a header row with a 'label' column"),
        ("blank.csv", "label\ndog\n\"\"\n", "row 2 has no label"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("garbage.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ],
)
def test_bad_label_files_are_one_line_user_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message) as info:
        load_label_set(str(path), option="--balance-entries")
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "--balance-entries" in str(info.value)


def test_missing_file_names_the_choices(tmp_path):
    with pytest.raises(UserError, match="no such file; give 'imagenet' or a label file"):
        load_label_set(str(tmp_path / "nope.txt"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".json", ".csv", ".tsv", ".parquet"]))
def test_any_bytes_give_labels_or_a_user_error(tmp_path, data, suffix):
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(data)
    try:
        labels = load_label_set(str(path))
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert len(labels) >= 1 and all(label and label == " ".join(label.split()) for label in labels.labels)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12), min_size=1, max_size=10))
def test_labels_round_trip_through_every_format(tmp_path, labels):
    expected = tuple(dict.fromkeys(" ".join(x.split()) for x in labels if " ".join(x.split())))
    (tmp_path / "l.json").write_text(json.dumps(labels))
    pq.write_table(pa.table({"label": labels}), tmp_path / "l.parquet")
    if not expected:
        with pytest.raises(UserError):
            load_label_set(str(tmp_path / "l.json"))
        return
    assert load_label_set(str(tmp_path / "l.json")).labels == expected
    if all(" ".join(x.split()) for x in labels):
        assert load_label_set(str(tmp_path / "l.parquet")).labels == expected


# --- the draw and the decision ----------------------------------------------------------------------


def test_keep_probability():
    assert keep_probability(0, 10) == keep_probability(10, 10) == 1.0
    assert keep_probability(100, 10) == 0.1


def test_draw_is_fixed_and_uniform():
    assert draw("u1", "dog") == draw("u1", "dog") != draw("u1", "cat")
    values = [draw(f"uid{i}", "dog") for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    # Fixed values, so these bounds cannot flake: mean 0.5 +- 4 standard errors, every decile about 10 %.
    assert abs(statistics.fmean(values) - 0.5) < 4 * math.sqrt(1 / 12 / len(values))
    deciles = [sum(int(v * 10) == d for v in values) for d in range(10)]
    assert all(abs(d - 2000) < 4 * math.sqrt(2000 * 0.9) for d in deciles), deciles


def test_ten_times_the_cap_ends_near_the_cap_and_rare_entries_keep_all():
    cap = 1000
    counts = {"stock photo": 10 * cap, "axolotl": 7, "kept through a rare entry": 3}
    kept = sum(decide(f"s{i}", ["stock photo"], counts, cap).keep for i in range(10 * cap))
    # Binomial(10,000, 0.1): sd 30; tolerance 4 sd.
    assert abs(kept - cap) <= 120, kept
    assert all(decide(f"r{i}", ["axolotl"], counts, cap).keep for i in range(7))
    # Any entry keeps the sample (MetaCLIP): a common entry never removes a sample a rare one keeps.
    assert all(decide(f"s{i}", ["stock photo", "kept through a rare entry"], counts, cap).keep for i in range(3))


def test_rejects_name_the_most_frequent_entry():
    counts = {"dog": 500, "cat": 50_000}
    uid = next(f"u{i}" for i in range(1000) if not decide(f"u{i}", ["dog", "cat"], counts, 10).keep)
    d = decide(uid, ["dog", "cat"], counts, 10)
    assert d.reason is Reason.OVER_REPRESENTED and d.detail == "entry 'cat': 50000 samples, cap 10"
    assert decide("x", [], counts, 10).keep
    assert decide("x", [], counts, 10, drop_unmatched=True).reason is Reason.NO_ENTRY_MATCH


@given(counts=st.dictionaries(st.text(max_size=6), st.integers(0, 10_000), max_size=40), split=st.integers(0, 40), cap=st.integers(1, 500))
def test_summary_merges_like_one_pass(counts, split, cap):
    items = sorted(counts.items())
    whole = summarize(items, cap, top=5)
    a, b = CountSummary(cap=cap, top=5), CountSummary(cap=cap, top=5)
    for entry, count in items[:split]:
        a.add(entry, count)
    for entry, count in items[split:]:
        b.add(entry, count)
    a.merge(b)
    assert a.as_dict() == whole
    positive = {k: v for k, v in counts.items() if v > 0}
    total = sum(positive.values())
    entropy = -sum(v / total * math.log2(v / total) for v in positive.values()) if total else 0.0
    assert whole["entropy_bits"] == pytest.approx(entropy, abs=1e-3)
    assert whole["top"] == [[k, v] for k, v in sorted(positive.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    assert whole["entries_over_cap"] == sum(v > cap for v in positive.values())


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--balance-cap", "10"], "--balance-cap needs --balance-entries"),
        (["--balance-entries", "imagenet"], "--balance-entries needs --balance-cap"),
        (["--balance-cap", "10", "--balance-by", "concepts"], "--balance-by concepts balances on concept tags: give --concepts"),
        (["--balance-cap", "-1", "--balance-entries", "imagenet"], "balance.cap must be >= 0"),
        (["--concept-top-k", "0"], "concepts.top_k must be >= 1"),
        (["--balance-cap", "10", "--balance-entries", "MISSING"], "--balance-entries MISSING: no such file"),
        (["--concepts", "MISSING"], "--concepts MISSING: no such file"),
    ],
)
def test_bad_options_fail_before_the_run_in_one_line(tmp_path, capsys, flags, message):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a dog\n")
    out = tmp_path / "out"
    assert main(["run", str(pairs), "-o", str(out), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(out / "stats.json")


def test_yaml_sections_and_flags_build_the_same_config(tmp_path):
    from paircurate.schemas.config import ConfigError, PipelineConfig

    from paircurate.cli import build_config, make_parser

    path = tmp_path / "c.yaml"
    path.write_text("clip:\n  enabled: true\nconcepts:\n  labels: imagenet\n  top_k: 5\n"
                    "balance:\n  entries: imagenet\n  cap: 20000\n  whole_words: true\n  drop_unmatched: true\n")
    from_yaml = build_config(*make_parser().parse_known_args(["run", "x.csv", "-o", "o", "--config", str(path)]))
    from_flags = build_config(*make_parser().parse_known_args(
        ["run", "x.csv", "-o", "o", "--concepts", "imagenet", "--concept-top-k", "5", "--balance-entries", "imagenet",
         "--balance-cap", "20000", "--balance-whole-words", "--balance-drop-unmatched"]))
    assert from_yaml == from_flags  # --concepts turned CLIP on
    assert from_flags.balance.enabled and from_flags.concepts.top_k == 5
    with pytest.raises(ConfigError, match="--concepts tags images with the CLIP model"):
        PipelineConfig.from_dict({"input": {"paths": ["x"]}, "output": {"path": "o"}, "concepts": {"labels": "imagenet"}}).validate_for_run()
    with pytest.raises(ConfigError, match="balance.by must be one of"):
        PipelineConfig.from_dict({"balance": {"by": "image"}})


def test_label_embeddings_average_normalised_prompts_and_top_k_ranks_by_cosine(monkeypatch):
    import numpy as np
    from paircurate.concepts.labels import LabelSet
    from paircurate.embeddings.clip import TINY_MODEL, load_clip
    from paircurate.embeddings.zeroshot import label_embeddings, top_k_concepts

    from paircurate.testing import synthetic

    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    labels = LabelSet("t", ("circle", "star", "cross"), (("a circle", "a round disc"), (), ("a cross",)))
    templates = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of a {c}."]
    import paircurate.embeddings.zeroshot as zeroshot

    monkeypatch.setattr(zeroshot, "imagenet_templates", lambda: tuple(templates))  # two templates instead of 80
    classifier = label_embeddings(clip, labels)
    for i, prompts in enumerate([["a circle", "a round disc"], ["a photo of a star.", "a drawing of a star."], ["a cross"]]):
        mean = clip.encode_texts(prompts).mean(axis=0)
        np.testing.assert_allclose(classifier[i], mean / np.linalg.norm(mean), atol=1e-5)
    images = [s.image for s in synthetic.make_samples(5, seed=2)]
    emb = clip.encode_images(images)
    tags = top_k_concepts(emb, classifier, labels.labels, k=2)
    sims = emb @ classifier.T
    for row, (names, scores) in zip(sims, tags):
        best = np.argsort(-row)[:2]
        assert names == [labels.labels[i] for i in best]
        np.testing.assert_allclose(scores, row[best], atol=1e-6)
    assert top_k_concepts(emb, classifier, labels.labels, k=10)[0][0] == [labels.labels[i] for i in np.argsort(-sims[0])]


def test_label_embeddings_are_cached_per_weights_and_prompts(tmp_path, monkeypatch):
    """The second worker (or run) reads the label matrix from disk; other prompts, other weights or a damaged file recompute."""
    import shutil

    import numpy as np
    from paircurate.concepts.labels import LabelSet
    from paircurate.embeddings.clip import TINY_CHECKPOINT_PATH, TINY_MODEL, load_clip
    from paircurate.embeddings.zeroshot import label_embeddings

    monkeypatch.setenv("PAIRCURATE_CACHE_DIR", str(tmp_path / "cache"))
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    encoded: list[int] = []
    encode_texts = clip.encode_texts
    monkeypatch.setattr(clip, "encode_texts", lambda texts: encoded.append(len(texts)) or encode_texts(texts))
    labels = LabelSet("t", ("circle", "star"), (("a circle",), ("a star", "a pointy star")))

    first = label_embeddings(clip, labels)
    assert encoded == [3]
    files = list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), first)

    again = label_embeddings(clip, labels)
    assert encoded == [3]  # read, not recomputed
    np.testing.assert_array_equal(again, first)

    other = LabelSet("t", ("circle", "star"), (("a circle",), ("a star",)))
    label_embeddings(clip, other)
    assert encoded == [3, 2]  # other prompts: another key
    assert len(list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))) == 2

    files[0].write_bytes(b"not an npy file")
    np.testing.assert_allclose(label_embeddings(clip, labels), first, atol=1e-6)
    assert encoded == [3, 2, 3]  # damaged: recomputed and written again
    np.testing.assert_array_equal(np.load(files[0]), first)

    # The same model name from a copy of the weights file is other weights as far as the key knows.
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(TINY_CHECKPOINT_PATH, copy)
    clip_copy = load_clip(TINY_MODEL, str(copy), device="cpu")
    assert clip_copy.weights_id and clip_copy.weights_id != clip.weights_id
    label_embeddings(clip_copy, labels)
    assert len(list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))) == 3

    # Random weights name nothing: never cached.
    random_clip = load_clip(TINY_MODEL, None, device="cpu")
    assert random_clip.weights_id == ""
    label_embeddings(random_clip, labels)
    assert len(list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))) == 3


def test_an_unwritable_cache_only_costs_the_recomputation(tmp_path, monkeypatch):
    from paircurate.concepts.labels import LabelSet
    from paircurate.embeddings.clip import TINY_MODEL, load_clip
    from paircurate.embeddings.zeroshot import label_embeddings

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("PAIRCURATE_CACHE_DIR", str(blocker / "cache"))  # a folder under a file: cannot be made
    clip = load_clip(TINY_MODEL, TINY_MODEL, device="cpu")
    labels = LabelSet("t", ("circle",), (("a circle",),))
    assert label_embeddings(clip, labels).shape == (1, clip.embed_dim)
