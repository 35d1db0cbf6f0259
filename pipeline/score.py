"""CLIP stage: score every downloaded pair and filter on the score, in the same pipeline.

    scored = kept | "Clip" >> ScoreClip(cfg.clip, out_dir)

The model is loaded once per worker in ``setup()``; ``BatchElements`` forms
the batches. A fixed threshold filters as records stream by. A top-percent
filter needs the run's score distribution: Beam computes approximate
quantiles of all scores and the filter reads the cutoff as a side input, so
no score is ever collected in the driver.
"""

from __future__ import annotations

import io
import json
import logging
import os

import apache_beam as beam
import numpy as np
from paircurate.filters.similarity import (
    check_clip_score,
    combined_threshold,
    resolve_threshold,
    top_percent_cutoff,
)
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.config import ClipConfig
from paircurate.schemas.outcomes import Stage
from PIL import Image

log = logging.getLogger(__name__)

CUTOFF_FILE = "_clip_cutoff.json"  # the top-percent cutoff, written when the run computes it
_QUANTILES = 1001  # 0.1 % resolution for --clip-top-percent


class _ClipScoreFn(IsolatedDoFn):
    """Adds ``clip_score`` and both embeddings to every record of a batch."""

    STAGE = Stage.CLIP

    def __init__(self, cfg: ClipConfig) -> None:
        self._cfg = cfg

    def setup(self) -> None:
        from paircurate.embeddings.clip import load_clip

        self._clip = load_clip(self._cfg.model, self._cfg.pretrained, device=self._cfg.device, precision=self._cfg.precision, batch_size=self._cfg.batch_size)

    def process_record(self, batch: list[dict]):
        images, usable = [], []
        for record in batch:
            # One record's bytes that do not open (written by the image stage: a bug, not bad input) cost that record only.
            for output in self.isolate(record, self._open_image, record):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield output
                else:
                    images.append(output)
                    usable.append(record)
        if usable:
            # A failure of the model on the batch rejects the batch's usable records (the base class's isolation).
            yield from self.isolate(usable, self._score, usable, images)

    @staticmethod
    def _open_image(record: dict):
        with Image.open(io.BytesIO(record[R.IMAGE])) as img:
            yield img.convert("RGB")

    def _score(self, usable: list[dict], images: list):
        image_emb = self._clip.encode_images(images)
        text_emb = self._clip.encode_texts([r.get(R.CAPTION) or "" for r in usable])
        scores = np.einsum("ij,ij->i", image_emb, text_emb)
        for record, score, img_vec, txt_vec in zip(usable, scores, image_emb, text_emb, strict=True):
            out = dict(record)
            out[R.CLIP_SCORE] = float(score)
            out[R.IMAGE_EMBEDDING] = img_vec.astype(np.float16)
            out[R.TEXT_EMBEDDING] = txt_vec.astype(np.float16)
            yield out


class _ScoreFilterFn(IsolatedDoFn):
    STAGE = Stage.CLIP

    def __init__(self, threshold: float | None) -> None:
        self._threshold = threshold

    def setup(self) -> None:
        self._counters = StageCounters(Stage.CLIP)

    def process_record(self, record: dict, cutoff: float | None = None):
        decision = check_clip_score(record[R.CLIP_SCORE], combined_threshold(self._threshold, cutoff))
        if decision.keep:
            self._counters.kept()
            yield record
        else:
            self._counters.rejected(decision.reason)
            yield beam.pvalue.TaggedOutput(REJECTED, R.make_reject(record, Stage.CLIP, decision.reason, decision.detail))


class _RecordCutoff(beam.DoFn):
    """Turns the run's score quantiles into the cutoff, and leaves it in the output folder for the run's stats."""

    def __init__(self, out_dir: str, percent: float) -> None:
        self._out = out_dir
        self._percent = percent

    def process(self, quantiles):
        cutoff = top_percent_cutoff(quantiles, self._percent)
        path = os.path.join(self._out, CUTOFF_FILE)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"clip_top_percent_cutoff": cutoff}, fh)
        os.replace(tmp, path)
        yield cutoff


class ScoreClip(beam.PTransform):
    """Pairs with image bytes -> pairs with ``clip_score`` and embeddings; ``low_clip_score`` rejects."""

    def __init__(self, cfg: ClipConfig, out_dir: str) -> None:
        super().__init__()
        self._cfg = cfg
        self._out = out_dir

    def expand(self, pairs) -> StageOutputs:
        threshold, _source = resolve_threshold(self._cfg)
        size = self._cfg.batch_size
        scored = (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Score" >> beam.ParDo(_ClipScoreFn(self._cfg)).with_outputs(REJECTED, main="scored")
        )
        if self._cfg.top_percent is None:
            filtered = scored.scored | "Threshold" >> beam.ParDo(_ScoreFilterFn(threshold)).with_outputs(REJECTED, main="kept")
        else:
            cutoff = (
                scored.scored
                | "Scores" >> beam.Map(lambda r: r[R.CLIP_SCORE])
                | "Quantiles" >> beam.transforms.stats.ApproximateQuantiles.Globally(_QUANTILES)
                | "Cutoff" >> beam.ParDo(_RecordCutoff(self._out, self._cfg.top_percent))
            )
            filtered = scored.scored | "TopPercent" >> beam.ParDo(
                _ScoreFilterFn(threshold), cutoff=beam.pvalue.AsSingleton(cutoff, default_value=None)
            ).with_outputs(REJECTED, main="kept")
        rejected = (scored[REJECTED], filtered[REJECTED]) | "FlattenClipRejects" >> beam.Flatten()
        return StageOutputs(filtered.kept, rejected)
