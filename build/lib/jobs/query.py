"""Kept for old scripts: `python -m jobs.query` is the `embedlib` command (embedlib/query/cli.py).

  python -m jobs.query --run OUT similar --sha256 X -k 10   ==   embedlib similar --sha256 X -k 10 --root OUT
`--run` and `--database` before the command name are the old spellings of `--root` and `--db`.
"""

from __future__ import annotations

import sys

from embedlib.query.cli import main as embedlib_main

OLD = {"--run": "--root", "--database": "--db"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out, before_command = [], True
    for i, a in enumerate(argv):
        if before_command and not a.startswith("-") and (i == 0 or argv[i - 1] not in (*OLD, "--root", "--db",
                                                                                       "--format", "--labels",
                                                                                       "--model-version")):
            before_command = False
        name, eq, value = a.partition("=")
        out.append(OLD[name] + eq + value if before_command and name in OLD else a)
    return embedlib_main(out)


if __name__ == "__main__":
    sys.exit(main())
