"""The one exception type for problems with the user's input or options.

Every check at the boundary raises :class:`CmlmError` with a message that
names the file (and line, where there is one), says what was expected and
what was found, and how to fix it. The command line turns it into one line on
stderr and a non-zero exit status; anything else is a bug and keeps its
traceback.
"""


class CmlmError(Exception):
    """Bad input or options; the message is meant for the user as it is."""
