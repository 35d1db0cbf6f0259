"""Caption stage: clean every caption, reject those the text filters refuse."""

from __future__ import annotations

import apache_beam as beam
from paircurate.embeddings.tokenizer import CaptionTokenizer
from paircurate.filters.caption import check_caption, clean_caption
from paircurate.pipeline.stage import REJECTED, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.config import CaptionConfig
from paircurate.schemas.outcomes import Reason, Stage


class _CleanCaptionFn(beam.DoFn):
    def __init__(self, cfg: CaptionConfig) -> None:
        self._cfg = cfg

    def setup(self) -> None:
        self._counters = StageCounters(Stage.CAPTION)
        self._tokenizer = CaptionTokenizer(self._cfg.tokenizer) if self._cfg.tokenize else None

    def process(self, record: dict):
        try:
            cleaned = clean_caption(record.get(R.CAPTION))
            decision = check_caption(cleaned, self._cfg)
        except Exception as exc:  # one odd caption must not stop the run
            self._counters.rejected(Reason.INTERNAL_ERROR)
            yield beam.pvalue.TaggedOutput(REJECTED, R.make_reject(record, Stage.CAPTION, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        out = dict(record)
        out[R.CAPTION_RAW] = record.get(R.CAPTION)
        out[R.CAPTION] = cleaned
        if decision.keep:
            if self._tokenizer is not None:
                out[R.CAPTION_TOKENS], out[R.CAPTION_TOKENS_TRUNCATED] = self._tokenizer.ids(cleaned, self._cfg.max_text_tokens)
            self._counters.kept()
            yield out
        else:
            self._counters.rejected(decision.reason)
            yield beam.pvalue.TaggedOutput(REJECTED, R.make_reject(out, Stage.CAPTION, decision.reason, decision.detail))


class CleanCaptions(beam.PTransform):
    """ftfy + HTML unescape + whitespace; ``caption_too_short`` / ``caption_too_few_words`` rejects."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self._cfg = cfg

    def expand(self, pairs) -> StageOutputs:
        out = pairs | "Clean" >> beam.ParDo(_CleanCaptionFn(self._cfg)).with_outputs(REJECTED, main="kept")
        return StageOutputs(out.kept, out[REJECTED])
