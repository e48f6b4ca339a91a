"""Inputs are taken exactly as given: manifest cells are text, paths are paths, every row ends in a row."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import schema

from embedlib.files import inputs


def _listing(text: str, glob: bool = False) -> list[dict]:
    return list(inputs.iter_listing(inputs.check_input(text, glob)))


def test_csv_cells_are_text_never_type_inferred(tmp_path):
    names = ["007", "1.50", "1e3", " padded ", 'quo"ted, with comma', "ünïcødé €", "-rf", "nan", "true"]
    for name in names:
        (tmp_path / name).write_bytes(b"x" + name.encode())
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "family"])
        for i, name in enumerate(names):
            w.writerow([name, ["0042", "1.0", "", "NULL", "3e5", "x", "-1", "NaN", "false"][i]])
    rows = _listing(str(manifest))
    assert [r["path"] for r in rows] == names  # byte for byte: no 7, 1.5, 1000, no stripping
    assert [r["family"] for r in rows] == ["0042", "1.0", None, "NULL", "3e5", "x", "-1", "NaN", "false"]
    for r, name in zip(rows, names):  # relative paths are relative to the manifest's folder
        assert r["target"] == os.fsencode(str(tmp_path / name)) and not r["remote"]


def test_parquet_manifest_keeps_text_and_binary_paths(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/bad\xffname"
    open(raw, "wb").write(b"data")
    pq.write_table(pa.table({"path": pa.array([raw, b"007"], pa.binary()),
                             "family": pa.array(["a", "1e3"])}), tmp_path / "m.parquet")
    rows = _listing(str(tmp_path / "m.parquet"))
    assert rows[0]["path_raw"] == raw and rows[0]["target"] == raw and rows[0]["path"].endswith("bad\\xffname")
    assert rows[1]["path"] == "007" and rows[1]["family"] == "1e3"


def test_empty_manifest_paths_become_error_rows(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,family\n/usr/bin/ls,coreutils\n,orphan\n"",\n')
    rows = _listing(str(manifest))
    assert [r.get("status") for r in rows] == [None, schema.STATUS_BAD_INPUT, schema.STATUS_BAD_INPUT]
    assert "row 2" in rows[1]["reason"] and rows[1]["family"] == "orphan"


def test_newlines_and_quotes_in_csv_paths(tmp_path):
    name = 'two\nlines "quoted"'
    (tmp_path / name).write_bytes(b"1")
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path"], [name]])
    assert [r["path"] for r in _listing(str(manifest))] == [name]


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("name,family\na,b\n", "no 'path' column"),
                                             ("", "no 'path' column")])
def test_bad_manifests_are_one_clear_error(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    if content is not None:
        manifest.write_text(content)
    with pytest.raises(inputs.InputError, match=message):
        inputs.check_input(str(manifest))


def test_local_paths_are_never_urls_or_patterns(tmp_path):
    root = tmp_path / "batch[1]"
    root.mkdir()
    (root / "alias").write_bytes(b"alias content")
    (root / "alias::file").write_bytes(b"other content")
    (root / "colon::bar").write_bytes(b"colon")
    (root / "-leading-dash").write_bytes(b"dash")
    (root / "star*?").write_bytes(b"star")
    raw = os.fsencode(str(root)) + b"/not-utf8-\xe9"
    open(raw, "wb").write(b"latin1")
    rows = _listing(str(root))  # a folder named batch[1] is walked, not globbed
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"alias", "alias::file", "colon::bar", "-leading-dash", "star*?", "not-utf8-\\xe9"}
    assert by_name["not-utf8-\\xe9"]["path_raw"] == raw and by_name["alias"]["path_raw"] is None
    assert open(by_name["alias::file"]["target"], "rb").read() == b"other content"


def test_directory_symlinks_are_listed_not_walked(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"1")
    os.symlink("..", tmp_path / "a" / "up")
    os.symlink(tmp_path / "a", tmp_path / "link-to-a")
    paths = sorted(r["path"] for r in _listing(str(tmp_path)))
    assert paths == sorted([str(tmp_path / "a" / "f"), str(tmp_path / "a" / "up"), str(tmp_path / "link-to-a")])


def test_glob_only_when_asked(tmp_path):
    for name in ("x1.exe", "x2.exe", "y.dll"):
        (tmp_path / name).write_bytes(b"1")
    with pytest.raises(inputs.InputError, match="does not exist"):
        inputs.check_input(str(tmp_path / "*.exe"))
    assert sorted(r["path"] for r in _listing(str(tmp_path / "*.exe"), glob=True)) == [
        str(tmp_path / "x1.exe"), str(tmp_path / "x2.exe")]


def test_read_labels_for_joins(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,family\n007,0042\n,x\n")
    labels = inputs.read_labels(str(manifest))
    assert labels.to_pylist() == [{"path": "007", "family": "0042"}]
    shutil.rmtree(tmp_path)


# ---- every manifest check that can fail happens in check_input (before the lock and before Ray) -------------

def test_a_csv_row_with_extra_fields_is_one_line_with_its_row_number(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,family\n/usr/bin/ls,a\n/usr/bin/cat,b,extra\n/usr/bin/cp,c\n")
    with pytest.raises(inputs.InputError) as info:
        inputs.check_input(str(manifest))
    message = str(info.value)
    assert "row 2" in message and "3 fields" in message and "\n" not in message


@pytest.mark.parametrize("column", [pa.array([1, 2], pa.int64()), pa.array([["a"], ["b"]], pa.list_(pa.string())),
                                    pa.array([1.5, 2.5])])
def test_a_parquet_path_that_is_not_text_is_refused_by_the_check(tmp_path, column):
    pq.write_table(pa.table({"path": column}), tmp_path / "m.parquet")
    with pytest.raises(inputs.InputError, match="column 'path' holds"):
        inputs.check_input(str(tmp_path / "m.parquet"))


def test_a_family_that_is_not_text_is_refused_by_the_check(tmp_path):
    pq.write_table(pa.table({"path": ["a"], "family": pa.array([[1]], pa.list_(pa.int64()))}), tmp_path / "m.parquet")
    with pytest.raises(inputs.InputError, match="column 'family' holds"):
        inputs.check_input(str(tmp_path / "m.parquet"))


def test_dictionary_encoded_text_is_text(tmp_path):
    pd = pytest.importorskip("pandas")
    for name in ("007", "b"):
        (tmp_path / name).write_bytes(b"x")
    frame = pd.DataFrame({"path": pd.Series(["007", "b", "007"], dtype="category"),
                          "family": pd.Series(["x", "y", "x"], dtype="category")})
    frame.to_parquet(tmp_path / "m.parquet")
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "m.parquet").field("path").type)
    rows = _listing(str(tmp_path / "m.parquet"))
    assert [(r["path"], r["family"]) for r in rows] == [("007", "x"), ("b", "y"), ("007", "x")]
    assert rows[0]["target"] == os.fsencode(str(tmp_path / "007"))


def test_a_corrupt_parquet_manifest_is_refused_by_the_check(tmp_path):
    pq.write_table(pa.table({"path": [f"/data/{i}" for i in range(50_000)]}), tmp_path / "m.parquet",
                   compression="none")
    data = bytearray((tmp_path / "m.parquet").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # a damaged page: the footer is intact
    (tmp_path / "m.parquet").write_bytes(bytes(data))
    with pytest.raises(inputs.InputError, match="cannot be read"):
        inputs.check_input(str(tmp_path / "m.parquet"))


# ---- globs are bounded and stay in the tree ---------------------------------------------------------------------

def _looping_tree(tmp_path):
    """A tree with two directory-link loops (following them never ends: 2^depth paths) and a link out of it."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "f.exe").write_bytes(b"in a")
    (tree / "a" / "b" / "g.exe").write_bytes(b"in b")
    (tree / "top.exe").write_bytes(b"top")
    os.symlink("..", tree / "a" / "up")
    os.symlink("../..", tree / "a" / "b" / "upup")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.exe").write_bytes(b"outside")
    os.symlink(outside, tree / "a" / "out")
    os.symlink(outside / "secret.exe", tree / "file-link.exe")
    return tree


