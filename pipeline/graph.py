"""The pipeline graph: the only place that orders the stages.

    read -> captions -> [blocklist urls] -> download (+decode/resize) -> [blocklist hashes] -> [clip score (+concept tags)] -> spool samples -> write shards
       \________\______________\___________________\___ rejects ______________________________________________/      /
                                                      \__ dedup -> removals _____________________________________/
                                                            \__ [balance] -> removals ___________________________/

Every stage returns ``StageOutputs(kept, rejected)``; rejects of all stages are
flattened and written next to the kept samples of their shard, so each input
row ends up in exactly one of the two. Dedup looks at all kept samples at once
and names the ones to remove; balancing counts entries over the samples dedup
keeps and names the ones to drop; the shard writer turns both into reject rows.
"""

from __future__ import annotations

from typing import Mapping

import apache_beam as beam
from paircurate.pipeline.blocklist import AFTER_DOWNLOAD, BEFORE_DOWNLOAD, RejectBlocklisted
from paircurate.pipeline.captions import CleanCaptions
from paircurate.pipeline.dedup import FindDuplicates
from paircurate.pipeline.download import DownloadImages
from paircurate.pipeline.read import InputFile, ReadPairs
from paircurate.pipeline.spool import SpoolSamples
from paircurate.pipeline.write import WriteShards
from paircurate.schemas.config import PipelineConfig
from paircurate.storage.layout import OutputLayout


def build_graph(
    p: beam.Pipeline,
    cfg: PipelineConfig,
    files: list[InputFile],
    skip_shards: frozenset[int] = frozenset(),
    progress_dir: str | None = None,
    written_shards: tuple[str, ...] = (),
    rows: Mapping[int, int] | None = None,
    spool_dir: str | None = "",
    balance_counts: dict[str, int] | None = None,
) -> beam.PCollection:
    """Add the whole curation graph to ``p``; returns the per-shard stats PCollection.

    ``skip_shards`` are not read at all; ``written_shards`` (Parquet paths of
    shards already in the output folder) are dedup's pinned keepers.
    ``rows`` ({global input row: shard}) reads only those rows, into those
    shards: what ``--retry-failed`` re-attempts.
    ``spool_dir`` is where finished samples wait (default OUT/_spool); None:
    they travel through the shuffle.
    ``balance_counts`` are the entry counts a resumed balanced run recorded.
    """
    if spool_dir == "":
        spool_dir = OutputLayout(cfg.output.path).spool_dir
    pairs = p | "Read" >> ReadPairs(files, cfg.input, cfg.output.shard_size, skip_shards, rows)
    captions = pairs.kept | "Captions" >> CleanCaptions(cfg.caption)
    to_fetch = captions.kept
    rejected = [pairs.rejected, captions.rejected]
    lists = cfg.blocklist.paths
    if lists:  # url/prefix/domain entries: never requested
        screened = to_fetch | "BlocklistUrls" >> RejectBlocklisted(lists, BEFORE_DOWNLOAD)
        to_fetch = screened.kept
        rejected.append(screened.rejected)
    with_phash = cfg.dedup.perceptual or bool(lists)
    images = to_fetch | "Download" >> DownloadImages(cfg.download, cfg.image, progress_dir, with_phash=with_phash)
    kept = images.kept
    rejected.append(images.rejected)
    if lists:  # sha256/md5/phash entries: matched once the bytes are here
        screened = kept | "BlocklistImages" >> RejectBlocklisted(lists, AFTER_DOWNLOAD)
        kept = screened.kept
        rejected.append(screened.rejected)

    if cfg.clip.enabled:
        from paircurate.pipeline.score import (
            ScoreClip,  # torch is imported only when scoring
        )

        scored = kept | "Clip" >> ScoreClip(cfg.clip, cfg.output.path, cfg.concepts)
        kept = scored.kept
        rejected.append(scored.rejected)

    # Two branches of the same fused stage: dedup takes a few key fields, the
    # spool parks whole samples on disk; only keys and pointers get shuffled.
    removals = kept | "Dedup" >> FindDuplicates(cfg.dedup, cfg.image, semantic=cfg.clip.enabled, written_shards=written_shards)
    if cfg.balance.enabled:
        from paircurate.pipeline.balance import BalanceSamples

        dropped = (kept, removals) | "Balance" >> BalanceSamples(cfg.balance, cfg.concepts, cfg.output.path, balance_counts)
        removals = (removals, dropped) | "AllRemovals" >> beam.Flatten()
    spooled = kept | "Spool" >> SpoolSamples(spool_dir)
    rejected.append(spooled.rejected)
    all_rejected = rejected | "AllRejects" >> beam.Flatten()
    return (spooled.kept, all_rejected, removals) | "Write" >> WriteShards(cfg.output.path, cfg.input.save_cols, spool_dir)
