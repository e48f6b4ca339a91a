"""Every SQL statement of embedlib, one .sql file each, and the one loader.

Pipeline steps (pipeline_*.sql), training labels (training_labels.sql) and the query layer (the views, macros and
questions of embedlib.query: base_*, ask_*, ...; internal.sql holds small named sections). Values are bound as
$parameters, never pasted in; the only text filled into a statement is an @PLACEHOLDER@ for a size or an
identifier that embedlib computed itself (`fill`), checked before it is filled.
"""

from __future__ import annotations

import re
from importlib import resources

_PLACEHOLDER = re.compile(r"@(NAME|VARIABLE|DIM|METRIC|M|EF_CONSTRUCTION|EF|KEY)@")


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.sql").read_text()


def _fill(text: str, fill: dict[str, int | str]) -> str:
    """@NAME@ placeholders filled. Only sizes and identifiers that we computed are ever filled in; user values
    are bound as $parameters."""

    def sub(m: re.Match) -> str:
        value = fill[m.group(1).lower()]
        if not isinstance(value, int) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"refusing to fill @{m.group(1)}@ with {value!r}")
        return str(value)

    return _PLACEHOLDER.sub(sub, text)


def sql_text(file: str, /, **fill: int | str) -> str:
    """The text of embedlib/sql/<file>.sql with its placeholders filled."""
    return _fill(_read(file), fill)


def statement(section: str, /, **fill: int | str) -> str:
    """One `-- name:` section of sql/internal.sql, placeholders filled."""
    sections = re.split(r"^-- name: (\w+)\n", _read("internal"), flags=re.M)
    return _fill(dict(zip(sections[1::2], sections[2::2]))[section].strip(), fill)


def create_statement(kind: str, name: str, select: str) -> str:
    """CREATE OR REPLACE VIEW|TABLE name AS <one of our own SELECTs>."""
    return sql_text(kind, name=name).replace("@SELECT@", select.strip().rstrip(";"))


def requires(name: str) -> list[str]:
    """The objects a query-layer file needs (its `-- requires:` line)."""
    m = re.search(r"^-- requires: (.*)$", _read(name), flags=re.M)
    return [x.strip() for x in m.group(1).split(",")] if m else []
