"""Caption cleaning and the basic text filters."""

from __future__ import annotations

import functools
import html
import re

import ftfy
from paircurate.schemas.config import CaptionConfig
from paircurate.schemas.outcomes import Decision, Reason

_WHITESPACE = re.compile(r"\s+")

# Alt text that says nothing about the picture: placeholders a CMS or uploader
# fills in, and camera file names. Matched on the whole caption (case-folded,
# punctuation at the ends stripped), so "a photo of a dog" is never hit.
_PLACEHOLDER_WORDS = (
    "image", "images", "img", "photo", "photos", "picture", "pic", "pics", "photograph", "thumbnail", "thumb",
    "untitled", "no title", "untitled image", "untitled photo", "image placeholder", "placeholder", "no image",
    "image not found", "no description", "no alt text", "alt text", "default", "banner", "logo", "icon", "spacer",
    "null", "none", "undefined", "n/a", "na", "click to enlarge", "click here", "enlarge", "view image", "loading",
    "featured image", "header image", "stock photo", "product image", "main image", "file", "screenshot",
)
_PLACEHOLDER_NUMBERED = re.compile(r"^(?:image|img|photo|picture|pic|untitled|screenshot|scan|file)[\s_\-]*\(?\d+\)?$")
_IMAGE_EXT = r"(?:\.(?:jpe?g|png|gif|webp|heic|heif|tiff?|bmp|dng|cr2|nef|arw|raw|mp4|mov))?"
# Camera and phone defaults: IMG_1234, DSC_0001, DSCN1234, DSCF1234, P1010001, GOPR0001,
# PXL_20210101_123456789, IMG-20200101-WA0001 (WhatsApp); no spaces inside, 3+ digits.
_CAMERA_FILE = re.compile(
    r"^(?:img|dsc|dscn|dscf|sam|gopr|gp|mvimg|pxl|p|pano|vid|mov|cimg|imgp|dcp|dji|wp|photo|image)"
    r"[ _\-]?[0-9a-z_\-]*" + _IMAGE_EXT + "$"
)
# One character class after the word, not two adjacent ones that share characters:
# "[\s_-]*[\d_ -...]*" backtracks over every split of a run of dashes, O(n^2) per caption.
# Every pattern here is a chain of single character classes (no nested or overlapping
# quantifiers), so Python's backtracking engine runs each in linear time.
_SCREENSHOT = re.compile(r"^(?:screenshot|screen shot)[\s\d_\-.:apm(),t]*" + _IMAGE_EXT + "$")
_ANY_FILE_NAME = re.compile(r"^[\w\-. ()]+\.(?:jpe?g|png|gif|webp|heic|heif|tiff?|bmp|dng|cr2|nef|arw|raw|svg)$")
_EDGE_PUNCT = " \t.,;:!?'\"()[]{}<>|-_*#"


def boilerplate_kind(caption: str) -> str | None:
    """Why ``caption`` is boilerplate (``placeholder``, ``camera_file_name``, ``file_name``), or None.

    >>> boilerplate_kind("IMG_1234.JPG"), boilerplate_kind("a dog on a beach")
    ('camera_file_name', None)
    """
    text = caption.strip().lower()
    bare = text.strip(_EDGE_PUNCT)
    if not bare:
        return None  # empty captions are the length filters' business
    if bare in _PLACEHOLDER_WORDS or _PLACEHOLDER_NUMBERED.match(bare):
        return "placeholder"
    if (_CAMERA_FILE.match(text) and sum(c.isdigit() for c in text) >= 3) or _SCREENSHOT.match(text):
        return "camera_file_name"
    if _ANY_FILE_NAME.match(text):
        return "file_name"
    return None


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


# langid's normalized probability of its best guess. Short captions ("sunset",
# "black cat") get low-confidence guesses in random languages, so only a
# confident non-English verdict rejects; an unsure one keeps the pair.
NON_ENGLISH_MIN_CONFIDENCE = 0.9


@functools.lru_cache(maxsize=1)
def _language_identifier():
    # Imported and unpickled on first use: once per worker process, and never
    # for runs that do not ask for English only.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


def identify_language(caption: str) -> tuple[str, float]:
    """ISO 639-1 code and confidence in [0, 1] from langid.py's bundled model (no network).

    >>> identify_language("un chien sur la plage")[0]
    'fr'
    """
    lang, prob = _language_identifier().classify(caption)
    return str(lang), float(prob)


def check_caption_length(raw: object, cfg: CaptionConfig) -> Decision:
    """``caption_too_long`` for a raw caption over ``cfg.max_caption_chars``, before any other caption work."""
    if isinstance(raw, str) and len(raw) > cfg.max_caption_chars:
        return Decision.reject(Reason.CAPTION_TOO_LONG, f"{len(raw)} chars > {cfg.max_caption_chars}")
    return Decision.accept()


def check_caption(caption: str, cfg: CaptionConfig) -> Decision:
    if len(caption) < cfg.min_chars:
        return Decision.reject(Reason.CAPTION_TOO_SHORT, f"{len(caption)} chars < {cfg.min_chars}")
    words = len(caption.split())
    if words < cfg.min_words:
        return Decision.reject(Reason.CAPTION_TOO_FEW_WORDS, f"{words} words < {cfg.min_words}")
    if cfg.reject_boilerplate:
        kind = boilerplate_kind(caption)
        if kind is not None:
            return Decision.reject(Reason.BOILERPLATE_CAPTION, f"{kind}: {caption[:80]!r}")
    if cfg.english_only and caption:
        lang, prob = identify_language(caption)
        if lang != "en" and prob >= NON_ENGLISH_MIN_CONFIDENCE:
            return Decision.reject(Reason.NON_ENGLISH_CAPTION, f"{lang} ({prob:.2f})")
    return Decision.accept()
