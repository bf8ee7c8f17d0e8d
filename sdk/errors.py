"""Errors the user can act on. The CLI prints them as one line, without a traceback."""


class DistilleryError(Exception):
    """Base class for errors caused by bad input (recipe, pack, corpus, endpoint)."""


class ConfigError(DistilleryError):
    """A recipe key is unknown or a value is out of range."""


class PackError(DistilleryError):
    """A domain pack is missing or malformed."""


class ModelError(DistilleryError):
    """A model could not be found or loaded."""


class BudgetExhausted(DistilleryError):
    """A role reached its recipe budget (calls, tokens or cost); the run stops cleanly and can be resumed."""


class RunLocked(DistilleryError):
    """Another process holds the run directory (a second `distill run`, `resume` or `report` on it)."""


class SystemFault(DistilleryError):
    """The operating system refused a write: no space left, permission denied, a read-only filesystem."""


class Interrupted(DistilleryError):
    """The run was stopped by SIGTERM or Ctrl-C; it is marked stopped and can be resumed."""

    exit_code = 130
