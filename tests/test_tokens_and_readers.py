"""Caption token ids (--tokenize), the Parquet metadata read by pyarrow, pandas and DuckDB, and open_clip training."""

from __future__ import annotations

import glob
import json
import os

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from helpers import encode, photo
from paircurate.embeddings.tokenizer import CaptionTokenizer
from paircurate.schemas import records as R

from paircurate.cli import main

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return CaptionTokenizer("ViT-B-32")


def test_ids_are_framed_by_start_and_end_tokens(tokenizer):
    ids, truncated = tokenizer.ids("a red circle", max_tokens=77)
    assert ids == [SOT, 320, 736, 7117, EOT] and not truncated


def test_long_captions_are_cut_and_flagged(tokenizer):
    ids, truncated = tokenizer.ids("a very long caption " * 20, max_tokens=8)
    assert len(ids) == 8 and ids[0] == SOT and ids[-1] != EOT and truncated
    exact, cut = tokenizer.ids("a red circle", max_tokens=5)
    assert len(exact) == 5 and not cut


def test_tokens_reach_parquet_and_tar_and_pandas_reads_the_metadata(loopback_server, tmp_path):
    rows = [
        {"url": loopback_server.url(loopback_server.add("/t/0.jpg", encode(photo(0)))), "caption": "a short caption"},
        {"url": loopback_server.url(loopback_server.add("/t/1.jpg", encode(photo(1)))), "caption": "a much longer caption that will not fit in eight tokens at all"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "--image-size", "64", "--no-progress", "--no-report",
                 "--allow-private-network", "--tokenize", "--max-text-tokens", "8"]) == 0

    parquet = glob.glob(os.path.join(out, "0*.parquet"))[0]
    table = pq.read_table(parquet)
    assert table.schema.equals(R.sample_schema(), check_metadata=False)
    by_caption = {r["caption"]: r for r in table.to_pylist()}
    short, long_ = by_caption["a short caption"], by_caption[rows[1]["caption"]]
    assert short["caption_tokens"][0] == SOT and short["caption_tokens"][-1] == EOT
    assert short["caption_tokens_truncated"] is False
    assert len(long_["caption_tokens"]) == 8 and long_["caption_tokens_truncated"] is True

    tar_tokens = {s["__key__"]: json.loads(s["tokens"]) for s in wds.WebDataset(parquet.replace(".parquet", ".tar"), shardshuffle=False)}
    assert tar_tokens == {r["uid"]: r["caption_tokens"] for r in table.to_pylist()}

    frame = pd.read_parquet(parquet)
    assert list(frame.columns) == R.sample_schema().names
    assert sorted(frame["uid"]) == sorted(r["uid"] for r in table.to_pylist())
    assert frame["width"].tolist() == [64, 64]

    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{parquet}')").fetchall()
    assert [row[0] for row in described] == R.sample_schema().names
    assert dict((row[0], row[1]) for row in described)["caption_tokens"] == "INTEGER[]"
    count, truncated = con.execute(f"SELECT count(*), sum(caption_tokens_truncated::INT) FROM read_parquet('{parquet}')").fetchone()
    assert (count, truncated) == (2, 1)



def test_open_clip_training_reads_exactly_the_kept_samples(loopback_server, tmp_path, capsys):
    rows = [{"url": loopback_server.url(loopback_server.add(f"/v/{i}.jpg", encode(photo(10 + i)))), "caption": f"a picture number {i}"} for i in range(10)]
    rows.append({"url": loopback_server.url("/fault/404"), "caption": "a picture that is gone"})
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "--image-size", "64", "--no-progress", "--no-report",
                 "--allow-private-network", "--shard-size", "4"]) == 0
    assert main(["verify-train", str(out)]) == 0
    assert "verify-train OK: open_clip_train read 10 samples (10 distinct) of 10 kept" in capsys.readouterr().out
