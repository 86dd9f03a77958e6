"""The one exception lowbit raises for calls it cannot take."""


class UnsupportedError(ValueError):
    """No backend (or the forced one) can run this call.

    The message names every unmet constraint, per backend, and an alternative that would work.
    It subclasses ValueError so that callers who only catch bad-argument errors still catch it.
    """
