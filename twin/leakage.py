"""The one error every ML part raises when data it learned from would leak into what it is
judged or scored on (time overlap, a shared failure episode, look-ahead)."""


class LeakageError(ValueError, RuntimeError):
    """Training data overlaps, or does not precede, the data being evaluated or scored.
    (Both bases: the failure and optimizer checks raised a ValueError, the anomaly scorer
    a RuntimeError; callers catching either keep working.)"""
