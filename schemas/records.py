"""Arrow schemas: the contract between pipeline stages and with readers of the output.

Records flowing through the pipeline are plain dicts keyed by the field names
below. Each stage adds fields; writers cast to the declared schema and fail
loudly on a mismatch, so a renamed or retyped field cannot slip into a release.

    >>> import pyarrow as pa
    >>> table = pa.Table.from_pylist([...], schema=sample_schema())
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pyarrow as pa
from paircurate.schemas.outcomes import Reason, Stage

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"paircurate.schema_version"

# Field names, shared by every stage.
UID = "uid"
URL = "url"
CAPTION = "caption"
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
SHARD = "shard"
EXTRA = "extra"  # dict of --save-cols values while in flight; columns on output

CAPTION_RAW = "caption_raw"
CAPTION_TOKENS = "caption_tokens"  # BPE ids with --tokenize; also the tar's .tokens member
CAPTION_TOKENS_TRUNCATED = "caption_tokens_truncated"

IMAGE = "image"  # encoded bytes (in flight only; goes into the tar, not the Parquet)
IMAGE_FORMAT = "image_format"
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
SHA256 = "sha256"
MD5 = "md5"  # of the bytes as downloaded, like sha256: what blocklists of MD5s match
BYTE_SIZE = "byte_size"
CONTENT_TYPE = "content_type"
HTTP_STATUS = "http_status"
DOWNLOAD_SECONDS = "download_seconds"

CLIP_SCORE = "clip_score"
AESTHETIC_SCORE = "aesthetic_score"  # --aesthetic-head output (LAION scale, roughly 1-10)
PUNSAFE = "punsafe"  # --safety-head output: probability the image is NSFW
IMAGE_EMBEDDING = "image_embedding"  # in flight only; written to {shard}.img.npy
TEXT_EMBEDDING = "text_embedding"  # in flight only; written to {shard}.txt.npy
PHASH = "phash"
CONCEPTS = "concepts"  # --concepts: the image's top-k labels, best first
CONCEPT_SCORES = "concept_scores"  # their cosines with the image embedding

STAGE = "stage"
REASON = "reason"
DETAIL = "detail"
DUPLICATE_OF = "duplicate_of"
SIMILARITY = "similarity"
ATTEMPTS = "attempts"  # runs that tried this row; null means 1 (it was never retried)

# Fields every record carries from ingest on.
PAIR_FIELDS: list[pa.Field] = [
    pa.field(UID, pa.string(), nullable=False),
    pa.field(URL, pa.string()),
    pa.field(CAPTION, pa.string()),
    pa.field(SOURCE_FILE, pa.string(), nullable=False),
    pa.field(SOURCE_ROW, pa.int64(), nullable=False),
    pa.field(SHARD, pa.int64(), nullable=False),
]

_IMAGE_FIELDS: list[pa.Field] = [
    pa.field(IMAGE_FORMAT, pa.string()),
    pa.field(WIDTH, pa.int32()),
    pa.field(HEIGHT, pa.int32()),
    pa.field(ORIGINAL_WIDTH, pa.int32()),
    pa.field(ORIGINAL_HEIGHT, pa.int32()),
    pa.field(SHA256, pa.string()),
    pa.field(MD5, pa.string()),
    pa.field(BYTE_SIZE, pa.int64()),
    pa.field(CONTENT_TYPE, pa.string()),
    pa.field(HTTP_STATUS, pa.int32()),
    pa.field(DOWNLOAD_SECONDS, pa.float32()),
]

_SCORE_FIELDS: list[pa.Field] = [
    pa.field(CLIP_SCORE, pa.float32()),  # null when CLIP scoring is off
    pa.field(PHASH, pa.string()),  # null when perceptual dedup is off
    pa.field(AESTHETIC_SCORE, pa.float32()),  # null without --aesthetic-head
    pa.field(PUNSAFE, pa.float32()),  # null without --safety-head
    pa.field(CONCEPTS, pa.list_(pa.string())),  # null without --concepts
    pa.field(CONCEPT_SCORES, pa.list_(pa.float32())),
]


def pair_schema() -> pa.Schema:
    """An input row after ingest: identity, provenance, URL and caption."""
    return pa.schema(PAIR_FIELDS)


def sample_schema(save_cols: Sequence[str] = ()) -> pa.Schema:
    """One kept sample: the per-shard Parquet written next to each tar.

    ``save_cols`` are the user's extra input columns, carried as strings so the
    schema stays declared whatever the input file's types were.
    """
    fields = (
        PAIR_FIELDS
        + [
            pa.field(CAPTION_RAW, pa.string()),
            pa.field(CAPTION_TOKENS, pa.list_(pa.int32())),
            pa.field(CAPTION_TOKENS_TRUNCATED, pa.bool_()),
        ]
        + _IMAGE_FIELDS
        + _SCORE_FIELDS
        + [pa.field(c, pa.string()) for c in save_cols]
    )
    return _with_version(pa.schema(fields))


def reject_schema(save_cols: Sequence[str] = ()) -> pa.Schema:
    """One rejected input row, whatever the stage that rejected it (plus the --save-cols)."""
    fields = PAIR_FIELDS + [
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string()),
        pa.field(CLIP_SCORE, pa.float32()),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(SIMILARITY, pa.float32()),
        pa.field(ATTEMPTS, pa.int32()),
        pa.field(AESTHETIC_SCORE, pa.float32()),
        pa.field(PUNSAFE, pa.float32()),
    ] + [pa.field(c, pa.string()) for c in save_cols]
    return _with_version(pa.schema(fields))


def reserved_column_names() -> frozenset[str]:
    """Names a ``--save-cols`` column may not take: every field this schema declares, and WebDataset's key."""
    declared = {f.name for f in sample_schema()} | {f.name for f in reject_schema()}
    in_flight = {EXTRA, IMAGE, IMAGE_EMBEDDING, TEXT_EMBEDDING}
    return frozenset(declared | in_flight | {"key", "__key__", "__url__"})


def _with_version(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


def to_table(records: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Build a table holding exactly ``schema``'s columns from record dicts.

    Fields a record lacks become null; a value of the wrong type raises with
    the field name, rather than being coerced silently.
    """
    records = list(records)
    columns = {}
    for field in schema:
        values = [_column_value(r, field.name) for r in records]
        try:
            columns[field.name] = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise SchemaMismatch(f"field {field.name!r} ({field.type}): {exc}") from exc
        if not field.nullable and columns[field.name].null_count:
            raise SchemaMismatch(f"field {field.name!r} is required but has nulls")
    return pa.Table.from_pydict(columns, schema=schema)


def _column_value(record: dict, name: str):
    if name in record:
        return record[name]
    extra = record.get(EXTRA)
    if extra and name in extra:
        value = extra[name]
        return None if value is None else str(value)
    return None


class SchemaMismatch(ValueError):
    """A record does not fit the declared schema."""


# Fields copied from an in-flight record into its reject row.
_REJECT_KEEP_FIELDS = (UID, URL, CAPTION, SOURCE_FILE, SOURCE_ROW, SHARD, CLIP_SCORE, AESTHETIC_SCORE, PUNSAFE, EXTRA)


def make_reject(record: dict, stage: Stage, reason: Reason, detail: str = "", **fields) -> dict:
    """A reject row for ``record``: identity and provenance plus why it left."""
    row = {k: record.get(k) for k in _REJECT_KEEP_FIELDS}
    row[STAGE] = stage.value
    row[REASON] = reason.value
    row[DETAIL] = detail[:2000]
    row.update(fields)
    return row
