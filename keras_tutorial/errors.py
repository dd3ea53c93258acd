"""The one error type that command lines turn into a single line and a non-zero exit."""


class UserError(ValueError):
    """Bad input from the user (a flag, a file, a directory); the message is one line."""
