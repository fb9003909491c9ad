"""The one exception type that means 'the user's input is wrong', shown as a single line by the CLI."""


class LmError(Exception):
    """Bad input or missing prerequisite; the message names the file, column or key and the fix."""
