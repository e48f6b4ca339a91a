"""Every SQL statement of embedlib, one .sql file each; `sql_text` reads them (package data)."""

from __future__ import annotations

from importlib import resources


def sql_text(name: str) -> str:
    """The text of embedlib/sql/<name>.sql. Values are bound as parameters, never pasted in."""
    return resources.files(__name__).joinpath(f"{name}.sql").read_text()
