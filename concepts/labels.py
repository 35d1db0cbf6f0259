"""Label sets for concept tags and balancing entries: ``imagenet`` or a file.

    >>> labels = load_label_set("imagenet")          # open_clip's 1,000 ImageNet class names
    >>> labels = load_label_set("entries.txt")       # one label per line
    >>> labels = load_label_set("labels.csv")        # a `label` column, optional `prompt`
    >>> labels.labels[:2], labels.prompts_for(0)[:2]

Files:
  - ``.txt`` (or any other name): one label per line; blank lines and lines
    starting with ``#`` are skipped.
  - ``.json``: a JSON list of strings (MetaCLIP's ``metadata.json`` layout).
  - ``.csv`` / ``.tsv`` / ``.parquet``: a ``label`` column and an optional
    ``prompt`` column. Rows that share a label give that label several
    prompts, whose text embeddings are averaged; a label without a prompt gets
    open_clip's ImageNet prompt templates ("a photo of a {}." ...).

A label that appears twice is kept once (first position). Every problem with
a file is a :class:`UserError` naming the file and, where it helps, the row.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from paircurate.schemas.config import UserError

IMAGENET = "imagenet"
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
LABEL_COLUMN = "label"
PROMPT_COLUMN = "prompt"


@dataclass(frozen=True)
class LabelSet:
    """Labels in file order, with the explicit prompts given for each (empty: use the templates)."""

    source: str
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.labels)

    def prompts_for(self, index: int, templates: Sequence[Callable[[str], str]] | None = None) -> list[str]:
        """The texts whose embeddings are averaged into label ``index``'s embedding."""
        if self.prompts[index]:
            return list(self.prompts[index])
        label = self.labels[index]
        return [t(label) for t in (templates if templates is not None else imagenet_templates())]


def imagenet_templates() -> tuple[Callable[[str], str], ...]:
    """open_clip's 80 ImageNet prompt templates (CLIP's prompt ensemble)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES  # open_clip imports torch: only when labels are embedded

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def imagenet_classnames() -> tuple[str, ...]:
    from open_clip import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def load_label_set(spec: str, *, option: str = "--concepts") -> LabelSet:
    """``imagenet`` or a label file; ``option`` names the flag in error messages."""
    if not spec or not spec.strip():
        raise UserError(f"{option}: give 'imagenet' or a label file")
    if spec.strip().lower() == IMAGENET:
        return _from_rows(IMAGENET, [(name, None) for name in imagenet_classnames()], option)
    if not os.path.isfile(spec):
        raise UserError(f"{option} {spec}: no such file; give 'imagenet' or a label file (.txt, .json, .csv, .tsv, .parquet)")
    lower = spec.lower()
    try:
        if lower.endswith(_TABLE_SUFFIXES):
            rows = _table_rows(spec, option)
        elif lower.endswith(".json"):
            rows = _json_rows(spec, option)
        else:
            rows = _text_rows(spec)
    except UnicodeDecodeError as exc:
        raise UserError(f"{option} {spec}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from exc
    except OSError as exc:
        raise UserError(f"{option} {spec}: cannot read the file ({exc.strerror or exc})") from exc
    return _from_rows(spec, rows, option)


def _from_rows(source: str, rows: list[tuple[str, str | None]], option: str) -> LabelSet:
    order: dict[str, list[str]] = {}
    for label, prompt in rows:
        prompts = order.setdefault(label, [])
        if prompt and prompt not in prompts:
            prompts.append(prompt)
    if not order:
        raise UserError(f"{option} {source}: the file holds no labels")
    return LabelSet(source=source, labels=tuple(order), prompts=tuple(tuple(p) for p in order.values()))


def _clean(value: str) -> str:
    return " ".join(value.split())


def _text_rows(path: str) -> list[tuple[str, str | None]]:
    with open(path, encoding="utf-8-sig") as fh:
        lines = (_clean(line) for line in fh)
        return [(line, None) for line in lines if line and not line.startswith("#")]


def _json_rows(path: str, option: str) -> list[tuple[str, str | None]]:
    with open(path, encoding="utf-8-sig") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise UserError(f"{option} {path}: not valid JSON ({exc.msg} at line {exc.lineno}); give a JSON list of strings") from exc
    if not isinstance(data, list):
        raise UserError(f"{option} {path}: a JSON label file must hold a list of strings, got {type(data).__name__}")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise UserError(f"{option} {path}: item {i} is {type(item).__name__}, not a string; give a JSON list of strings")
        if _clean(item):
            rows.append((_clean(item), None))
    return rows


def _table_rows(path: str, option: str) -> list[tuple[str, str | None]]:
    if path.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{option} {path}: not a readable Parquet file ({exc})") from exc
        names = table.column_names
        if LABEL_COLUMN not in names:
            raise UserError(f"{option} {path}: needs a '{LABEL_COLUMN}' column (has {names})")
        labels = table.column(LABEL_COLUMN).to_pylist()
        prompts = table.column(PROMPT_COLUMN).to_pylist() if PROMPT_COLUMN in names else [None] * len(labels)
    else:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
        with open(path, encoding="utf-8-sig", newline="") as fh:
            try:
                reader = csv.DictReader(fh, delimiter=delimiter)
                names = reader.fieldnames or []
                if LABEL_COLUMN not in names:
                    raise UserError(f"{option} {path}: needs a header row with a '{LABEL_COLUMN}' column (has {names})")
                records = list(reader)
            except csv.Error as exc:
                raise UserError(f"{option} {path}: not valid CSV ({exc})") from exc
        labels = [r.get(LABEL_COLUMN) for r in records]
        prompts = [r.get(PROMPT_COLUMN) for r in records]
    rows = []
    for i, (label, prompt) in enumerate(zip(labels, prompts)):
        if not isinstance(label, str) or not _clean(label):
            raise UserError(f"{option} {path}: row {i + 1} has no label (got {label!r}); every row needs a non-empty '{LABEL_COLUMN}'")
        if prompt is not None and not isinstance(prompt, str):
            raise UserError(f"{option} {path}: row {i + 1} has a prompt that is not text ({prompt!r})")
        rows.append((_clean(label), _clean(prompt) if prompt else None))
    return rows
