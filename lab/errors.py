"""Errors that name their fix. The CLI prints them without a traceback."""


class LabError(Exception):
    """A failure the user can act on; the message says what to do."""


class ConfigError(LabError):
    """The [tool.lab] configuration or a command-line value is wrong."""


class NotFound(LabError):
    """A named thing (model, version, alias, run, feature view) does not exist."""
