"""The one exception type for user errors: the CLI prints its message on one line and exits 1."""


class FerEdgeError(Exception):
    """A problem with the user's input (file, argument, configuration), not a bug."""
