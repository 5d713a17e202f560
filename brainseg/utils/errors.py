"""The errors a user can cause and fix: each becomes one line ``error: <message>`` in the CLIs.

Library code raises a subclass of :class:`UserError` for a bad path, file, config key or
checkpoint, with a message that names the thing; anything else is a bug and keeps its traceback.
"""

__all__ = ["UserError", "LGGDataError", "ConfigError", "CheckpointError"]


class UserError(Exception):
    """A problem with the user's input (files, config, arguments), reported as one line."""


class LGGDataError(UserError, ValueError):
    """A problem with the user's data (missing, corrupt or inconsistent files)."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used (unknown key, bad value, missing file)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read safely, or does not fit the model."""
