from paircurate.filters.caption import check_caption, clean_caption
from paircurate.schemas.config import CaptionConfig
from paircurate.schemas.outcomes import Reason


def test_clean_caption_fixes_mojibake_entities_and_whitespace():
    raw = "  a  photo &amp;amp; \u00e2\u20ac\u0153caption\u00e2\u20ac\u009d \n\t "
    assert clean_caption(raw) == 'a photo & "caption"'


def test_clean_caption_handles_missing():
    assert clean_caption(None) == ""
    assert clean_caption("") == ""


def test_clean_caption_unescapes_even_next_to_markup():
    # ftfy leaves entities alone when the text contains '<'; alt text still needs them decoded.
    assert clean_caption("<b>fish</b> &amp;amp; chips") == "<b>fish</b> & chips"


def test_check_caption_reasons():
    cfg = CaptionConfig(min_words=2, min_chars=5)
    assert check_caption("a red circle", cfg).keep
    short = check_caption("abc", cfg)
    assert (short.keep, short.reason, short.detail) == (False, Reason.CAPTION_TOO_SHORT, "3 chars < 5")
    words = check_caption("photograph", cfg)
    assert (words.keep, words.reason, words.detail) == (False, Reason.CAPTION_TOO_FEW_WORDS, "1 words < 2")


def test_check_caption_defaults_accept_empty():
    assert check_caption("", CaptionConfig()).keep
