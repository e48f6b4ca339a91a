"""`embedlib serve` over plain HTTP: every route answers on a real root (tests/explained_root.py) served by uvicorn
as the command serves it; bad input (unknown or malformed sha256, path traversal in every parameter, oversized
or malformed uploads) is a clear one-line page with the right status; hostile file names are rendered escaped;
the page never writes to the root; it follows the root when a run commits."""

from __future__ import annotations

import dataclasses
import http.client
import os
import re
import subprocess
import sys
import time
from urllib.parse import quote, urlencode, urlsplit

import pytest
from explained_root import NOT_UTF8, build, running

from embedlib import pipeline, query
from embedlib.config import Config, InputConfig, ServeConfig
from embedlib.query.serve import Site

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def real(tmp_path_factory, system_files):
    return build(str(tmp_path_factory.mktemp("served")), system_files)


@pytest.fixture(scope="module")
def site(real):
    return Site(real.root, dataclasses.replace(ServeConfig(), max_upload_bytes=2_000_000))


@pytest.fixture(scope="module")
def url(site):
    with running(site) as base:
        yield base


@pytest.fixture(scope="module")
def shas(real):
    con = query.connect(real.root)
    out = dict(con.execute("SELECT path, sha256 FROM embeddings").fetchall())
    con.close()
    return out


def request(base: str, method: str, target: str, body=None, headers=None) -> tuple[int, dict, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=body is not None
                     and not isinstance(body, bytes))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(base: str, target: str) -> tuple[int, dict, str]:
    status, headers, body = request(base, "GET", target)
    return status, headers, body.decode("utf-8", "replace")


def multipart(data: bytes, filename: str = "sample.bin", field: str = "file") -> tuple[bytes, dict]:
    boundary = "----embedlib-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def root_state(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            st = os.stat(os.path.join(folder, n))
            out[os.path.join(folder, n)] = (st.st_size, st.st_mtime_ns)
    return out


def test_every_route_answers(real, url, shas):
    before = root_state(real.root)
    a = shas[real.files[0].path]
    b = next(s for p, s in shas.items() if p == real.files[1].path)
    fam = real.files[0].family
    status, headers, body = get(url, "/")
    assert status == 200 and 'id="search"' in body and 'id="upload"' in body
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers[
        "content-security-policy"]
    status, headers, _ = get(url, "/?" + urlencode({"q": a.upper()}))
    assert status == 303 and headers["location"] == f"/file?sha256={a}"
    status, headers, _ = get(url, "/?" + urlencode({"q": real.files[0].path}))
    assert status == 303 and headers["location"] == f"/file?sha256={a}"
    status, _, body = get(url, "/?" + urlencode({"q": "/usr/"}))
    assert status == 200 and 'id="matches"' in body and body.count("/file?sha256=") >= len(real.files)
    status, _, body = get(url, f"/file?sha256={a}")
    assert status == 200 and 'id="neighbours"' in body and 'id="evidence"' in body
    assert body.count('class="item"') > 0, "no shared evidence with any neighbour"
    assert f"/explain?a={a}&amp;b=" in body and f"/family?name={quote(fam)}" in body
    status, _, body = get(url, f"/explain?a={a}&b={b}")
    assert status == 200 and 'id="explain"' in body and "<td>both</td>" in body
    status, _, body = get(url, "/family?" + urlencode({"name": fam}))
    assert status == 200 and all(f'id="{t}"' in body for t in ("profile", "family-neighbours", "family-files"))
    for path, marker in (("/families", 'id="families"'), ("/runs", 'id="runs"'), ("/errors", 'id="errors_list"')):
        status, _, body = get(url, path)
        assert status == 200 and marker in body, path
    status, headers, png = request(url, "GET", f"/byteplot.png?sha256={a}")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert root_state(real.root) == before  # read-only


def test_upload_finds_the_files_it_is_near(real, url, shas):
    data = open(real.files[2].path, "rb").read()
    body, headers = multipart(data, filename='<b>"x".bin')
    status, _, page = request(url, "POST", "/upload", body, headers)
    page = page.decode()
    assert status == 200, page[-500:]
    assert 'id="neighbours"' in page and "data:image/png;base64," in page
    assert "&lt;b&gt;&quot;x&quot;.bin" in page and '<b>"x"' not in page
    # its own content is in the table: the nearest row is itself, at distance ~0
    first = re.search(r'<tbody><tr><td>1</td><td>([0-9.]+)</td>', page)
    assert first and float(first.group(1)) < 1e-3
    assert shas[real.files[2].path] in page and 'class="item"' in page


