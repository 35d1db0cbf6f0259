"""CLIP stage: score every downloaded pair and filter on the score, in the same pipeline.

With ``--concepts`` the same image embeddings also give every sample its
top-k zero-shot concept tags (``concepts``, ``concept_scores``).

    scored = kept | "Clip" >> ScoreClip(cfg.clip, out_dir)

Before the pipeline starts, :func:`prepare_scoring` resolves the device, the
weights (fetched into the Hugging Face cache on first use) and the heads on
the driver, so a wrong name or an unreachable hub ends the command at once.
The model and heads are loaded once per worker in ``setup()`` from that cache;
``BatchElements`` forms the batches. The aesthetic and safety heads run on the
image embeddings the batch has already computed. A fixed threshold filters as records stream by. A top-percent
filter needs the run's score distribution: Beam computes approximate
quantiles of all scores and the filter reads the cutoff as a side input, so
no score is ever collected in the driver.
"""

from __future__ import annotations

import io
import logging

import apache_beam as beam
import numpy as np
from paircurate.filters.heads import check_aesthetic, check_punsafe
from paircurate.filters.similarity import (
    check_clip_score,
    combined_threshold,
    resolve_threshold,
    top_percent_cutoff,
)
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.config import ClipConfig, ConceptsConfig, UserError
from paircurate.schemas.outcomes import Stage
from paircurate.storage.layout import OutputLayout
from PIL import Image

log = logging.getLogger(__name__)

_QUANTILES = 1001  # 0.1 % resolution for --clip-top-percent


def prepare_scoring(cfg: ClipConfig) -> dict:
    """Driver side, before the pipeline: device, weights (fetched on first use) and heads, checked together.

    Returns facts for ``stats.json``. Any problem is a :class:`UserError` of
    one line that names the model and weights (or the head) and how to fix it.
    """
    from paircurate.embeddings.clip import ModelLoadError, check_device, resolve_weights
    from paircurate.embeddings.heads import AESTHETIC, SAFETY, load_head_for_run

    try:
        device = check_device(cfg.device)
        source = resolve_weights(cfg.model, cfg.pretrained, offline=cfg.offline)
        facts = {"clip_device": device, "clip_weights": source.describe(), "clip_embed_dim": source.embed_dim}
        for kind, spec in ((AESTHETIC, cfg.aesthetic_head), (SAFETY, cfg.safety_head)):
            if spec:
                head = load_head_for_run(kind, spec, cfg.model, cfg.pretrained, source.embed_dim, offline=cfg.offline)
                facts[f"{kind}_head"] = {"source": head.source, "layout": head.layout, "sha256": head.sha256}
    except ModelLoadError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(first) from None
    return facts


class _ClipScoreFn(IsolatedDoFn):
    """Adds ``clip_score``, both embeddings, the heads' scores and (with --concepts) the top-k concept tags to every record of a batch."""

    STAGE = Stage.CLIP

    def __init__(self, cfg: ClipConfig, concepts: ConceptsConfig | None = None) -> None:
        self._cfg = cfg
        self._concepts = concepts or ConceptsConfig()

    def setup(self) -> None:
        from paircurate.embeddings.clip import load_clip
        from paircurate.embeddings.heads import AESTHETIC, SAFETY, load_head_for_run

        cfg = self._cfg
        # The driver has already placed the weights in this machine's cache; a
        # cluster worker without them fetches once (unless offline).
        self._clip = load_clip(cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision,
                               batch_size=cfg.batch_size, allow_download=not cfg.offline)
        self._heads = {
            field: load_head_for_run(kind, spec, cfg.model, cfg.pretrained, self._clip.embed_dim,
                                     offline=cfg.offline).to(self._clip.device)
            for field, kind, spec in ((R.AESTHETIC_SCORE, AESTHETIC, cfg.aesthetic_head), (R.PUNSAFE, SAFETY, cfg.safety_head))
            if spec
        }
        self._first_batch_logged = False
        self._labels = self._classifier = None
        if self._concepts.labels:
            from paircurate.concepts.labels import load_label_set
            from paircurate.embeddings.zeroshot import label_embeddings

            # Once per worker: every prompt of every label through the text tower.
            label_set = load_label_set(self._concepts.labels)
            self._labels = label_set.labels
            self._classifier = label_embeddings(self._clip, label_set)

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
        head_scores = {field: head(image_emb) for field, head in self._heads.items()}
        tags = self._tags(image_emb)
        for i, (record, score, img_vec, txt_vec) in enumerate(zip(usable, scores, image_emb, text_emb, strict=True)):
            out = dict(record)
            out[R.CLIP_SCORE] = float(score)
            for field, values in head_scores.items():
                out[field] = float(values[i])
            out[R.IMAGE_EMBEDDING] = img_vec.astype(np.float16)
            out[R.TEXT_EMBEDDING] = txt_vec.astype(np.float16)
            if tags is not None:
                out[R.CONCEPTS], out[R.CONCEPT_SCORES] = tags[i]
            yield out
        if not self._first_batch_logged:
            # Benchmarks time "first scored batch" from this line (-v).
            log.info("CLIP: first batch scored (%d images)", len(usable))
            self._first_batch_logged = True

    def _tags(self, image_emb: np.ndarray):
        if self._classifier is None:
            return None
        from paircurate.embeddings.zeroshot import top_k_concepts

        return top_k_concepts(image_emb, self._classifier, self._labels, self._concepts.top_k)


