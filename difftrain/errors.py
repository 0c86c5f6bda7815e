"""The one exception type for mistakes a user can fix: the scripts print its message as one line."""


class UserError(Exception):
    """Something in the command line, config or data is wrong; the message says what and how to fix it."""
