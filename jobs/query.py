"""Query an embedding run with DuckDB: nearest executables, family counts, errors, near-duplicates, any SQL.

  python -m jobs.query --run runs/embeddings similar --sha256 <sha256> -k 10
  python -m jobs.query --run runs/embeddings similar --file /usr/bin/ls -k 10      # embeds the file first
  python -m jobs.query --run runs/embeddings families
  python -m jobs.query --run runs/embeddings sql "SELECT format, count(*) FROM embeddings GROUP BY 1"
  python -m jobs.query --run runs/embeddings --database runs/embedlib.duckdb sql "..."  # views kept in a file

Views: `embeddings` (embedding as FLOAT[D]) and `errors`. Output: aligned table, or --format csv|json.
"""

from __future__ import annotations

import argparse
import json
import sys

from embedlib import query


def _run_info(run: str) -> dict:
    """The settings of the latest finished run in the output root (its model, its input settings)."""
    from embedlib.pipeline import catalog
    from embedlib.pipeline.store import Store

    runs = catalog.read_runs(Store(run)).sort_by("run_id").to_pylist()
    if not runs:
        raise SystemExit(f"{run} has no finished run")
    return json.loads(runs[-1]["config"])


def embed_file(path: str, run: str, model_uri: str | None = None) -> list[float]:
    """Embed one file exactly as the run did: its model and its input settings (read bound, truncation)."""
    from embedlib.config import InputConfig
    from embedlib.embedder import Embedder

    info = _run_info(run)
    try:
        embedder = Embedder(model_uri or info["model"], device="cpu")
        return embedder.embed_path(path, InputConfig(**info["input"])).tolist()
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="output folder of jobs.embed (local or fsspec URI)")
    parser.add_argument("--database", default=":memory:", help="DuckDB file to keep the views in (default: memory)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("similar", help="k nearest executables by cosine distance")
    which = sim.add_mutually_exclusive_group(required=True)
    which.add_argument("--sha256")
    which.add_argument("--file", help="a file to embed with the run's model, then search")
    sim.add_argument("-k", type=int, default=10)
    sim.add_argument("--model", help="checkpoint for --file (default: the model recorded in the run)")
    fam = sub.add_parser("families", help="files per family")
    fam.add_argument("-k", type=int, default=30)
    sub.add_parser("errors", help="files that produced no embedding, by status")
    dup = sub.add_parser("near-dupes", help="pairs of distinct files with nearly identical embeddings")
    dup.add_argument("--max-distance", type=float, default=0.001)
    dup.add_argument("-k", type=int, default=50)
    sql = sub.add_parser("sql", help="any SQL over the views")
    sql.add_argument("statement")
    return parser


def run_command(args: argparse.Namespace) -> tuple[list[str], list[tuple]]:
    con = query.connect(args.run, args.database)
    try:
        if args.command == "similar" and args.sha256:
            return query.similar_to_sha256(con, args.sha256.lower(), args.k)
        if args.command == "similar":
            vector = embed_file(args.file, args.run, args.model)
            return query.similar_to_vector(con, vector, args.k)
        if args.command == "families":
            return query.run(con, "family_counts", {"k": args.k})
        if args.command == "errors":
            return query.run(con, "error_counts")
        if args.command == "near-dupes":
            return query.run(con, "near_duplicates", {"max_distance": args.max_distance, "k": args.k})
        return query.run_sql(con, args.statement)
    finally:
        con.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    columns, rows = run_command(args)
    print(query.format_rows(columns, rows, args.format))
    if args.format == "table":
        print(f"({len(rows)} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