class _ScoreFilterFn(IsolatedDoFn):
    """Safety first (an unsafe image leaves as ``unsafe`` whatever its other scores), then CLIP score, then aesthetics."""

    STAGE = Stage.CLIP

    def __init__(self, threshold: float | None, cfg: ClipConfig) -> None:
        self._threshold = threshold
        self._max_punsafe = cfg.max_punsafe
        self._min_aesthetic = cfg.min_aesthetic

    def setup(self) -> None:
        self._counters = StageCounters(Stage.CLIP)

    def process_record(self, record: dict, cutoff: float | None = None):
        decision = check_punsafe(record.get(R.PUNSAFE), self._max_punsafe)
        if decision.keep:
            decision = check_clip_score(record[R.CLIP_SCORE], combined_threshold(self._threshold, cutoff))
        if decision.keep:
            decision = check_aesthetic(record.get(R.AESTHETIC_SCORE), self._min_aesthetic)
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
        out = OutputLayout(self._out)
        out.write_json(out.cutoff, {"clip_top_percent_cutoff": cutoff})
        yield cutoff


class ScoreClip(beam.PTransform):
    """Pairs with image bytes -> pairs with ``clip_score`` and embeddings; ``low_clip_score`` rejects."""

    def __init__(self, cfg: ClipConfig, out_dir: str, concepts: ConceptsConfig | None = None) -> None:
        super().__init__()
        self._cfg = cfg
        self._out = out_dir
        self._concepts = concepts

    def expand(self, pairs) -> StageOutputs:
        threshold, _source = resolve_threshold(self._cfg)
        size = self._cfg.batch_size
        scored = (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Score" >> beam.ParDo(_ClipScoreFn(self._cfg, self._concepts)).with_outputs(REJECTED, main="scored")
        )
        if self._cfg.top_percent is None:
            filtered = scored.scored | "Threshold" >> beam.ParDo(_ScoreFilterFn(threshold, self._cfg)).with_outputs(REJECTED, main="kept")
        else:
            cutoff = (
                scored.scored
                | "Scores" >> beam.Map(lambda r: r[R.CLIP_SCORE])
                | "Quantiles" >> beam.transforms.stats.ApproximateQuantiles.Globally(_QUANTILES)
                | "Cutoff" >> beam.ParDo(_RecordCutoff(self._out, self._cfg.top_percent))
            )
            filtered = scored.scored | "TopPercent" >> beam.ParDo(
                _ScoreFilterFn(threshold, self._cfg), cutoff=beam.pvalue.AsSingleton(cutoff, default_value=None)
            ).with_outputs(REJECTED, main="kept")
        rejected = (scored[REJECTED], filtered[REJECTED]) | "FlattenClipRejects" >> beam.Flatten()
        return StageOutputs(filtered.kept, rejected)
