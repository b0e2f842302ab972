"""Errors the CLI turns into one-line messages and a non-zero exit (never a traceback)."""


class LTuningError(Exception):
    """Base class: a user-facing problem with input, configuration or files."""


class ConfigError(LTuningError, ValueError):
    """An invalid option or combination of options."""


class DataError(LTuningError, ValueError):
    """A data file that cannot be read as asked (missing file, column, label, empty text)."""


class AdapterError(LTuningError, ValueError):
    """An adapter folder that cannot be loaded (missing files, wrong backbone, wrong shapes)."""


class UnsupportedModelError(LTuningError, ValueError):
    """A backbone family or feature this library does not (yet) support."""


class WriteError(LTuningError, OSError):
    """A file that could not be written (a full disk, a lost mount): nothing half-written is left, and
    what was there before is intact."""
