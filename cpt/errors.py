"""The errors a user can fix. Every layer raises them; the CLI prints their message and exits with code 2 for a
configuration problem, 1 for a data problem."""


class ConfigError(ValueError):
    """A configuration problem: a bad key or value, a plug-in that cannot be loaded, a run that cannot resume."""


class DataError(ValueError):
    """A problem with a dataset: the message names the task or file, and the row."""