@pytest.mark.parametrize("target, status, message", [
    ("/file?sha256=" + "ab" * 32, 404, "unknown sha256 " + "ab" * 32),
    ("/?q=" + "cd" * 32, 404, "unknown sha256 " + "cd" * 32),
    ("/file?sha256=xyz", 400, "malformed sha256 &#x27;xyz&#x27;"),
    ("/file", 400, "malformed sha256 nothing"),
    ("/explain?a=" + "ab" * 32, 400, "malformed sha256 nothing"),
    ("/family?name=no-such-family", 404, "unknown family &#x27;no-such-family&#x27;"),
    ("/family", 400, "give a family"),
    ("/?q=no-such-path-anywhere", 404, "no embedded file"),
    ("/nowhere", 404, "no such page: /nowhere"),
    ("/upload", 405, ""),
])
def test_bad_requests_are_one_clear_line(url, target, status, message):
    got, headers, body = get(url, target)
    assert got == status, body[-300:]
    assert message in body and "Traceback" not in body


TRAVERSALS = ["../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "....//....//etc/passwd",
              "%2e%2e/%2e%2e/etc/passwd", "..\\..\\etc\\passwd", "\x00/etc/passwd"]


@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_path_traversal_in_any_parameter_reads_nothing(url, attempt):
    for target in (f"/file?sha256={quote(attempt)}", f"/byteplot.png?sha256={quote(attempt)}",
                   f"/explain?a={quote(attempt)}&b={quote(attempt)}", f"/family?name={quote(attempt)}",
                   f"/?q={quote(attempt)}", "/" + quote(attempt, safe="/%"), f"/static/{quote(attempt, safe='/%')}"):
        status, _, body = get(url, target)
        assert status in (400, 404), (target, status)
        assert "root:x:0:0" not in body and "Traceback" not in body, target


def test_uploads_are_bounded_and_checked(real, url):
    big = os.urandom(2_000_001)
    body, headers = multipart(big)
    status, _, page = request(url, "POST", "/upload", body, headers)
    assert status == 413 and b"larger than the limit of 2000000 bytes" in page
    # without a Content-Length (chunked), refused while it streams in
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    status, _, page = request(url, "POST", "/upload", chunks, headers)
    assert status == 413 and b"larger than the limit" in page
    for raw, hdrs, message in (
            (b"not a form", {"Content-Type": "application/octet-stream"}, b"multipart/form-data"),
            (*multipart(b""), b"the uploaded file is empty"),
            (*multipart(b"abc", field="other"), b"no file named"),
            (b"--x\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=y"}, b"")):
        status, _, page = request(url, "POST", "/upload", raw, hdrs)
        assert status == 400 and message in page and b"Traceback" not in page, page[-300:]


def test_hostile_names_are_rendered_escaped(real, url, shas):
    for path in real.hostile:
        sha = shas[path]
        for target in (f"/file?sha256={sha}", "/?q=" + quote("src/"), "/family?" + urlencode({"name": real.files[0].family})):
            status, _, body = get(url, target)
            assert status == 200, target
            assert "<script>" not in body and "<img src=x" not in body, target
        status, _, body = get(url, f"/file?sha256={sha}")
        assert "&lt;script&gt;" in body or "&lt;img src=x onerror=alert(1)&gt;" in body
        assert "&amp;amp;" in body or "&lt;\\script&gt;" in body
    odd = next(s for p, s in shas.items() if p.endswith(r"caf\xe9-\xff.bin"))
    status, _, body = get(url, f"/file?sha256={odd}")
    assert status == 200 and r"caf\xe9-\xff.bin" in body
    status, headers, png = request(url, "GET", f"/byteplot.png?sha256={odd}")  # read by its exact bytes
    assert status == 200 and png.startswith(b"\x89PNG"), png[:200]
    assert NOT_UTF8


def test_a_file_changed_since_it_was_embedded_gets_no_byteplot(real, tmp_path, system_files):
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(real.files[3].path, src / "victim")
    cfg = Config(input=InputConfig(shard_size=16))
    root = str(tmp_path / "root")
    pipeline.embed_files(real.model, str(src), root, cfg, progress=False)
    sha = query.connect(root).execute("SELECT sha256 FROM embeddings").fetchone()[0]
    with open(src / "victim", "ab") as fh:
        fh.write(b"changed")
    with running(Site(root)) as base:
        status, _, body = request(base, "GET", f"/byteplot.png?sha256={sha}")
        assert status == 404 and b"has changed since it was embedded" in body
        # the page follows the root: a new run's file is found without restarting
        status, _, _ = get(base, "/?" + urlencode({"q": real.files[4].path}))
        assert status == 404
        shutil.copyfile(real.files[4].path, src / "newcomer")
        pipeline.embed_files(real.model, str(src), root, cfg, progress=False)
        status, headers, _ = get(base, "/?" + urlencode({"q": str(src / "newcomer")}))
        assert status == 303, "the page did not see the run committed after it started"


def test_the_command_serves_and_refuses_bad_roots(real, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "serve", "--root", str(tmp_path / "missing")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "serve", "--root", real.root, "--port", "70000"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--port must be between" in proc.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "jobs.query", "serve", "--root", real.root, "--port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith(f"embedlib serve: http://127.0.0.1:{port}/"), line
        for _ in range(100):
            try:
                status, _, body = get(f"http://127.0.0.1:{port}", "/runs")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and 'id="runs"' in body
    finally:
        server.terminate()
        server.wait(30)
