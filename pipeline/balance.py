"""Balance stage: MetaCLIP's balancing over the whole run, on small key records.

    removals = (kept, dedup_removals) | "Balance" >> BalanceSamples(cfg.balance, cfg.concepts, out_dir)

    kept samples -> (uid, shard, entries)       entries: what the caption names (Aho-Corasick),
                                                or the image's top-1 concept tag (--balance-by concepts)
                 -> minus dedup's removals      (CoGroupByKey on uid: duplicates are not counted)
                 -> CombinePerKey(sum)          samples per entry over the whole run
                 -> recorded in OUT/_balance_counts.json, then a side input (like --clip-top-percent's cutoff)
    every key + counts -> keep with p = T / max(count, T) per entry (deterministic draw) -> removals

Like dedup, the stage sees only uids, shards and entry names, never image
bytes, and outputs one removal per rejected uid that the shard writer turns
into a reject row (``over_represented`` / ``no_entry_match``). Memory: the
count table (one number per matched entry) on each worker, plus what the
runner holds of the key records.

The counts are written before any sample is decided, so a resumed run reads
them back instead of counting only the shards it still has to write, and
decides every remaining sample as the first run would have.
"""

from __future__ import annotations

import apache_beam as beam

from paircurate.concepts.balancing import CountSummary, decide
from paircurate.pipeline.stage import IsolatedDoFn, RowIsolation
from paircurate.schemas import records as R
from paircurate.schemas.config import BalanceConfig, ConceptsConfig, ConfigError
from paircurate.schemas.outcomes import Stage
from paircurate.storage.layout import OutputLayout

TOP_ENTRIES = 20  # entries listed in stats.json before and after


def counts_fingerprint(cfg: BalanceConfig, concepts: ConceptsConfig) -> dict:
    """What the counts depend on: a resumed run with other settings must not reuse them."""
    return {"by": cfg.by, "entries": cfg.entries, "whole_words": cfg.whole_words,
            "concepts": concepts.labels if cfg.by == "concepts" else ""}


def load_recorded_counts(out_dir: str, cfg: BalanceConfig, concepts: ConceptsConfig) -> dict[str, int]:
    """The counts an earlier invocation recorded in ``out_dir``; ConfigError if missing or made otherwise."""
    out = OutputLayout(out_dir)
    path = out.balance_counts
    recorded = out.read_json(path)
    if recorded is None:
        raise ConfigError(
            f"{out_dir} holds finished shards but no balancing counts ({path}): the earlier run did not balance "
            "or stopped before counting; balance in a new output folder, or use --overwrite"
        )
    if recorded.get("fingerprint") != counts_fingerprint(cfg, concepts):
        raise ConfigError(
            f"{path} was counted with other balancing settings ({recorded.get('fingerprint')}); "
            "resume with the same --balance-* and --concepts options, or use --overwrite"
        )
    return {str(k): int(v) for k, v in recorded["counts"].items()}


def balance_stats(out_dir: str) -> dict:
    """``{"balance": ...}`` for stats.json when this invocation balanced, else empty."""
    out = OutputLayout(out_dir)
    found = out.read_json(out.balance_stats)
    return {} if found is None else {"balance": found}


def _removal_of_failed_key(reject: dict) -> dict:
    """A sample balancing could not key leaves through the removals: the shard writer makes it a reject row."""
    return {R.UID: reject[R.UID], R.SHARD: reject[R.SHARD], R.STAGE: Stage.BALANCE.value, R.REASON: reject[R.REASON], R.DETAIL: reject[R.DETAIL]}


class _EntryKeysFn(IsolatedDoFn):
    """sample -> (uid, (shard, entries)); the matcher (or label set) is built once per worker."""

    STAGE = Stage.BALANCE

    def make_isolation(self) -> RowIsolation:
        return RowIsolation(Stage.BALANCE, to_output=lambda row: beam.pvalue.TaggedOutput("removed", _removal_of_failed_key(row)))

    def __init__(self, cfg: BalanceConfig) -> None:
        self._cfg = cfg

    def setup(self) -> None:
        self._matcher = None
        if self._cfg.by == "caption":
            from paircurate.concepts.labels import load_label_set
            from paircurate.concepts.matcher import EntryMatcher

            labels = load_label_set(self._cfg.entries, option="--balance-entries")
            self._matcher = EntryMatcher(labels.labels, whole_words=self._cfg.whole_words)

    def process_record(self, record: dict):
        if self._matcher is not None:
            entries = self._matcher.match(record.get(R.CAPTION))
        else:
            entries = list((record.get(R.CONCEPTS) or [])[:1])
        yield record[R.UID], (record[R.SHARD], tuple(entries))


def _not_removed(item):
    uid, grouped = item
    if any(True for _ in grouped["removed"]):  # a runner may hand over a lazy iterable, not a list
        return
    for shard, entries in grouped["key"]:
        yield uid, shard, entries


