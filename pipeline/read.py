"""Ingest: URL + caption lists (Parquet, CSV, TSV, JSONL, TXT) into pair records.

Planning runs in the driver before the pipeline starts: it expands globs,
checks every file parses and has the URL column, and counts rows. That makes a
bad file fail fast with its name, and gives every row a global index, so shard
membership (``global_row // shard_size``) is fixed by the input alone and a
re-run can skip finished shards without reading them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Mapping

import apache_beam as beam
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard
from paircurate import storage
from paircurate.filters.url import check_url
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.config import InputConfig, UserError
from paircurate.schemas.identity import make_uid
from paircurate.schemas.outcomes import Reason, Stage

_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}


# Compressed lists are read through the standard library (zstandard for .zst):
# Arrow's own detection knows neither .xz nor Parquet inside a compressed file.
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_READ_ERRORS = (OSError, EOFError, pa.ArrowException, UnicodeDecodeError, lzma.LZMAError, zstandard.ZstdError)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def compression_of(path: str) -> str:
    """The compression suffix of ``path`` (``.gz``, ``.bz2``, ``.xz``, ``.zst``), or ``""``."""
    name = path.lower()
    return next((suffix for suffix in _COMPRESSIONS if name.endswith(suffix)), "")


def open_input(path: str) -> BinaryIO:
    """``path`` opened for reading its (decompressed) bytes; a store's object (``s3://``, ``gs://``) too."""
    if storage.is_remote(path):
        return storage.open_input(path)  # fsspec decompresses by the same suffixes
    compression = compression_of(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        return zstandard.open(path, "rb")
    return open(path, "rb")


def _open_text(path: str):
    # utf-8-sig drops a byte-order mark before the first line; a byte that is
    # not UTF-8 becomes U+FFFD in its row instead of failing the whole file.
    return io.TextIOWrapper(open_input(path), encoding="utf-8-sig", errors="replace", newline=None)


def replace_lone_surrogates(text: str) -> str:
    """Lone surrogates (JSON's ``"\\ud800"``) are not Unicode text: no codec writes them, so they become U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class InputError(UserError):
    """An input file cannot be used; the message names the file."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    first_row: int  # global index of this file's first row
    num_rows: int


def detect_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    name = path.lower()
    compression = compression_of(path)
    if compression:
        name = name[: -len(compression)]
    ext = os.path.splitext(name)[1]
    if ext not in _EXTENSIONS:
        raise InputError(f"{path}: cannot tell the input format from the extension {ext!r}; use --input-format")
    return _EXTENSIONS[ext]


def expand_paths(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Local paths, ``s3://``/``gs://``/... URLs and globs of either, expanded in order."""
    paths: list[str] = []
    for pattern in patterns:
        matches = storage.glob(pattern) if storage.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"{pattern}: no file matches this pattern")
        for path in matches:
            is_file = storage.exists(path) and not storage.isdir(path) if storage.is_remote(path) else os.path.isfile(path)
            if not is_file:
                raise InputError(f"{path}: no such file")
            try:
                path.encode("utf-8")  # every record carries it as source_file
            except UnicodeEncodeError:
                raise InputError(f"{path!r}: the file name is not valid UTF-8; rename the file") from None
            paths.append(path)
    return paths


def plan_inputs(cfg: InputConfig) -> list[InputFile]:
    """Check and count every input file; rows get global indices in file order."""
    planned = []
    offset = 0
    for path in expand_paths(cfg.paths):
        fmt = detect_format(path, cfg.input_format)
        count = sum(1 for _ in iter_rows(path, fmt, cfg))
        planned.append(InputFile(path=path, format=fmt, first_row=offset, num_rows=count))
        offset += count
    return planned


def iter_rows(path: str, fmt: str, cfg: InputConfig, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Yield ``{"url", "caption", "extra"}`` per row of ``[start, stop)``; raise InputError naming the file.

    Rows before ``start`` are counted, not converted: a pass over the last
    shards of a big file does not build the first rows' records.
    """
    try:
        if fmt in ("txt", "jsonl"):
            rows = _iter_txt(path) if fmt == "txt" else _iter_jsonl(path, cfg)
            yield from itertools.islice(rows, start, stop)
        else:
            offset = 0
            for batch in _iter_arrow_batches(path, fmt, cfg):
                if stop is not None and offset >= stop:
                    return
                end = offset + batch.num_rows
                if end > start:
                    lo = max(start - offset, 0)
                    hi = batch.num_rows if stop is None else min(stop - offset, batch.num_rows)
                    yield from _rows_from_batch(batch.slice(lo, hi - lo), cfg)
                offset = end
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _needed_columns(cfg: InputConfig) -> list[str]:
    cols = [cfg.url_col]
    if cfg.caption_col:
        cols.append(cfg.caption_col)
    return cols + [c for c in cfg.save_cols if c not in cols]


def _check_columns(path: str, available: list[str], cfg: InputConfig) -> list[str]:
    duplicated = sorted({c for c in available if available.count(c) > 1})
    if duplicated:
        raise InputError(f"{path}: column {duplicated[0]!r} appears more than once in the header; rename or drop the copies")
    if cfg.url_col not in available:
        raise InputError(f"{path}: no url column {cfg.url_col!r} (columns: {available}); use --url-col")
    missing = [c for c in cfg.save_cols if c not in available]
    if missing:
        raise InputError(f"{path}: --save-cols {missing} not in the file (columns: {available})")
    return [c for c in _needed_columns(cfg) if c in available]


def _iter_arrow_batches(path: str, fmt: str, cfg: InputConfig) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        with open_input(path) as fh:
            # Parquet needs to seek; a compressed one is decompressed into memory.
            pf = pq.ParquetFile(fh if not compression_of(path) else io.BytesIO(fh.read()))
            cols = _check_columns(path, pf.schema_arrow.names, cfg)
            yield from pf.iter_batches(batch_size=8192, columns=cols)
        return
    delimiter = "\t" if fmt == "tsv" else ","
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    with open_input(path) as fh:
        header = pacsv.open_csv(fh, parse_options=parse).schema.names
    cols = _check_columns(path, header, cfg)
    # Every needed column is read as bytes and decoded per value: a caption
    # like "1984" must not turn a column into integers that break the next
    # file's schema, and one value that is not UTF-8 must not fail the file.
    with open_input(path) as fh:
        reader = pacsv.open_csv(
            fh,
            parse_options=parse,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                include_columns=cols, column_types={c: pa.binary() for c in cols}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            yield batch


def _rows_from_batch(batch: pa.RecordBatch, cfg: InputConfig) -> Iterator[dict]:
    data = batch.to_pydict()
    urls = data[cfg.url_col]
    captions = data.get(cfg.caption_col) if cfg.caption_col else None
    for i, url in enumerate(urls):
        yield {
            # Bytes that are not UTF-8 become lone surrogates: check_url rejects the row, naming them.
            R.URL: url.decode("utf-8", errors="surrogateescape") if isinstance(url, bytes) else url,
            R.CAPTION: None if captions is None else _as_text(captions[i]),
            R.EXTRA: {c: _as_text(data[c][i]) for c in cfg.save_cols},
        }


def _iter_jsonl(path: str, cfg: InputConfig) -> Iterator[dict]:
    needed = set(_needed_columns(cfg))
    first = True
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                pairs = json.loads(line, object_pairs_hook=list)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit integer, nesting too deep
                raise InputError(f"{path}: line {line_no} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
            if line.lstrip()[:1] != "{":  # object_pairs_hook=list makes objects lists too; the text tells them apart
                raise InputError(f"{path}: line {line_no} is not a JSON object")
            keys = [k for k, _ in pairs]
            duplicated = sorted({k for k in keys if k in needed and keys.count(k) > 1})
            if duplicated:
                raise InputError(f"{path}: line {line_no}: field {duplicated[0]!r} appears more than once in the record")
            obj = dict(pairs)
            if first and cfg.url_col not in obj:
                raise InputError(f"{path}: no url field {cfg.url_col!r} in the first record (line {line_no}; fields: {sorted(obj)[:20]}); use --url-col")
            first = False
            yield {
                R.URL: obj.get(cfg.url_col),
                R.CAPTION: _as_text(obj.get(cfg.caption_col)) if cfg.caption_col else None,
                R.EXTRA: {c: _as_text(obj.get(c)) for c in cfg.save_cols},
            }


def _iter_txt(path: str) -> Iterator[dict]:
    with _open_text(path) as fh:
        for line in fh:
            url = line.strip()
            if url:
                yield {R.URL: url, R.CAPTION: None, R.EXTRA: {}}


def _as_text(value: object) -> str | None:
    """Any input value as text that every codec can write (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bytes):  # CSV columns are read as bytes
        return replace_lone_surrogates(value.decode("utf-8", errors="replace"))
    if isinstance(value, (dict, list)):
        return replace_lone_surrogates(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return replace_lone_surrogates(str(value))


class _ReadInputFileFn(IsolatedDoFn):
    STAGE = Stage.READ

    def __init__(self, cfg: InputConfig, shard_size: int, skip_shards: frozenset[int], rows: Mapping[int, int] | None = None) -> None:
        self._cfg = cfg
        self._shard_size = shard_size
        self._skip = skip_shards
        self._rows = rows

    def setup(self) -> None:
        self._counters = StageCounters(Stage.READ)

    def _span(self, infile: InputFile):
        """(start, stop, shard of local row i or None to skip it) of the rows this run reads from ``infile``."""
        first, size = infile.first_row, self._shard_size
        if self._rows is not None:  # only the rows named, each into the shard named (a retry)
            mine = sorted(g for g in self._rows if first <= g < first + infile.num_rows)
            if not mine:
                return None
            return mine[0] - first, mine[-1] - first + 1, lambda i: self._rows.get(first + i)
        last_row = first + infile.num_rows - 1
        wanted = [s for s in range(first // size, last_row // size + 1) if s not in self._skip]
        if not infile.num_rows or not wanted:
            return None
        start = max(wanted[0] * size - first, 0)
        stop = min((wanted[-1] + 1) * size - first, infile.num_rows)
        return start, stop, lambda i: None if (first + i) // size in self._skip else (first + i) // size

    def process(self, infile: InputFile):
        # The file is read outside isolation (a file that stops parsing mid-run
        # is not one row's fault); each row is turned into its record inside it.
        span = self._span(infile)
        if span is None:
            return
        start, stop, shard_of = span
        for i, row in enumerate(iter_rows(infile.path, infile.format, self._cfg, start, stop), start=start):
            shard = shard_of(i)
            if shard is None:
                continue
            position = {R.SOURCE_FILE: infile.path, R.SOURCE_ROW: i, R.SHARD: shard}
            yield from self.isolate(position, self._record, infile, i, shard, row)

    def _record(self, infile: InputFile, i: int, shard: int, row: dict):
        url = row[R.URL]
        record = {
            R.URL: url.strip() if isinstance(url, str) else url,
            R.CAPTION: row[R.CAPTION],
            R.SOURCE_FILE: infile.path,
            R.SOURCE_ROW: i,
            R.SHARD: shard,
            R.EXTRA: row[R.EXTRA],
        }
        decision = check_url(url)
        if decision.keep:
            record[R.UID] = make_uid(record[R.URL], record[R.CAPTION])
            yield record
        else:
            # Invalid URLs still get a uid so every reject row is addressable,
            # and keep their text (made writable) so the row can be found.
            record[R.URL] = None if url is None else _as_text(url)
            record[R.UID] = make_uid(record[R.URL] or "", record[R.CAPTION])
            detail = f"{infile.path} row {i} field {self._cfg.url_col!r}: {decision.detail}"
            self._counters.rejected(decision.reason)
            yield beam.pvalue.TaggedOutput(REJECTED, R.make_reject(record, Stage.READ, decision.reason, detail))


def _first_occurrence(item):
    """Of rows sharing a uid, keep the earliest (file, row); reject the rest."""
    uid, rows = item
    rows = sorted(rows, key=lambda r: (r[R.SOURCE_FILE], r[R.SOURCE_ROW]))
    yield rows[0]
    first = rows[0]
    for dup in rows[1:]:
        yield beam.pvalue.TaggedOutput(
            REJECTED,
            R.make_reject(
                dup,
                Stage.READ,
                Reason.DUPLICATE_ROW,
                f"same url and caption as {first[R.SOURCE_FILE]} row {first[R.SOURCE_ROW]}",
                **{R.DUPLICATE_OF: uid},
            ),
        )


class ReadPairs(beam.PTransform):
    """Planned input files -> pair records, with ``invalid_url`` / ``duplicate_row`` rejects.

        >>> files = plan_inputs(cfg.input)
        >>> pairs, rejected = p | ReadPairs(files, cfg.input, shard_size=10_000)
    """

    def __init__(
        self, files: list[InputFile], cfg: InputConfig, shard_size: int, skip_shards: frozenset[int] = frozenset(), rows: Mapping[int, int] | None = None
    ) -> None:
        super().__init__()
        self._files = files
        self._cfg = cfg
        self._shard_size = shard_size
        self._skip = skip_shards
        self._rows = rows  # {global row: shard}: read only these (a retry); None: every row not in skip_shards

    def expand(self, pbegin) -> StageOutputs:
        rows = (
            pbegin
            | "ListFiles" >> beam.Create(self._files)
            | "ReadFile" >> beam.ParDo(_ReadInputFileFn(self._cfg, self._shard_size, self._skip, self._rows)).with_outputs(REJECTED, main="rows")
        )
        # Grouping by uid both drops repeated rows (they would collide as tar
        # keys) and spreads the rows of one big file across workers.
        unique = (
            rows.rows
            | "KeyByUid" >> beam.Map(lambda r: (r[R.UID], r))
            | "GroupByUid" >> beam.GroupByKey()
            | "FirstOccurrence" >> beam.ParDo(_first_occurrence).with_outputs(REJECTED, main="kept")
        )
        rejected = (rows[REJECTED], unique[REJECTED]) | "FlattenReadRejects" >> beam.Flatten()
        return StageOutputs(unique.kept, rejected)
