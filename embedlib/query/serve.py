"""`embedlib serve --root R [--port P] [--host H]`: a read-only web page over an output root, for analysts.

  /?q=<sha256 or path>   a file's page (a path that matches none exactly lists the paths that contain it)
  /file?sha256=X         the file, its byteplot and evidence; its neighbours with distances, families, byteplots and
                         the evidence each shares with it (similar(..., shared := true)), each with a link to
  /explain?a=X&b=Y       why two files are near (explain(a, b))
  /family?name=F         its files, its characteristic words (family_profile), where its neighbours are
  /families /runs /errors   the family counts, the runs and the errors tables
  /byteplot.png?sha256=X the file's byteplot, from its bytes (read through embedlib.files.sources, bounded)
  POST /upload           a file embedded with the root's current model (the checkpoint the latest run recorded, as
                         `embedlib similar --file` does) and its neighbours, with shared evidence

Read-only: the page never writes to the root, never executes a file, never opens a path a request names (a
byteplot reads the `location` the table recorded for a sha256, and checks the bytes still hash to it). An
upload is held in memory, bounded by ServeConfig.max_upload_bytes while it is received (larger: 413); the
multipart parser spools a large part to the temporary folder, never elsewhere. Every value is escaped
(pages.py) and a Content-Security-Policy forbids scripts. Binds 127.0.0.1 unless told otherwise.

Starlette (ASGI) on uvicorn. Handlers are plain functions run in a thread pool; the DuckDB connection is used
under one lock, and reopened when the root gains a commit (a new run, neighbours, a compaction), so the page
shows what is committed now, not a snapshot.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import re
import sys
import threading
from typing import Any, Callable

import duckdb

from embedlib.config import EmbedConfig, InputConfig, ServeConfig
from embedlib.query import analytics, pages
from embedlib.query.connect import connect
from embedlib.query.errors import QueryError
from embedlib.query.layout import open_root

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class NotFound(QueryError):
    pass


class TooLarge(QueryError):
    pass


class Site:
    """What the handlers share: the root, its DuckDB connection (reopened when the root gains a commit), the
    embedder of uploads (loaded on the first upload)."""

    def __init__(self, root: str, cfg: ServeConfig | None = None, labels: str | None = None) -> None:
        self.root = root
        self.cfg = cfg or ServeConfig()
        self.labels = labels
        self.store = open_root(root)
        self.lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._seen: tuple | None = None
        self._embedder: Any = None
        with self.lock:
            self._connection()  # a root that cannot be opened is one line now, not on the first request

    def _state(self) -> tuple:
        """Changes whenever a commit lands: a run's runs row, a commit record (neighbours, compaction)."""
        return tuple(sorted(self.store.listdir("runs"))), tuple(sorted(self.store.listdir("commits")))

    def _connection(self) -> duckdb.DuckDBPyConnection:
        state = self._state()
        if self._con is None or state != self._seen:
            if self._con is not None:
                self._con.close()
            self._con = connect(self.root, labels=self.labels)
            self._seen = state
        return self._con

    def query(self, fn: Callable[..., analytics.Result], *args: Any, **kw: Any) -> analytics.Result:
        with self.lock:
            return fn(self._connection(), *args, **kw)

    def ask(self, name: str, **params: Any) -> analytics.Result:
        return self.query(analytics.ask, name, **params)

    def one(self, name: str, **params: Any) -> dict | None:
        cols, rows = self.ask(name, **params)
        return dict(zip(cols, rows[0])) if rows else None

    # -- uploads ------------------------------------------------------------------------------------------------

    def embedder(self):
        """(Embedder of the checkpoint the latest run recorded, that run's read settings, its embed settings)."""
        with self.lock:
            if self._embedder is None:
                from embedlib.model.embedder import Embedder

                _, rows = analytics.ask(self._connection(), "latest_run_config")
                config = json.loads(rows[0][0]) if rows and rows[0][0] else {}
                model = config.get("model")
                if not model:
                    raise QueryError("the runs table does not say which model embedded them: uploads need it")
                try:
                    embedder = Embedder(model, device="cpu")
                except (OSError, ValueError) as exc:
                    raise QueryError(f"cannot load the model {model!r} the latest run recorded: {exc}") from exc
                read = (InputConfig(**config["input"]) if isinstance(config.get("input"), dict)
                        else embedder.config.input)
                embed = EmbedConfig(**config["embed"]) if isinstance(config.get("embed"), dict) else EmbedConfig()
                self._embedder = (embedder, read, embed)
            return self._embedder

    def embed_upload(self, data: bytes) -> dict:
        """An uploaded file's sha256, format, byteplot, evidence, and its neighbours with shared evidence."""
        from embedlib import views
        from embedlib.files.sources import SNIFF_BYTES, sniff_format
        from embedlib.views import raster
        from embedlib.views.evidence import views_with_evidence

        if not data:
            raise QueryError("the uploaded file is empty")
        embedder, read, embed = self.embedder()
        cfg = dataclasses.replace(embedder.config, input=read, embed=embed)
        kept = data[: read.max_bytes]
        file_views, evidence = views_with_evidence(kept, cfg, embedder.model.evidence_weights(),
                                                   embed.evidence_items, embed.evidence_chars)
        vector = embedder.embed_views(views.stack([file_views], cfg))[0]
        cols, rows = self.query(analytics.similar_to_vector, vector.tolist(), self.cfg.neighbors,
                                from_version=embedder.version)
        shas = [r[cols.index("sha256")] for r in rows]
        _, shared = self.ask("evidence_shared", evidence=evidence, sha256s=shas, n=self.cfg.shared_items)
        by_sha = dict(shared)
        cols = cols + ["shared"]
        rows = [tuple(r) + (by_sha.get(r[cols.index("sha256")]) if evidence else None,) for r in rows]
        plot = raster.to_png(raster.to_image(kept[: self.cfg.byteplot_max_bytes], self.cfg.byteplot_size))
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                "format": sniff_format(data[:SNIFF_BYTES]),
                "truncated": len(data) > read.max_bytes, "evidence": evidence, "columns": cols, "rows": rows,
                "png": plot, "model_version": embedder.version}

    # -- byteplots ----------------------------------------------------------------------------------------------

    def byteplot_png(self, sha256: str) -> bytes:
        """The byteplot of the file the table recorded for `sha256`, read from its recorded location (bounded),
        after checking that its bytes still hash to it."""
        from embedlib.files.sources import read_file, uri_protocol
        from embedlib.views import raster

        row = self.file_row(sha256)
        target = row["location"] or (row["path_raw"] or row["path"].encode("utf-8", "surrogateescape"))
        remote = uri_protocol(target.decode("utf-8", "surrogateescape")) not in (None, "file")
        cfg = InputConfig(max_bytes=self.cfg.byteplot_max_bytes)
        read = read_file(target, remote, cfg, hash_all=True)
        if not read.ok:
            raise NotFound(f"the file of sha256 {row['sha256']} cannot be read now: {read.status} ({read.reason})")
        if read.sha256 != row["sha256"]:
            raise NotFound(f"the file recorded for sha256 {row['sha256']} has changed since it was embedded")
        return raster.to_png(raster.to_image(read.data, self.cfg.byteplot_size))

    def file_row(self, sha256: str) -> dict:
        checked_sha256(sha256)
        row = self.one("file", sha256=sha256)
        if row is None:
            raise NotFound(f"unknown sha256 {sha256.lower()}: no such file in embeddings")
        return row


