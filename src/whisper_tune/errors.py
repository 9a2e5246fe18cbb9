"""The one exception type the CLI turns into a single line and exit code 2.

Everything a user can fix (a missing folder, a wrong column name, an unknown language)
raises :class:`UserError` with a message that names the thing and the fix. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
