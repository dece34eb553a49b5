"""One base class for errors the user can fix (a config value, a dataset on disk, missing weights).

run.py prints such an error as one short block (what is wrong, the key or file, the fix) and exits
with ``EXIT_USER_ERROR``; any other exception is a bug and keeps its traceback. The message of a
``UserError`` is written for the user: it names the config key or file and says how to fix it.
"""

from __future__ import annotations

import textwrap

EXIT_USER_ERROR = 2  # like argparse's usage errors; Hydra's own config errors exit 1


class UserError(Exception):
    """The input is wrong, not the code: the message names the key or file and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (still a ValueError for code that catches those)."""


def format_user_error(err: UserError, log_file: str | None = None, width: int = 100) -> str:
    """The block run.py prints instead of a traceback."""
    body = textwrap.fill(str(err), width=width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    where = f"; the run's log: {log_file}" if log_file else ""
    return (f"Error ({type(err).__name__}):\n{body}\n"
            f"  (HYDRA_FULL_ERROR=1 shows the traceback{where})")