def checked_sha256(value: str | None) -> str:
    if value is None or not SHA256.fullmatch(value):
        shown = "nothing" if value is None else repr(value[:80])
        raise QueryError(f"malformed sha256 {shown}: expected 64 hex digits")
    return value.lower()


# -- pages ------------------------------------------------------------------------------------------------------

def search_page(site: Site, q: str | None) -> tuple[str, str | None]:
    """(body, redirect target): a sha256 or an exact path goes to the file's page; else the paths containing q."""
    body = pages.search_forms(q)
    if not q:
        return body + "<p>Search by sha256 or path, or upload a file to find the files it is near.</p>", None
    q = q.strip()
    if SHA256.fullmatch(q):
        site.file_row(q)  # unknown: one line, 404
        return "", "/file?sha256=" + q.lower()
    cols, rows = site.ask("find_path", path=q, k=200)
    if len(rows) == 1 and rows[0][1] == q:
        return "", "/file?sha256=" + rows[0][0]
    if not rows:
        raise NotFound(f"no embedded file's path is or contains {q!r}")
    return body + pages.table(["path", "sha256"], [(r[1], r[0]) for r in rows],
                              cell=lambda c, v, r: pages.link(v, "/file", sha256=r[1]) if c == "path" else pages.e(v),
                              table_id="matches"), None


def file_page(site: Site, sha256: str) -> tuple[str, str]:
    row = site.file_row(sha256)
    sha = row["sha256"]
    evidence = site.one("evidence_of", sha256=sha)
    cols, rows = site.query(analytics.similar, sha, site.cfg.neighbors, shared=True)
    body = (pages.search_forms() + '<div class="side"><div>' + pages.byteplot(sha) + "</div><div>"
            + pages.file_header(row) + "</div></div><h2>Nearest files</h2>" + pages.neighbours(sha, cols, rows)
            + "<h2>Its most distinctive items (evidence)</h2>"
            + pages.evidence_table(evidence["evidence"] if evidence else None))
    return row["path"], body