class _DecideFn(beam.DoFn):
    """(uid, shard, entries) + run counts -> the key if kept, else a removal (tagged ``removed``)."""

    def __init__(self, cfg: BalanceConfig) -> None:
        self._cfg = cfg

    def process(self, key, counts):
        uid, shard, entries = key
        decision = decide(uid, entries, counts, self._cfg.cap, self._cfg.drop_unmatched)
        if decision.keep:
            yield key
        else:
            yield beam.pvalue.TaggedOutput("removed", {
                R.UID: uid, R.SHARD: shard, R.STAGE: Stage.BALANCE.value,
                R.REASON: decision.reason.value, R.DETAIL: decision.detail,
            })


class _SummaryFn(beam.CombineFn):
    """(entry, count) pairs -> CountSummary.as_dict(); the accumulator holds only the top entries."""

    def __init__(self, cap: int) -> None:
        self._cap = cap

    def create_accumulator(self):
        return CountSummary(cap=self._cap, top=TOP_ENTRIES)

    def add_input(self, acc, item):
        acc.add(*item)
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        for other in accs[1:]:
            accs[0].merge(other)
        return accs[0]

    def extract_output(self, acc):
        return acc.as_dict()


def _entry_ones(key):
    return [(entry, 1) for entry in key[2]]


class _RecordCounts(beam.DoFn):
    """Writes the whole-run counts before any sample is decided, and passes them on."""

    def __init__(self, out_dir: str, fingerprint: dict) -> None:
        self._out = out_dir
        self._fingerprint = fingerprint

    def process(self, counts: dict):
        out = OutputLayout(self._out)
        out.write_json(out.balance_counts, {"fingerprint": self._fingerprint, "counts": dict(sorted(counts.items()))})
        yield counts


def _record_stats(_, out_dir, header, before, after, samples):
    payload = dict(header)
    payload.update(
        samples_matched=samples.get(True, 0),
        samples_unmatched=samples.get(False, 0),
        before=before,
        after=after,
    )
    out = OutputLayout(out_dir)
    out.write_json(out.balance_stats, payload)


class BalanceSamples(beam.PTransform):
    """(kept samples, dedup removals) -> balance removals ``{uid, shard, stage, reason, detail}``.

    ``recorded_counts``: the counts of an earlier invocation of the same run
    (resuming); when None the stage counts this invocation's samples.
    """

    def __init__(self, cfg: BalanceConfig, concepts: ConceptsConfig, out_dir: str, recorded_counts: dict[str, int] | None = None) -> None:
        super().__init__()
        self._cfg = cfg
        self._concepts = concepts
        self._out = out_dir
        self._recorded = recorded_counts

    def expand(self, inputs):
        samples, dedup_removals = inputs
        p = samples.pipeline
        keyed = samples | "EntryKeys" >> beam.ParDo(_EntryKeysFn(self._cfg)).with_outputs("removed", main="keys")
        keys = keyed.keys
        removed = dedup_removals | "RemovedUids" >> beam.Map(lambda r: (r[R.UID], None))
        survivors = (
            {"key": keys, "removed": removed}
            | "DropDuplicates" >> beam.CoGroupByKey()
            | "Survivors" >> beam.FlatMap(_not_removed)
        )
        if self._recorded is None:
            per_entry = survivors | "EntryOnes" >> beam.FlatMap(_entry_ones) | "CountPerEntry" >> beam.CombinePerKey(sum)
            counts = (
                per_entry
                | "CountTable" >> beam.combiners.ToDict()
                | "RecordCounts" >> beam.ParDo(_RecordCounts(self._out, counts_fingerprint(self._cfg, self._concepts)))
            )
        else:
            counts = p | "RecordedCounts" >> beam.Create([self._recorded])
            per_entry = p | "RecordedPerEntry" >> beam.Create(sorted(self._recorded.items()))
        decided = survivors | "Decide" >> beam.ParDo(_DecideFn(self._cfg), counts=beam.pvalue.AsSingleton(counts)).with_outputs("removed", main="kept")

        before = per_entry | "SummaryBefore" >> beam.CombineGlobally(_SummaryFn(self._cfg.cap))
        after = (
            decided.kept
            | "KeptEntryOnes" >> beam.FlatMap(_entry_ones)
            | "CountKeptPerEntry" >> beam.CombinePerKey(sum)
            | "SummaryAfter" >> beam.CombineGlobally(_SummaryFn(self._cfg.cap))
        )
        matched = survivors | "Matched" >> beam.Map(lambda k: bool(k[2])) | "CountMatched" >> beam.combiners.Count.PerElement()
        header = {
            "balance_cap": self._cfg.cap,
            "balance_by": self._cfg.by,
            "balance_entries": self._cfg.entries if self._cfg.by == "caption" else self._concepts.labels,
            "balance_whole_words": self._cfg.whole_words,
            "balance_counts_from": "this invocation" if self._recorded is None else "_balance_counts.json (resumed run; 'after' covers the shards written now)",
        }
        _ = (
            p
            | "BalanceStatsTrigger" >> beam.Create([None])
            | "RecordBalanceStats" >> beam.Map(
                _record_stats, self._out, header,
                before=beam.pvalue.AsSingleton(before), after=beam.pvalue.AsSingleton(after), samples=beam.pvalue.AsDict(matched),
            )
        )
        return (keyed.removed, decided.removed) | "BalanceRemovals" >> beam.Flatten()
