"""The `embedlib` command: SQL over an output root from the shell.

  embedlib sql "SELECT format, count(*) FROM embeddings GROUP BY ALL" --root runs/out
  embedlib sql --root runs/out                      # interactive: statements end with ';' (or pipe them in)
  embedlib sql "SELECT * FROM runs" --root s3://bucket/embedlib --db runs/embedlib.duckdb   # materialise once,
  embedlib sql "SELECT * FROM similar('<sha256>', 5)" --db runs/embedlib.duckdb            # then reuse
  embedlib similar --sha256 <sha256> -k 10 --root R      (or --file PATH: embedded with the run's model)
  embedlib families | formats | sizes | errors [--run ID] | runs | near-dupes [--max-distance D]
  embedlib neighbors [--sha256 X | --run ID] | attribution [--run ID] | drift --runs A B | drift --versions A B
  embedlib index --root R --db FILE;  embedlib similar --sha256 X --approx --db FILE    (HNSW, opt-in)

Views: embeddings (current model version, embedding FLOAT[D]), embeddings_all, errors, runs, neighbors,
neighbors_all, labels (--labels MANIFEST), labelled_files, attribution, family_counts, format_counts,
size_distribution, error_counts, run_counts. Macros: similar(sha256, k), similar_to_vector(vector, k)
(metric := 'cosine' | 'l2'), near_duplicate_groups(max_distance), near_duplicate_members(max_distance),
drift_runs(a, b), drift_versions(a, b), family_changes(a, b), attribution_of(version).
--root may also come from EMBEDLIB_ROOT. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import duckdb

from embedlib.query import analytics
from embedlib.query.connect import connect, open_database
from embedlib.query.errors import QueryError
from embedlib.query.fmt import format_rows

PROMPT, MORE = "embedlib> ", "     ...> "


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (the usage itself is in --help)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes, before or after its name."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--root", default=d(None), help="output root (local folder or fsspec URI; env EMBEDLIB_ROOT)")
    parser.add_argument("--db", default=d(None), metavar="FILE",
                        help="DuckDB file: with --root, materialise the tables into it; alone, query it")
    parser.add_argument("--model-version", default=d(None), help="model version of `embeddings` "
                        "(default: that of the latest finished run)")
    parser.add_argument("--labels", default=d(None), metavar="MANIFEST",
                        help="manifest (csv/parquet: path,family) whose families override the recorded ones")
    parser.add_argument("--format", default=d("table"), choices=("table", "csv", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="embedlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        return p

    p = cmd("sql", "run SQL; without a statement (or with '-'), read statements from stdin (interactive on a tty)")
    p.add_argument("statement", nargs="?")
    cmd("shell", "interactive SQL (statements end with ';'; .tables lists the views; .quit leaves)")
    p = cmd("similar", "k nearest executables (cosine distance unless --metric l2)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sha256")
    which.add_argument("--file", help="embed this file with the run's model, then search")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--metric", default="cosine", help="cosine or l2")
    p.add_argument("--model", help="checkpoint to embed --file with (default: the model the latest run recorded)")
    p.add_argument("--from-version", help="take the --sha256 vector from this model version")
    p.add_argument("--cross-version", action="store_true",
                   help="allow comparing a vector of another model version with the current one")
    p.add_argument("--approx", action="store_true",
                   help="through the HNSW index of a --db built with `embedlib index` (faster on large tables; "
                        "the rows carry approximate=true)")
    p = cmd("index", "build an HNSW index into a --db file for `similar --approx` (minutes per 100k rows)")
    p.add_argument("--m", type=int, default=16, help="HNSW graph degree")
    p.add_argument("--ef-construction", type=int, default=128)
    p = cmd("families", "files per family, format and bytes")
    p.add_argument("-k", type=int, default=30, help="largest families shown")
    cmd("formats", "files per format")
    cmd("sizes", "file sizes in power-of-two buckets per format")
    p = cmd("errors", "files not embedded, by status")
    p.add_argument("--run", help="one run id (default: every run)")
    cmd("runs", "every finished run: its summary row next to what its tables hold")
    p = cmd("near-dupes", "groups of near-identical executables (from stored neighbours)")
    p.add_argument("--max-distance", type=float, default=0.01)
    p.add_argument("-k", type=int, default=50, help="largest groups shown")
    p = cmd("neighbors", "stored nearest neighbours of a file or of a run's files")
    p.add_argument("--sha256")
    p.add_argument("--run")
    p.add_argument("-k", type=int, default=100, help="rows shown")
    p = cmd("attribution", "attributed family of each file (majority of its labelled neighbours)")
    p.add_argument("--run")
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument("-k", type=int, default=100, help="rows shown")
    p = cmd("drift", "per-family drift between two runs (same model) or two model versions")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--runs", nargs=2, metavar=("A", "B"))
    which.add_argument("--versions", nargs=2, metavar=("A", "B"))
    p.add_argument("--files", action="store_true", help="with --versions: the files whose attributed family changed")
    return parser


def open_connection(args: argparse.Namespace) -> duckdb.DuckDBPyConnection:
    root = args.root or os.environ.get("EMBEDLIB_ROOT") or None
    if root is None and args.db is None:
        raise QueryError("give an output root (--root ROOT or EMBEDLIB_ROOT) or a database built from one (--db FILE)")
    if root is None:
        if args.model_version or args.labels:
            raise QueryError("--model-version and --labels need --root (the database is rebuilt from the root)")
        return open_database(args.db)
    return connect(root, model_version=args.model_version, labels=args.labels, database=args.db)


def embed_file(con: duckdb.DuckDBPyConnection, path: str, model: str | None) -> tuple[list[float], str]:
    """One file embedded as the latest run did (its model and read settings): (vector, model version).
    The only call into the Embedder from the query side."""
    import json

    from embedlib.config import InputConfig
    from embedlib.model.embedder import Embedder

    if not os.path.isfile(path):
        raise QueryError(f"--file {path!r} is not a file")
    config: dict = {}
    try:
        _, rows = analytics.ask(con, "latest_run_config")
        config = json.loads(rows[0][0]) if rows and rows[0][0] else {}
    except (QueryError, ValueError):
        config = {}
    model = model or config.get("model")
    if not model:
        raise QueryError("the runs table does not say which model embedded them: pass --model CHECKPOINT")
    try:
        embedder = Embedder(model, device="cpu")
        input_cfg = InputConfig(**config["input"]) if isinstance(config.get("input"), dict) else None
        return embedder.embed_path(path, input_cfg).tolist(), embedder.version
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QueryError(f"cannot embed {path!r} with model {model!r}: {exc}") from exc


def answer(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> analytics.Result:
    """The rows for one command."""
    c = args.command
    if c == "sql":
        return analytics.run_sql(con, args.statement)
    if c == "similar" and args.approx:
        if args.sha256 is None:
            raise QueryError("--approx works with --sha256")
        from embedlib.query import hnsw

        return hnsw.similar_approx(con, args.sha256, args.k)
    if c == "index":
        return _build_index(con, args)
    if c == "similar" and args.sha256 is not None:
        return analytics.similar(con, args.sha256, args.k, args.metric, args.from_version, args.cross_version)
    if c == "similar":
        vector, version = embed_file(con, args.file, args.model)
        return analytics.similar_to_vector(con, vector, args.k, args.metric, version, args.cross_version)
    if c == "families":
        return analytics.ask(con, "families", k=args.k)
    if c in ("formats", "sizes", "runs"):
        return analytics.ask(con, c)
    if c == "errors":
        return analytics.ask(con, "errors", run=args.run)
    if c == "near-dupes":
        return analytics.near_duplicate_groups(con, args.max_distance, args.k)
    if c == "neighbors":
        return analytics.stored_neighbors(con, args.sha256, args.run, args.k)
    if c == "attribution":
        return analytics.attribution(con, args.run, args.min_confidence, args.k)
    if c == "drift" and args.runs:
        return analytics.ask(con, "drift_runs", a=args.runs[0], b=args.runs[1])
    a, b = args.versions
    return analytics.ask(con, "family_changes" if args.files else "drift_versions", a=a, b=b)


def _build_index(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> analytics.Result:
    import time

    from embedlib.query import hnsw

    if args.db is None:
        raise QueryError("embedlib index needs --db FILE (the index lives in that database)")
    t0 = time.perf_counter()
    hnsw.build(con, m=args.m, ef_construction=args.ef_construction)
    rows = analytics.ask(con, "index_summary")[1]
    return ["table", "rows", "seconds"], [(r[0], r[1], round(time.perf_counter() - t0, 1)) for r in rows]


def print_result(columns: list[str], rows: list[tuple], fmt: str) -> None:
    if not columns:
        return
    print(format_rows(columns, rows, fmt))
    if fmt == "table":
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)


# -- interactive / piped statements ------------------------------------------------------------------------

def split_statements(buffer: str) -> tuple[list[str], str]:
    """(complete statements, the unfinished rest): a statement ends at a ';' outside quotes and comments."""
    done, start, i, quote = [], 0, 0, None
    while i < len(buffer):
        ch = buffer[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif buffer.startswith("--", i):
            nl = buffer.find("\n", i)
            i = len(buffer) if nl < 0 else nl
            continue
        elif ch == ";":
            stmt = buffer[start:i + 1].strip()
            if stmt.strip(";").strip():
                done.append(stmt)
            start = i + 1
        i += 1
    return done, buffer[start:]


def repl(con: duckdb.DuckDBPyConnection, fmt: str, stdin: TextIO | None = None, interactive: bool | None = None) -> int:
    """Statements from stdin, each answered (or its error printed as one line) in turn; on a terminal, with
    prompts. Exit status 1 when any statement failed."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty() if interactive is None else interactive
    failed, rest = False, ""

    def run(statements: list[str]) -> None:
        nonlocal failed
        for stmt in statements:
            try:
                print_result(*analytics.run_sql(con, stmt), fmt)
            except QueryError as exc:
                print(f"embedlib: error: {exc}", file=sys.stderr)
                failed = True

    while True:
        if interactive:
            try:
                line = input(MORE if rest.strip() else PROMPT) + "\n"
            except EOFError:
                line = ""
        else:
            line = stdin.readline()
        if line == "":  # end of input: the last statement needs no ';'
            if rest.strip():
                statements, left = split_statements(rest + ";")
                run(statements)
                if left.strip() or not statements:
                    print("embedlib: error: unterminated statement at the end of the input", file=sys.stderr)
                    failed = True
            break
        command = line.strip()
        if not rest.strip() and command.startswith("."):
            if command in (".quit", ".exit"):
                break
            if command == ".tables":
                print_result(*analytics.ask(con, "tables"), fmt)
            else:
                print(f"embedlib: error: unknown command {command} (.tables, .quit)", file=sys.stderr)
                failed = True
            continue
        statements, rest = split_statements(rest + line)
        run(statements)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        con = open_connection(args)
        try:
            if args.command == "shell" or (args.command == "sql" and args.statement in (None, "-")):
                return repl(con, args.format)
            print_result(*answer(con, args), args.format)
        finally:
            con.close()
    except QueryError as exc:
        print(f"embedlib: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `embedlib ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


def console_main() -> None:
    """Entry point of the `embedlib` console script."""
    sys.exit(main())