def explain_page(site: Site, a: str, b: str) -> str:
    ra, rb = site.file_row(a), site.file_row(b)
    cols, rows = site.query(analytics.explain_pair, ra["sha256"], rb["sha256"], 30)
    head = "".join(f"<p><b>{side}</b>: {pages.link(r['path'], '/file', sha256=r['sha256'])} "
                   f"({pages.e(r['family'] or 'unlabelled')})</p>" for side, r in (("a", ra), ("b", rb)))
    plots = f'<div class="side">{pages.byteplot(ra["sha256"])}{pages.byteplot(rb["sha256"])}</div>'
    note = ("<p>side <i>both</i>: items both files keep, by contribution (weight_a x weight_b: what the item adds "
            "to their TF-IDF cosine); <i>a</i>, <i>b</i>: the heaviest items only one of them keeps.</p>")
    return head + plots + note + pages.table(cols, rows, table_id="explain")


def family_page(site: Site, name: str) -> str:
    cols, files = site.ask("family_files", family=name, k=site.cfg.family_files)
    if not files:
        raise NotFound(f"unknown family {name!r}: no file of the current model version has it")
    capped = f" (the first {site.cfg.family_files})" if len(files) == site.cfg.family_files else ""
    parts = [f"<p>{len(files)} file(s){capped}</p>"]
    for title, fn, table_id in (("Characteristic items", analytics.family_profile, "profile"),
                                ("Where its files' neighbours are", analytics.family_neighbors, "family-neighbours")):
        parts.append(f"<h2>{title}</h2>")
        try:
            c, r = site.query(fn, name)
            parts.append(pages.table(c, r, table_id=table_id, cell=_family_cell))
        except QueryError as exc:
            parts.append(pages.error(str(exc)))
    parts.append("<h2>Files</h2>")
    parts.append(pages.table(cols, files, table_id="family-files",
                             cell=lambda c, v, r: pages.link(v, "/file", sha256=r[0]) if c == "path" else pages.e(v)))
    return "".join(parts)


def _family_cell(column: str, value: Any, row: tuple) -> str:
    if column == "family" and value and value != "(unlabelled)":
        return pages.link(value, "/family", name=value)
    return pages.e(f"{value:.4f}" if isinstance(value, float) else value)


def upload_page(site: Site, data: bytes, name: str | None) -> str:
    got = site.embed_upload(data)
    png = base64.b64encode(got["png"]).decode()
    facts = (f"<table><tr><th>name</th><td class=\"mono\">{pages.e(name)}</td></tr>"
             f"<tr><th>sha256</th><td class=\"mono\">{pages.e(got['sha256'])}</td></tr>"
             f"<tr><th>size</th><td>{got['size']}</td></tr><tr><th>format</th><td>{pages.e(got['format'])}</td></tr>"
             f"<tr><th>truncated</th><td>{got['truncated']}</td></tr>"
             f"<tr><th>model version</th><td>{pages.e(got['model_version'])}</td></tr></table>")
    return (pages.search_forms()
            + f'<div class="side"><img class="plot" alt="byteplot" src="data:image/png;base64,{png}">'
            + facts + "</div><p>Held in memory only: not stored, not added to the root.</p><h2>Nearest files</h2>"
            + pages.neighbours(None, got["columns"], got["rows"]) + "<h2>Its most distinctive items</h2>"
            + pages.evidence_table(got["evidence"]))


def table_page(site: Site, sections: list[tuple[str, str, dict]]) -> str:
    out = []
    for title, name, params in sections:
        cols, rows = site.ask(name, **params)
        out.append(f"<h2>{pages.e(title)}</h2>" + pages.table(cols, rows, cell=_family_cell, table_id=name))
    return "".join(out)


# -- the application --------------------------------------------------------------------------------------------

