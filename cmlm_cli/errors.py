"""The one exception type for problems with the user's input or options.

Every check at the boundary raises :class:`CmlmError` with a message that
names the file (and line, where there is one), says what was expected and
what was found, and how to fix it. The command line turns it into one line on
stderr and a non-zero exit status; anything else is a bug and keeps its
traceback.
"""


def _visible(char: str) -> str:
    """A character as it reads in a message: control and invisible ones escaped."""
    if char.isprintable() or char == " ":
        return char
    return repr(char)[1:-1]


class CmlmError(Exception):
    """Bad input or options; the message is meant for the user as it is.

    Messages quote what was found in the user's files, which may hold line
    ends, tabs, NUL bytes or other invisible characters; these are shown as
    escapes (``\\r``, ``\\t``, ``\\x00``), so that the message stays one line
    and shows what is really there.
    """

    def __init__(self, message: str) -> None:
        super().__init__("".join(_visible(char) for char in str(message)))
