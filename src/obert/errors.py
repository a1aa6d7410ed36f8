"""The one exception type the CLI turns into a one-line message and exit code 2."""


class ObertError(Exception):
    """Bad input: the message says what is wrong and how to fix it, on one line."""
