"""The one exception type for input a user can fix.

The CLI prints its message on one line and exits 2, with no traceback. `alexnet` and `jobs`
import it from here because `pipelines` is the bottom of the import graph.
"""


class UserError(Exception):
    """Bad input, a bad option or a bad path; the message names the file, column or option."""