def status_of(exc: QueryError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    text = str(exc)
    if isinstance(exc, NotFound) or text.startswith(("unknown ", "no embedded", "sha256 ")):
        return 404
    return 400


def build_app(site: Site):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    def html(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(pages.page(title, body, site.root), status_code=status, headers=SECURITY_HEADERS)

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        def run(request: Request):
            try:
                return handler(request)
            except QueryError as exc:
                return html("Not found" if status_of(exc) == 404 else "Cannot answer",
                            pages.search_forms() + pages.error(str(exc)), status_of(exc))
        return run

    @guarded
    def index(request: Request):
        body, target = search_page(site, request.query_params.get("q"))
        return RedirectResponse(target, status_code=303) if target else html("Search", body)

    @guarded
    def file(request: Request):
        title, body = file_page(site, checked_sha256(request.query_params.get("sha256")))
        return html(title, body)

    @guarded
    def explain(request: Request):
        a, b = (checked_sha256(request.query_params.get(k)) for k in ("a", "b"))
        return html("Why are these two near?", explain_page(site, a, b))

    @guarded
    def family(request: Request):
        name = request.query_params.get("name")
        if not name:
            raise QueryError("give a family: /family?name=FAMILY")
        return html(f"Family {name}", family_page(site, name))

    @guarded
    def families(request: Request):
        return html("Families", table_page(site, [("Files per family", "families", {"k": 100000})]))

    @guarded
    def runs(request: Request):
        return html("Runs", table_page(site, [("Every finished run", "runs", {})]))

    @guarded
    def errors(request: Request):
        return html("Errors", table_page(site, [("Files not embedded, by reason", "errors", {"run": None}),
                                               ("The error rows (newest run first)", "errors_list",
                                                {"k": site.cfg.errors})]))

    def byteplot(request: Request):
        try:
            png = site.byteplot_png(checked_sha256(request.query_params.get("sha256")))
        except QueryError as exc:
            return Response(str(exc), status_code=status_of(exc), media_type="text/plain; charset=utf-8",
                            headers=SECURITY_HEADERS)
        return Response(png, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    async def upload(request: Request):
        from starlette.concurrency import run_in_threadpool

        try:
            data, name = await received_upload(request, site.cfg.max_upload_bytes)
            body = await run_in_threadpool(upload_page, site, data, name)
        except QueryError as exc:
            return html("Cannot answer", pages.search_forms() + pages.error(str(exc)), status_of(exc))
        return html("Uploaded file", body)

    routes = [Route("/", index), Route("/file", file), Route("/explain", explain), Route("/family", family),
              Route("/families", families), Route("/runs", runs), Route("/errors", errors),
              Route("/byteplot.png", byteplot), Route("/upload", upload, methods=["POST"])]
    app = Starlette(routes=routes)

    async def not_found(request, exc):
        code = getattr(exc, "status_code", 404)
        return html("Not found" if code == 404 else "Cannot answer",
                    pages.error(f"no such page: {request.url.path}" if code == 404 else str(exc.detail)), code)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    return app


async def received_upload(request, limit: int) -> tuple[bytes, str | None]:
    """The one file of a multipart form, refused (TooLarge) as soon as the request body passes `limit` bytes
    plus room for the form's own headers: it is never held, or spooled, whole."""
    from starlette.formparsers import MultiPartParser

    declared = request.headers.get("content-length")
    room = limit + 64 * 1024
    too_large = TooLarge(f"the upload is larger than the limit of {limit} bytes (embedlib serve --max-upload-mb)")
    if declared is not None and declared.isdigit() and int(declared) > room:
        raise too_large
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise QueryError("upload a file as multipart/form-data (the page's form does)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > room:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4).parse()
    except Exception as exc:  # noqa: BLE001 - a malformed form is the client's: one line
        raise QueryError(f"the upload is not a valid multipart form: {exc}") from exc
    part = form.get("file")
    if part is None or isinstance(part, str):
        raise QueryError("the form has no file named 'file'")
    data = await part.read(limit + 1)
    await form.close()
    if len(data) > limit:
        raise too_large
    return data, part.filename


def main(args: argparse.Namespace) -> int:
    """Run the page until interrupted. Exit 1 with one line for a root that cannot be opened or a bad option."""
    import uvicorn

    root = args.root
    if not root:
        import os

        root = os.environ.get("EMBEDLIB_ROOT")
    try:
        if not root:
            raise QueryError("embedlib serve needs an output root: --root ROOT (or EMBEDLIB_ROOT)")
        if not 0 <= args.port <= 65535:
            raise QueryError(f"--port must be between 0 and 65535 (got {args.port})")
        cfg = ServeConfig()
        if args.max_upload_mb is not None:
            if not 0 < args.max_upload_mb <= 4096:
                raise QueryError("--max-upload-mb must be above 0 and at most 4096")
            cfg = dataclasses.replace(cfg, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
        site = Site(root, cfg, labels=args.labels)
    except QueryError as exc:
        print(f"embedlib: error: {exc}", file=sys.stderr)
        return 1
    print(f"embedlib serve: http://{args.host}:{args.port}/ over {root} (read-only; Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(build_app(site), host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        return 130
    return 0
