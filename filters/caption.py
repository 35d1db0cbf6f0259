"""Caption cleaning and the basic text filters."""

from __future__ import annotations

import html
import re

import ftfy

from paircurate.config import CaptionConfig
from paircurate.filters.decision import Decision, Reason

_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str | None) -> str:
    """Repair mojibake, unescape HTML entities and collapse whitespace.

    Unescaping runs after ftfy and twice at most because scraped alt text is
    often double-escaped (``&amp;amp;``); a third level is almost always
    intentional text about HTML.
    """
    if not text:
        return ""
    fixed = ftfy.fix_text(str(text))
    for _ in range(2):
        unescaped = html.unescape(fixed)
        if unescaped == fixed:
            break
        fixed = unescaped
    return _WHITESPACE.sub(" ", fixed).strip()


def check_caption(caption: str, cfg: CaptionConfig) -> Decision:
    if len(caption) < cfg.min_chars:
        return Decision.reject(Reason.CAPTION_TOO_SHORT, f"{len(caption)} chars < {cfg.min_chars}")
    words = len(caption.split())
    if words < cfg.min_words:
        return Decision.reject(Reason.CAPTION_TOO_FEW_WORDS, f"{words} words < {cfg.min_words}")
    return Decision.accept()
