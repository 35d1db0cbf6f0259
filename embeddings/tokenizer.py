"""Caption token ids with an open_clip tokenizer (the ``--tokenize`` column)."""

from __future__ import annotations


class CaptionTokenizer:
    """BPE token ids of a caption with a named open_clip tokenizer, unpadded.

        >>> CaptionTokenizer("ViT-B-32").ids("a red circle", max_tokens=77)
        ([49406, 320, 736, 7117, 49407], False)

    Built in a DoFn's ``setup`` (it imports open_clip); the ids start with the
    start-of-text token and end with end-of-text unless cut at ``max_tokens``.
    """

    def __init__(self, model_name: str) -> None:
        import open_clip

        self._tokenizer = open_clip.get_tokenizer(model_name)
        if not hasattr(self._tokenizer, "encode") or not hasattr(self._tokenizer, "sot_token_id"):
            raise ValueError(f"tokenizer of {model_name!r} is not a BPE tokenizer with start/end tokens")

    def ids(self, caption: str, max_tokens: int) -> tuple[list[int], bool]:
        body = self._tokenizer.encode(caption)
        ids = [self._tokenizer.sot_token_id, *body, self._tokenizer.eot_token_id]
        if len(ids) <= max_tokens:
            return ids, False
        return ids[:max_tokens], True

