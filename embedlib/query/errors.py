"""One exception for every way a question can be wrong, carrying one line a person can act on."""

from __future__ import annotations

import duckdb

from embedlib.errors import UserError


class QueryError(UserError):
    """Bad input or a failed query: str() is one clear line (the CLI prints it and exits non-zero)."""

    exit_code = 1


_PREFIXES = ("Invalid Input Error: ",)  # our own error() calls in the macros: the text is already the message


def one_line(exc: BaseException) -> str:
    """DuckDB's message reduced to its first line (the rest is a caret diagram or a 'Did you mean')."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    for prefix in _PREFIXES:
        first = first.removeprefix(prefix)
    hint = next((ln for ln in lines[1:] if ln.startswith("Did you mean")), None)
    return f"{first} ({hint})" if hint else first


def translate(exc: BaseException) -> QueryError:
    """A QueryError for a DuckDB failure (catalog, parser, binder, conversion, our error() calls)."""
    if isinstance(exc, QueryError):
        return exc
    return QueryError(one_line(exc))


DUCKDB_ERRORS = (duckdb.Error,)
