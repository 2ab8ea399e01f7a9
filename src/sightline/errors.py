"""Errors that carry a one-line, user-facing message (no traceback needed)."""


class SightlineError(Exception):
    """Base class: the message names the bad file, key or missing thing."""


class ConfigError(SightlineError):
    """A params file has an unknown key, a wrong type or a bad value."""


class DataError(SightlineError):
    """A dataset is missing, unreadable or inconsistent."""


class CheckpointError(SightlineError):
    """A checkpoint is missing or cannot be rebuilt."""


class InputError(SightlineError, ValueError):
    """A request that cannot be served: a count out of range, an image that does not fit."""


class BudgetError(InputError):
    """A request over one of its budgets (pixels, images, characters, header length): refused
    before the work it would cost is done. Servers answer it with 413."""
