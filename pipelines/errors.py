"""The one exception type for input a user can fix, and the one way to quote an error in a message.

The CLI prints a UserError's message on one line and exits 2, with no traceback. `alexnet` and
`jobs` import both from here because `pipelines` is the bottom of the import graph.
"""

from pipelines.redaction import redact


class UserError(Exception):
    """Bad input, a bad option or a bad path; the message names the file, column or option."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """An error as one line for a message: the first line of its text, credentials masked (before
    the cut, so a cut never leaves half of one unmasked), at most `limit` characters; or its
    type's name when it has no text."""
    text = redact(str(err)).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
