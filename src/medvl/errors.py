"""`UserError`: the base of errors a user can fix (bad config, missing file or asset).

The `medvl` command prints their message without a traceback and exits with status 2; library
callers catch them like any other exception (they also derive from ValueError or RuntimeError).
"""


class UserError(Exception):
    """An error whose message tells the user what to change."""
