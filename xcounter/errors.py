"""Errors a user can cause. The CLI prints them as one line and exits non-zero (no traceback)."""


class XCounterError(Exception):
    """A problem with the user's input (file, option, model) that they can fix."""


class InputError(XCounterError):
    """An unreadable, malformed or unsafe input file."""


class ModelError(XCounterError):
    """A classifier or generator that cannot be loaded or behaves badly (NaN, wrong shape)."""
