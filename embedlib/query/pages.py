"""The HTML of `embedlib serve`'s pages: pure functions from rows to text, server-rendered, no script, no CDN.

Every value that reaches the page goes through `e` (html.escape, quotes included) or `href` (a path of this
site with url-encoded parameters, then escaped): file names are hostile (markup, quotes, bytes that are not
UTF-8, which `path` already shows as \\xNN escapes). The site's Content-Security-Policy (serve.py) forbids
scripts anyway, so a value that escaped escaping still could not run.
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence
from urllib.parse import urlencode

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
nav { padding: .6em 0; border-bottom: 1px solid #ccc; margin-bottom: 1em; }
nav a { margin-right: 1.2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
img.plot { image-rendering: pixelated; width: 128px; height: 128px; border: 1px solid #ccc; }
img.thumb { image-rendering: pixelated; width: 48px; height: 48px; border: 1px solid #ccc; }
.item { display: inline-block; background: #eef3fb; border-radius: 3px; padding: 0 4px; margin: 1px 2px;
        font-family: ui-monospace, monospace; font-size: 12px; }
.error { color: #a00; font-weight: bold; }
.side { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
form { margin: .5em 0; }
"""


def e(value: Any) -> str:
    """A value as HTML text: markup and quotes escaped; None as an empty cell."""
    return "" if value is None else html.escape(str(value), quote=True)


def href(path: str, **params: Any) -> str:
    """A link of this site (`path` is one of ours, never user text) with url-encoded parameters, escaped for an
    attribute."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return e(path + ("?" + query if query else ""))


def link(text: Any, path: str, **params: Any) -> str:
    return f'<a href="{href(path, **params)}">{e(text)}</a>'


def page(title: str, body: str, root: str) -> str:
    nav = " ".join([link("Search", "/"), link("Families", "/families"), link("Runs", "/runs"),
                    link("Errors", "/errors")])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)} - embedlib</title>'
            f'<style>{STYLE}</style></head><body><nav>{nav} <span class="mono">root: {e(root)}</span></nav>'
            f"<h1>{e(title)}</h1>{body}</body></html>")


def search_forms(q: str | None = None) -> str:
    return (f'<form method="get" action="/" id="search"><input name="q" size="70" value="{e(q)}" '
            'placeholder="sha256 or path (or part of a path)"> <button type="submit">Search</button></form>'
            '<form method="post" action="/upload" enctype="multipart/form-data" id="upload">'
            '<input type="file" name="file"> <button type="submit">Find files like this one</button></form>')


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], cell=None, table_id: str | None = None) -> str:
    """An HTML table; `cell(column, value, row)` returns a cell's inner HTML (default: the value, escaped)."""
    cell = cell or (lambda c, v, r: e(_fmt(v)))
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        tds = []
        for c, v in zip(columns, r):
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            tds.append(f"<td{cls}>{cell(c, v, r)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    ident = f' id="{e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v: Any) -> Any:
    return f"{v:.4f}" if isinstance(v, float) else v


def items(texts: Sequence[str] | None) -> str:
    """Evidence items as labels (None: no evidence kept for one of the files)."""
    if texts is None:
        return '<span title="one of the files has no evidence">-</span>'
    return "".join(f'<span class="item">{e(t)}</span>' for t in texts)


def byteplot(sha256: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="byteplot" src="{href("/byteplot.png", sha256=sha256)}">'


def error(message: str) -> str:
    return f'<p class="error">{e(message)}</p>'


def file_header(row: dict) -> str:
    fam = link(row["family"], "/family", name=row["family"]) if row.get("family") else "(unlabelled)"
    facts = [("sha256", f'<span class="mono">{e(row["sha256"])}</span>'),
             ("path", f'<span class="mono">{e(row["path"])}</span>'),
             ("family", fam), ("format", e(row["format"])), ("size", e(row["size_bytes"])),
             ("truncated", e(row["truncated"])), ("run", e(row["run_id"])), ("model version", e(row["model_version"]))]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"


def neighbours(sha256: str | None, columns: list[str], rows: list[tuple]) -> str:
    """The neighbours table: rank, distance, byteplot, path (to its page), family (to its page), the evidence it
    shares with the file, and a link to the full explanation (when the file is in the table)."""
    shown = ["rank", "distance", "byteplot", "path", "family", "shared evidence"] + (["why"] if sha256 else [])
    index = {c: i for i, c in enumerate(columns)}
    out = []
    for r in rows:
        nb = r[index["sha256"]]
        fam = r[index["family"]]
        cells = [e(r[index["rank"]]), e(_fmt(r[index["distance"]])), byteplot(nb, "thumb"),
                 link(r[index["path"]], "/file", sha256=nb),
                 link(fam, "/family", name=fam) if fam else "(unlabelled)",
                 items(r[index["shared"]]) if "shared" in index else ""]
        if sha256:
            cells.append(link("explain", "/explain", a=sha256, b=nb))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{e(c)}</th>" for c in shown)
    return f'<table id="neighbours"><thead><tr>{head}</tr></thead><tbody>{"".join(out)}</tbody></table>'


def evidence_table(evidence: list[dict] | None, top: int = 24) -> str:
    if not evidence:
        return "<p>No evidence kept for this file (embedded before evidence was kept).</p>"
    rows = [(x["item"], x["kind"], x["weight"]) for x in evidence[:top]]
    return table(["item", "kind", "weight"], rows, table_id="evidence")
