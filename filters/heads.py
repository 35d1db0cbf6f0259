"""Decisions on the scores of the heads that run on the CLIP image embedding."""

from __future__ import annotations

from paircurate.schemas.outcomes import Decision, Reason


def check_punsafe(punsafe: float | None, max_punsafe: float | None) -> Decision:
    """Reject an image whose NSFW probability is above ``max_punsafe`` (LAION-5B's subsets used 0.5)."""
    if max_punsafe is None or punsafe is None or punsafe <= max_punsafe:
        return Decision.accept()
    return Decision.reject(Reason.UNSAFE, f"punsafe {punsafe:.4f} > {max_punsafe:.4f}")


def check_aesthetic(score: float | None, min_aesthetic: float | None) -> Decision:
    """Reject an image whose aesthetic score is below ``min_aesthetic`` (LAION-Aesthetics: 4.5, 5, 6, 6.5)."""
    if min_aesthetic is None or score is None or score >= min_aesthetic:
        return Decision.accept()
    return Decision.reject(Reason.LOW_AESTHETIC, f"aesthetic_score {score:.4f} < {min_aesthetic:.4f}")
