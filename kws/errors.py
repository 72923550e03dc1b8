"""Exceptions that carry a message meant for the user.

The CLI prints ``str(error)`` as one line and exits non-zero; it never shows a
traceback for these. Anything else that escapes is a bug.
"""


class KwsError(Exception):
    """A problem the user can fix: the message says what and where."""


class FeatureSettingsError(KwsError, ValueError):
    """Feature settings that the front end cannot produce."""


class BundleError(KwsError):
    """A model bundle that is missing, corrupt or inconsistent."""


class ConfigError(KwsError):
    """A configuration file or option that is wrong."""


class AudioError(KwsError):
    """An audio file or device that cannot be used."""
