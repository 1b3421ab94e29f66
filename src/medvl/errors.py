"""The two kinds of failure every stage shares: `UserError` and `Rejection`.

- `UserError`: a mistake the user can fix (bad config, missing file or asset), or a run to repeat.
  The `medvl` command prints its message without a traceback and exits with its `exit_code` (2;
  3 for "incomplete, run the same command again"); library callers catch them like any other
  exception (most also derive from ValueError or RuntimeError).
- `Rejection`: one record, item or image turned away while the run goes on, with a short `reason`
  (the code counted in reports and `rejects.jsonl`) and a human `detail`. Each stage raises its own
  subclass (`medvl.io.images.ImageLoadError`, `medvl.train.encode.EncodeError`,
  `medvl.train.validate.Rejected`, `medvl.curate.postprocess.Rejected`, `medvl.curate.label.BadReply`)
  and catches them all as `Rejection`.
"""

from __future__ import annotations

__all__ = ["Rejection", "UserError", "first_line"]


class UserError(Exception):
    """An error whose message tells the user what to change (or to run again)."""

    exit_code = 2  # the `medvl` command's exit status


class Rejection(ValueError):
    """A record turned away: `.reason` (a short code counted in reports) and `.detail` (why, for people).

    The message is `message` when given, else "reason: detail".
    """

    def __init__(self, reason: str, detail: str = "", message: str | None = None):
        self.reason, self.detail = reason, detail
        super().__init__(message if message is not None else f"{reason}: {detail}" if detail else reason)


def first_line(exc: BaseException) -> str:
    """A library exception in a few words for a one-line message: its first non-blank line, else its
    class name (transformers' and torch's messages run to several lines, or are empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
