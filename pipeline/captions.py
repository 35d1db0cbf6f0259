"""Caption stage: clean every caption, reject those the text filters refuse."""

from __future__ import annotations

import apache_beam as beam
from paircurate.embeddings.tokenizer import CaptionTokenizer
from paircurate.filters.caption import check_caption, check_caption_length, clean_caption
from paircurate.pipeline.stage import REJECTED, IsolatedDoFn, StageCounters, StageOutputs
from paircurate.schemas import records as R
from paircurate.schemas.config import CaptionConfig
from paircurate.schemas.outcomes import Stage


class _CleanCaptionFn(IsolatedDoFn):
    STAGE = Stage.CAPTION

    def __init__(self, cfg: CaptionConfig) -> None:
        self._cfg = cfg

    def setup(self) -> None:
        self._counters = StageCounters(Stage.CAPTION)
        self._tokenizer = CaptionTokenizer(self._cfg.tokenizer) if self._cfg.tokenize else None

    def process_record(self, record: dict):
        raw = record.get(R.CAPTION)
        # Length first: every later step (ftfy, regexes, language id) costs at least linear time.
        decision = check_caption_length(raw, self._cfg)
        out = dict(record)
        out[R.CAPTION_RAW] = raw
        if decision.keep:
            cleaned = out[R.CAPTION] = clean_caption(raw)
            decision = check_caption(cleaned, self._cfg)
        if decision.keep:
            if self._tokenizer is not None:
                out[R.CAPTION_TOKENS], out[R.CAPTION_TOKENS_TRUNCATED] = self._tokenizer.ids(cleaned, self._cfg.max_text_tokens)
            self._counters.kept()
            yield out
        else:
            self._counters.rejected(decision.reason)
            yield beam.pvalue.TaggedOutput(REJECTED, R.make_reject(out, Stage.CAPTION, decision.reason, decision.detail))


class CleanCaptions(beam.PTransform):
    """ftfy + HTML unescape + whitespace; ``caption_too_long`` / ``caption_too_short`` / ``caption_too_few_words`` rejects."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self._cfg = cfg

    def expand(self, pairs) -> StageOutputs:
        out = pairs | "Clean" >> beam.ParDo(_CleanCaptionFn(self._cfg)).with_outputs(REJECTED, main="kept")
        return StageOutputs(out.kept, out[REJECTED])
