"""The exception that means 'the user's input is wrong', shown as a single line by the CLI (exit code 1).
A params.yaml problem is lm.config.ConfigError instead (exit code 2)."""


class LmError(Exception):
    """Bad input or missing prerequisite; the message names the file, column or key and the fix."""
