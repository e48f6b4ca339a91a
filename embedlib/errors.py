"""Errors a user can fix: the jobs print them as one line (no traceback) and exit with `exit_code`."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, settings or state: the message says what is wrong and what to do."""

    exit_code = 2
