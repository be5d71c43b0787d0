"""The one error type a user can cause, defined below both the app and the compression package.

`str(e)` is the single line shown to the user: the key (or file), the bad value, what is valid.
The app (`lightning_modules.config_check`) re-exports `ConfigError`; the compression package
raises it for bad method settings and `FileFormatError` for a file it refuses to load.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value or input. str(e) is the one line shown to the user."""


class FileFormatError(ConfigError):
    """A model file that is not what it claims to be (wrong magic, truncated, checksum mismatch);
    the message names the file."""
