"""The errors that command lines turn into a single line and a non-zero exit."""

import signal


class UserError(ValueError):
    """Bad input from the user (a flag, a file, a directory); the message is one line."""


class Interrupted(Exception):
    """Work stopped by a signal, cleanly (a training run has written its backup); the message
    is one line, and the exit status the shell's for that signal: 130 for Ctrl-C (SIGINT),
    143 for SIGTERM."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.exit_status = 128 + signal_number
