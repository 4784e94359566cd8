"""User-facing errors.

Every mistake a user can make (a bad model name, an empty data set, a checkpoint that does not fit)
is raised as a :class:`SingeError` whose message is one line naming what is wrong. The CLI prints
that line and exits with status 2 instead of a traceback; programming errors stay ordinary
exceptions so that they keep their traceback.
"""

from __future__ import annotations


class SingeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(one_line)
