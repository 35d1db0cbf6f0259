"""CLIP-score decisions: a fixed threshold and a run-wide top-percent cutoff."""

from __future__ import annotations

from typing import Sequence

from paircurate.schemas.outcomes import Decision, Reason


def check_clip_score(score: float, threshold: float | None) -> Decision:
    """Keep a pair whose image-text cosine similarity reaches ``threshold``."""
    if threshold is None or score >= threshold:
        return Decision.accept()
    return Decision.reject(Reason.LOW_CLIP_SCORE, f"clip_score {score:.4f} < {threshold:.4f}")


def top_percent_cutoff(quantiles: Sequence[float], percent: float) -> float | None:
    """The score at the (100 - percent)th percentile, from evenly spaced quantiles.

    ``quantiles`` are the min, the max and evenly spaced values between them,
    as Beam's ``ApproximateQuantiles`` returns them. Keeping scores at or above
    the result keeps (about) the top ``percent`` % of the run.
    """
    if not quantiles:
        return None
    steps = len(quantiles) - 1
    index = round((1.0 - percent / 100.0) * steps)
    return float(quantiles[min(max(index, 0), steps)])


def combined_threshold(threshold: float | None, cutoff: float | None) -> float | None:
    """Both filters on: a pair must pass the stricter of the two."""
    values = [v for v in (threshold, cutoff) if v is not None]
    return max(values) if values else None
