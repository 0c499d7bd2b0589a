"""The one exception for mistakes a user can fix: the stage runner prints it as one line."""


class UserError(Exception):
    """A mistake the user can fix; printed as one line, never as a traceback."""