def test_a_glob_over_symlink_loops_ends_and_never_leaves_the_tree(tmp_path):
    tree = _looping_tree(tmp_path)
    code = ("import sys; from embedlib.files import inputs; "
            "[print(r['path']) for r in inputs.iter_listing(inputs.check_input(sys.argv[1], glob=True))]")
    for pattern, want in [
        (f"{tree}/**", ["a/b/g.exe", "a/b/upup", "a/f.exe", "a/out", "a/up", "file-link.exe", "top.exe"]),
        (f"{tree}/**/*.exe", ["a/b/g.exe", "a/b/upup", "a/f.exe", "a/out", "a/up", "file-link.exe", "top.exe"]),
        (f"{tree}/*/*.exe", ["a/f.exe"]),
        (f"{tree}/a/*", ["a/f.exe", "a/out", "a/up"]),
    ]:
        proc = subprocess.run([sys.executable, "-c", code, pattern], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = proc.stdout.splitlines()
        assert got == [f"{tree}/{p}" for p in want], (pattern, got)  # depth first, names sorted per folder


@pytest.mark.timeout(60)
def test_a_glob_lists_directory_links_as_symlink_rows_in_walk_order(tmp_path, monkeypatch):
    tree = _looping_tree(tmp_path)
    rows = _listing(f"{tree}/**", glob=True)
    assert [r["path"] for r in rows] == [f"{tree}/{p}" for p in
                                         ["a/b/g.exe", "a/b/upup", "a/f.exe", "a/out", "a/up", "file-link.exe",
                                          "top.exe"]]
    assert all(r["target"] == os.fsencode(r["path"]) and not r["remote"] for r in rows)
    monkeypatch.chdir(tmp_path)
    relative = _listing("tree/*.exe", glob=True)
    assert [r["path"] for r in relative] == [f"{tree}/file-link.exe", f"{tree}/top.exe"]  # absolute, as before


def test_without_links_a_glob_lists_what_pythons_glob_lists(tmp_path):
    import glob

    for rel in ["x.exe", "y.dll", ".hidden.exe", "d1/a.exe", "d1/.h/b.exe", "d1/e/f/g.exe", "d2/a.exe", "d2/z.txt",
                "d[1]/lit.exe", "weird name.exe"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"1")
    for pattern in ["**", "**/*.exe", "*/*.exe", "d1/**", "d?/a.exe", "[d]1/*", "**/e/**", ".*", "**/.h/*", "*",
                    "d1/e/f/g.exe", "nothing/*", "x.exe/*"]:
        full = f"{tmp_path}/{pattern}"
        want = [p for p in glob.glob(full, recursive=True) if not os.path.isdir(p)]
        assert [r["path"] for r in _listing(full, glob=True)] == sorted(want, key=lambda p: p.split("/")), pattern


def test_a_manifest_whose_name_is_not_utf8_is_read_and_checked(tmp_path):
    (tmp_path / "007").write_bytes(b"x")
    raw = os.fsencode(str(tmp_path)) + b"/m\xff.csv"
    with open(raw, "wb") as fh:
        fh.write(b"path\n007\n")
    rows = _listing(os.fsdecode(raw))
    assert [r["target"] for r in rows] == [os.fsencode(str(tmp_path / "007"))]
    with open(raw, "ab") as fh:
        fh.write(b"a,b\n")
    with pytest.raises(inputs.InputError, match="row 2 has 2 fields, the header has 1"):
        inputs.check_input(os.fsdecode(raw))
