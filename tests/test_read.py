import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from paircurate.pipeline.read import InputError, detect_format, iter_rows, plan_inputs
from paircurate.schemas.config import InputConfig

ROWS = [
    {"url": "http://a.example/1.jpg", "caption": "one", "license": "cc-by", "n": 1},
    {"url": "http://a.example/2.jpg", "caption": "1984", "license": None, "n": 2},
    {"url": None, "caption": "no url", "license": "x", "n": 3},
]


def write_inputs(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text('url,caption,license,n\nhttp://a.example/1.jpg,one,cc-by,1\nhttp://a.example/2.jpg,"1984",,2\n,"no url, with comma",x,3\n')
    (tmp_path / "c.tsv").write_text("url\tcaption\tlicense\tn\nhttp://a.example/1.jpg\tone\tcc-by\t1\nhttp://a.example/2.jpg\t1984\t\t2\n\tno url\tx\t3\n")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "e.txt").write_text("http://a.example/1.jpg\n\nhttp://a.example/2.jpg\nnot-a-url\n")


@pytest.mark.parametrize("name", ["a.parquet", "b.csv", "c.tsv", "d.jsonl"])
def test_every_tabular_format_gives_the_same_rows(tmp_path, name):
    write_inputs(tmp_path)
    cfg = InputConfig(paths=(str(tmp_path / name),), save_cols=("license",))
    rows = list(iter_rows(str(tmp_path / name), detect_format(name), cfg))
    assert [r["url"] for r in rows][:2] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert rows[2]["url"] in (None, "")
    assert rows[1]["caption"] == "1984"  # text, not the integer 1984
    assert rows[0]["extra"] == {"license": "cc-by"}
    assert rows[1]["extra"]["license"] in (None, "")


def test_txt_has_one_url_per_line_and_no_caption(tmp_path):
    write_inputs(tmp_path)
    rows = list(iter_rows(str(tmp_path / "e.txt"), "txt", InputConfig()))
    assert [r["url"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg", "not-a-url"]
    assert all(r["caption"] is None for r in rows)


def test_plan_counts_rows_and_assigns_global_offsets(tmp_path):
    write_inputs(tmp_path)
    plan = plan_inputs(InputConfig(paths=(str(tmp_path / "*.parquet"), str(tmp_path / "d.jsonl"))))
    assert [(p.format, p.first_row, p.num_rows) for p in plan] == [("parquet", 0, 3), ("jsonl", 3, 3)]


def test_custom_columns(tmp_path):
    (tmp_path / "x.csv").write_text("link,alt\nhttp://h/1.png,a cat\n")
    rows = list(iter_rows(str(tmp_path / "x.csv"), "csv", InputConfig(url_col="link", caption_col="alt")))
    assert rows == [{"url": "http://h/1.png", "caption": "a cat", "extra": {}}]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.parquet", b"definitely not parquet", "bad.parquet: cannot read as parquet"),
        ("bad.jsonl", b'{"url": "http://x/1"}\n{broken\n', "bad.jsonl: line 2 is not valid JSON"),
        ("nourl.csv", b"link,caption\nhttp://x/1,a\n", "nourl.csv: no url column 'url'"),
        ("file.xyz", b"", "cannot tell the input format"),
    ],
)
def test_bad_files_fail_fast_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        plan_inputs(InputConfig(paths=(str(tmp_path / name),)))


def test_missing_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        plan_inputs(InputConfig(paths=(str(tmp_path / "missing.csv"),)))
    with pytest.raises(InputError, match="no file matches"):
        plan_inputs(InputConfig(paths=(str(tmp_path / "*.csv"),)))


def test_missing_save_col_is_named(tmp_path):
    write_inputs(tmp_path)
    with pytest.raises(InputError, match=r"--save-cols \['nope'\]"):
        plan_inputs(InputConfig(paths=(str(tmp_path / "a.parquet"),), save_cols=("nope",)))
