"""embedlib.query over a real output root (tests/query_fixtures.py, the DESIGN.md layout): every view and macro
checked against a numpy brute force, and every bad input answered with one clear line."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import query_fixtures as qf
from embedlib import query
from embedlib.query import layout
from embedlib.query.neighbors import compute_neighbors

ODD = "o'brien run [1] a b"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The fixture root (under a name with a quote, brackets and spaces) with neighbours for every run."""
    base = tmp_path_factory.mktemp("q")
    out = qf.write_root(str(base / ODD))
    for run in (qf.RUN1, qf.RUN2, qf.RUN3):
        compute_neighbors(out.root, run=run, k=5)
    return out


@pytest.fixture(scope="module")
def con(fx):
    c = query.connect(fx.root)
    yield c
    c.close()


@pytest.fixture(scope="module")
def table_con(fx):
    """The same root materialised: the similarity macros join their winners back by rowid there."""
    c = query.connect(fx.root, materialize=True)
    yield c
    c.close()


@pytest.fixture(params=["views", "tables"])
def either(request, con, table_con):
    return con if request.param == "views" else table_con


def brute(fx, version, vector, metric="cosine", exclude=None):
    """(sha256 list, distances) of every row of `version` ordered as the macros order them."""
    shas, x = fx.matrix(version)
    if metric == "cosine":
        d = 1.0 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (vector / np.linalg.norm(vector))
    else:
        d = np.linalg.norm(x - vector, axis=1)
    order = sorted((i for i in range(len(shas)) if shas[i] != exclude), key=lambda i: (round(float(d[i]), 5), shas[i]))
    return [shas[i] for i in order], d[order]


def rows_of(result):
    cols, rows = result
    return [dict(zip(cols, r)) for r in rows]


# -- views ----------------------------------------------------------------------------------------------------

def test_views_follow_the_layout(con, fx):
    assert con.execute("SELECT typeof(embedding) FROM embeddings LIMIT 1").fetchone()[0] == "FLOAT[8]"
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM embeddings").fetchone() == (45, 45)
    assert dict(con.execute("SELECT model_version, count(*) FROM embeddings_all GROUP BY ALL").fetchall()) == {
        qf.MV_A: 30, qf.MV_B: 45}
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == len(fx.errors) == 7
    assert [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()] == [qf.RUN1, qf.RUN2, qf.RUN3]
    assert con.execute("SELECT model_version, embedding_dim FROM embedlib_settings").fetchone() == (qf.MV_B, 8)
    cols = [r[0] for r in con.execute("DESCRIBE embeddings").fetchall()]
    assert "run" not in cols and cols[-3:] == ["embedding", "evidence", "words"]  # no hive column added from the path
    assert con.execute("SELECT count(*) FROM embedding_duplicates").fetchone()[0] == 0
    # the unfinished run's Parquet parts (every table), staging files and the lock are invisible
    for table in ("embeddings_all", "errors", "neighbors_all", "attribution"):
        assert con.execute(f"SELECT count(*) FROM {table} WHERE run_id = $r", {"r": qf.RUN_UNFINISHED}).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM embeddings_all WHERE path LIKE '/corpus/ghost%'").fetchone()[0] == 0


def test_embeddings_match_what_was_written(con, fx):
    got = {s: np.asarray(v) for s, v in con.execute("SELECT sha256, embedding FROM embeddings").fetchall()}
    assert set(got) == set(fx.vectors[qf.MV_B])
    assert all(np.allclose(got[s], fx.vectors[qf.MV_B][s]) for s in got)


def test_an_older_model_version_on_request(fx):
    c = query.connect(fx.root, model_version=qf.MV_A)
    assert c.execute("SELECT typeof(embedding), count(*) FROM embeddings GROUP BY 1").fetchall() == [("FLOAT[6]", 30)]
    with pytest.raises(query.QueryError, match="model version 'nope' has no embeddings.*mv-a, mv-b"):
        query.connect(fx.root, model_version="nope")


# -- similarity macros ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("name,k", [("alpha-03", 5), ("beta-new-1", 12), ("delta-2", 44), ("gamma-07", 1)])
def test_similar_matches_numpy(either, fx, metric, name, k):
    con = either
    sha = qf.sha(name)
    want, dist = brute(fx, qf.MV_B, fx.vectors[qf.MV_B][sha], metric, exclude=sha)
    got = rows_of(query.similar(con, sha.upper() if k == 12 else sha, k, metric))
    assert [r["rank"] for r in got] == list(range(1, min(k, 44) + 1))
    assert [r["sha256"] for r in got] == want[:k]
    assert np.allclose([r["distance"] for r in got], dist[:k], atol=1e-5)
    row = fx.rows[qf.MV_B][got[0]["sha256"]]
    assert (got[0]["path"], got[0]["family"], got[0]["run_id"]) == (row["path"], row["family"], row["run_id"])


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_similar_to_vector_matches_numpy(either, fx, metric):
    con = either
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = rng.normal(size=8)
        want, dist = brute(fx, qf.MV_B, v, metric)
        got = rows_of(query.similar_to_vector(con, v.tolist(), 7, metric))
        assert [r["sha256"] for r in got] == want[:7]
        assert np.allclose([r["distance"] for r in got], dist[:7], atol=1e-5)


def test_macros_compose_with_any_sql(con, fx):
    sha = qf.sha("alpha-03")
    n = con.execute("SELECT count(*) FROM similar($s, 10) s JOIN embeddings e USING (sha256) WHERE e.format = 'elf'",
                    {"s": sha}).fetchone()[0]
    want, _ = brute(fx, qf.MV_B, fx.vectors[qf.MV_B][sha], exclude=sha)
    assert n == sum(fx.rows[qf.MV_B][s]["format"] == "elf" for s in want[:10])


BAD_SIMILAR = [
    (("nope", 5), "malformed sha256 'nope'"),
    (("0" * 64, 5), "unknown sha256 0{64}: no such file"),
    ((qf.sha("alpha-01"), 0), r"k must be a whole number between 1 and 10000 \(got 0\)"),
    ((qf.sha("alpha-01"), -3), r"\(got -3\)"),
    ((qf.sha("alpha-01"), 10**9), r"\(got 1000000000\)"),
    ((qf.sha("alpha-01"), None), r"\(got NULL\)"),
    ((qf.sha("alpha-01"), 5, "manhattan"), "unknown metric 'manhattan'"),
]


@pytest.mark.parametrize("args,message", BAD_SIMILAR)
def test_similar_refuses_bad_input_with_one_line(either, args, message):
    con = either
    with pytest.raises(query.QueryError, match=message) as exc:
        query.similar(con, *args)
    assert "\n" not in str(exc.value)


def test_a_sha256_of_another_model_version_or_of_an_error_row(con, fx):
    every = qf.sha("alpha-01")  # embedded under both versions
    with pytest.raises(query.QueryError, match="comparing embeddings of model version mv-a .* cross_version := true"):
        query.similar(con, every, 3, from_version=qf.MV_A)
    with pytest.raises(query.QueryError, match="model version mv-a embeds 6 dimensions .* mv-b 8: they cannot be compared"):
        query.similar(con, every, 3, from_version=qf.MV_A, cross_version=True)
    with pytest.raises(query.QueryError, match="not embedded under model version mv-a"):
        query.similar(con, qf.sha("delta-0"), 3, from_version=qf.MV_A, cross_version=True)
    old = query.connect(fx.root, model_version=qf.MV_A)
    with pytest.raises(query.QueryError, match="not embedded under the current model version mv-a \\(only under mv-b\\)"):
        query.similar(old, qf.sha("delta-0"), 3)
    with pytest.raises(query.QueryError, match="was not embedded: errors lists it with status embed_error"):
        query.similar(con, qf.sha("broken.bin"), 3)


def test_cross_version_comparison_when_asked_and_sizes_match(tmp_path):
    fx8 = qf.write_root(str(tmp_path / "same dims"), dims={qf.MV_A: 8})
    c = query.connect(fx8.root)
    sha = qf.sha("gamma-02")
    v_old = fx8.vectors[qf.MV_A][sha]
    with pytest.raises(query.QueryError, match="refused"):
        query.similar(c, sha, 4, from_version=qf.MV_A)
    got = rows_of(query.similar(c, sha, 4, from_version=qf.MV_A, cross_version=True))
    want, dist = brute(fx8, qf.MV_B, v_old, exclude=sha)
    assert [r["sha256"] for r in got] == want[:4] and np.allclose([r["distance"] for r in got], dist[:4], atol=1e-5)
    with pytest.raises(query.QueryError, match="comparing an embedding of model version mv-a"):
        query.similar_to_vector(c, v_old.tolist(), 4, from_version=qf.MV_A)
    assert len(query.similar_to_vector(c, v_old.tolist(), 4, from_version=qf.MV_B)[1]) == 4


@pytest.mark.parametrize("vector,message", [
    ([0.1, 0.2, 0.3], "the query vector has 3 dimensions; model version mv-b embeds 8"),
    ([float("nan")] + [0.1] * 7, "NULL, NaN or infinite"),
    ([float("inf")] + [0.1] * 7, "NULL, NaN or infinite"),
    ([0.0] * 8, "all zeros"),
    (["a"] * 8, "must be numbers"),
])
def test_similar_to_vector_refuses_bad_vectors(con, vector, message):
    with pytest.raises(query.QueryError, match=message):
        query.similar_to_vector(con, vector, 3)


def test_sql_callers_get_the_same_errors(con):
    for sql, message in [("SELECT * FROM similar('xyz', 3)", "malformed sha256"),
                         ("SELECT * FROM similar_to_vector([1, 2]::FLOAT[2], 3)", "has 2 dimensions"),
                         ("SELECT * FROM near_duplicate_groups('nan'::DOUBLE)", "finite number >= 0"),
                         ("SELECT * FROM near_duplicate_groups(-1)", "finite number >= 0"),
                         ("SELECT * FROM drift_runs('r1', NULL)", "needs two run ids"),
                         ("SELECT * FROM drift_runs($a, 'nope')", "run nope has no embeddings")]:
        with pytest.raises(query.QueryError, match=message):
            query.run_sql(con, sql, {"a": qf.RUN2} if "$a" in sql else None)


def test_malformed_sql_and_missing_tables_are_one_line(con):
    for sql, message in [("SELEC 1", "Parser Error"), ("SELECT * FROM nope", "Table with name nope does not exist"),
                         ("", "empty SQL statement"), ("SELECT nope FROM runs", "Referenced column")]:
        with pytest.raises(query.QueryError, match=message) as exc:
            query.run_sql(con, sql)
        assert "\n" not in str(exc.value)


# -- neighbours, attribution, near-duplicates -------------------------------------------------------------------

def test_neighbors_job_matches_numpy(con, fx):
    for version, runs in ((qf.MV_A, [qf.RUN1]), (qf.MV_B, [qf.RUN2, qf.RUN3])):
        got = defaultdict(list)
        for sha, rank, nb, dist, metric, run in con.execute(
                "SELECT sha256, rank, neighbor, distance, metric, run_id FROM neighbors_all WHERE model_version = $v "
                "ORDER BY sha256, rank", {"v": version}).fetchall():
            got[sha].append((nb, dist))
            assert metric == "cosine" and run == fx.rows[version][sha]["run_id"] and run in runs
        assert set(got) == set(fx.vectors[version])
        for sha, nbs in got.items():
            want, dist = brute(fx, version, fx.vectors[version][sha], exclude=sha)
            assert [n for n, _ in nbs] == want[:5], sha
            assert np.allclose([d for _, d in nbs], dist[:5], atol=1e-5)
    assert con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == 45 * 5  # the current version only


def test_neighbors_rerun_replaces_and_leaves_no_temporary_file(tmp_path):
    fx2 = qf.write_root(str(tmp_path / "r"))
    first = compute_neighbors(fx2.root, run=qf.RUN2, k=3, rows_per_part=20)
    assert len(first.parts) == 6  # 36 queries x 3 rows, 6 queries per part
    again = compute_neighbors(fx2.root, run=qf.RUN2, k=3, rows_per_part=1000)
    assert len(again.parts) == 1
    folder = os.path.dirname(again.parts[0])
    assert sorted(os.listdir(folder)) == ["part-000000.parquet"]
    t = pq.read_table(again.parts[0])
    assert t.num_rows == 36 * 3 and t.schema.field("rank").type == "int32"
    c = query.connect(fx2.root)  # readers see the rewrite only (the first one's files wait for jobs.compact)
    assert c.execute("SELECT count(*) FROM neighbors WHERE run_id = $r", {"r": qf.RUN2}).fetchone()[0] == 36 * 3
    assert os.listdir(os.path.join(fx2.root, "_work", "tmp")) == []
    latest = compute_neighbors(fx2.root, k=2)  # default: every run of the current version without neighbours
    assert (latest.runs, latest.model_version, latest.queries, latest.corpus) == ([qf.RUN3], qf.MV_B, 9, 45)
    done = compute_neighbors(fx2.root, k=2)
    assert done.runs == [] and "already has neighbours; nothing to do" in done.describe()


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, "k must be a whole number between 1 and 1000"), ({"k": 5000}, "between 1 and 1000"),
    ({"metric": "dot"}, "unknown metric 'dot'"), ({"run": "nope"}, "run 'nope' has no embeddings .* no finished run"),
    ({"model_version": "zz", "run": qf.RUN1}, "model version 'zz' has no embeddings"),
])
def test_neighbors_job_refuses_bad_input(fx, kwargs, message):
    with pytest.raises(query.QueryError, match=message):
        compute_neighbors(fx.root, **kwargs)


def attribution_by_python(fx, labels):
    """Majority family of each file's 5 nearest labelled neighbours (ties: nearer best rank, then name)."""
    out = {}
    for sha, v in fx.vectors[qf.MV_B].items():
        want, _ = brute(fx, qf.MV_B, v, exclude=sha)
        votes, best = Counter(), {}
        for rank, nb in enumerate(want[:5], 1):
            fam = labels.get(nb)
            if fam:
                votes[fam] += 1
                best.setdefault(fam, rank)
        if votes:
            fam = sorted(votes, key=lambda f: (-votes[f], best[f], f))[0]
            out[sha] = (fam, votes[fam] / sum(votes.values()))
        else:
            out[sha] = (None, 0.0)
    return out


def recorded_labels(fx):
    return {s: r["family"] for v in fx.rows.values() for s, r in v.items() if r["family"]}


def test_attribution_matches_python(con, fx):
    want = attribution_by_python(fx, recorded_labels(fx))
    got = {r["sha256"]: (r["attributed_family"], r["confidence"]) for r in rows_of(query.run_sql(con, "SELECT * FROM attribution"))}
    assert set(got) == set(want)
    for sha in want:
        assert got[sha][0] == want[sha][0] and got[sha][1] == pytest.approx(want[sha][1]), sha
    assert got[qf.sha("delta-1")][0] == "beta"  # an unlabelled family is attributed to its nearest labelled one


def test_labels_manifest_overrides_recorded_families(fx):
    c = query.connect(fx.root, labels=fx.manifest)
    assert c.execute("SELECT typeof(path), typeof(family) FROM labels LIMIT 1").fetchone() == ("VARCHAR", "VARCHAR")
    labels = dict(c.execute("SELECT sha256, family FROM labelled_files").fetchall())
    assert labels[qf.sha("delta-0")] == "delta" and qf.sha("delta-1") not in labels
    want = attribution_by_python(fx, labels)
    got = {r["sha256"]: (r["attributed_family"], r["confidence"]) for r in rows_of(query.attribution(c, k=1000))}
    assert {s: g[0] for s, g in got.items()} == {s: w[0] for s, w in want.items()}
    assert got[qf.sha("delta-1")][1] < 1.0  # delta-0 is labelled now: one vote against beta's
    fams = dict(c.execute("SELECT family, files FROM family_counts").fetchall())
    assert fams["delta"] == 1


def test_labels_manifest_in_parquet(fx, tmp_path):
    import pyarrow as pa

    manifest = tmp_path / "labels [v2].parquet"
    pq.write_table(pa.table({"path": ["/corpus/delta-1", "/corpus/nowhere"], "family": ["delta", "x"]}), manifest)
    c = query.connect(fx.root, labels=str(manifest))
    labels = dict(c.execute("SELECT sha256, family FROM labelled_files").fetchall())
    assert labels[qf.sha("delta-1")] == "delta" and labels[qf.sha("alpha-01")] == "alpha"  # recorded ones stay


def test_labels_manifest_bad_input(fx, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,kind\n/x,y\n")
    with pytest.raises(query.QueryError, match="has no family column"):
        query.connect(fx.root, labels=str(bad))
    with pytest.raises(query.QueryError, match="does not exist"):
        query.connect(fx.root, labels=str(tmp_path / "missing.csv"))


def components_by_python(con, threshold):
    edges = con.execute("SELECT sha256, neighbor FROM neighbors WHERE distance <= $t", {"t": threshold}).fetchall()
    parent = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    groups = defaultdict(set)
    for node in list(parent):
        groups[find(node)].add(node)
    return groups


@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.05, 0.2])
def test_near_duplicate_groups_are_connected_components(con, fx, threshold):
    want = components_by_python(con, threshold)
    members = defaultdict(set)
    for sha, group in con.execute("SELECT * FROM near_duplicate_members($t)", {"t": threshold}).fetchall():
        members[group].add(sha)
    assert dict(members) == dict(want)
    labels = recorded_labels(fx)
    for g in rows_of(query.near_duplicate_groups(con, threshold, k=1000)):
        fams = Counter(labels[s] for s in want[g["group_id"]] if s in labels)
        assert g["size"] == len(want[g["group_id"]])
        if fams:
            assert g["majority_family"] == sorted(fams, key=lambda f: (-fams[f], f))[0]
            assert g["purity"] == pytest.approx(max(fams.values()) / sum(fams.values()))


def test_the_patched_copies_form_one_group(con):
    groups = rows_of(query.near_duplicate_groups(con, 0.001))
    assert len(groups) == 1 and groups[0]["size"] == 4 and groups[0]["purity"] == 1.0
    assert "/corpus/alpha-03" in groups[0]["members"]
    with pytest.raises(query.QueryError, match="finite"):
        query.near_duplicate_groups(con, float("nan"))


# -- analytics ------------------------------------------------------------------------------------------------

def test_counts_match_python(con, fx):
    rows = fx.rows[qf.MV_B].values()
    fams = Counter(r["family"] or "(unlabelled)" for r in rows)
    assert {r["family"]: r["files"] for r in rows_of(query.run_sql(con, "SELECT * FROM family_counts"))} == fams
    fmts = Counter(r["format"] for r in rows)
    assert {r["format"]: r["files"] for r in rows_of(query.run_sql(con, "SELECT * FROM format_counts"))} == fmts
    sizes = Counter((r["format"], 1 << (r["size_bytes"].bit_length() - 1)) for r in rows)
    assert {(r["format"], r["low_bytes"]): r["files"]
            for r in rows_of(query.run_sql(con, "SELECT * FROM size_distribution"))} == sizes
    errs = Counter(e["status"] for e in fx.errors)
    assert {r["status"]: r["files"] for r in rows_of(query.run_sql(con, "SELECT * FROM error_counts"))} == errs
    runs = {r["run_id"]: r for r in rows_of(query.run_sql(con, "SELECT * FROM run_counts"))}
    for run in (qf.RUN1, qf.RUN2, qf.RUN3):
        emb = sum(r["run_id"] == run for v in fx.rows.values() for r in v.values())
        assert runs[run]["embedded_rows"] == runs[run]["embedded"] == emb
        assert runs[run]["error_rows"] == sum(e["run_id"] == run for e in fx.errors)


def test_drift_between_runs_matches_numpy(con, fx):
    labels = recorded_labels(fx)
    got = {r["family"]: r for r in rows_of(query.run_sql(con, "SELECT * FROM drift_runs($a, $b)",
                                                          {"a": qf.RUN2, "b": qf.RUN3}))}
    for fam in ("alpha", "gamma"):
        cent, spread = [], []
        for run in (qf.RUN2, qf.RUN3):
            x = np.stack([v for s, v in fx.vectors[qf.MV_B].items()
                          if labels.get(s) == fam and fx.rows[qf.MV_B][s]["run_id"] == run])
            c = x.mean(0)
            cent.append(c)
            spread.append(np.mean(1 - (x @ c) / (np.linalg.norm(x, axis=1) * np.linalg.norm(c))))
        shift = 1 - cent[0] @ cent[1] / (np.linalg.norm(cent[0]) * np.linalg.norm(cent[1]))
        assert got[fam]["centroid_shift"] == pytest.approx(shift, abs=1e-5)
        assert [got[fam]["spread_a"], got[fam]["spread_b"]] == pytest.approx(spread, abs=1e-5)
    assert got["beta"]["files_b"] == 0 and got["beta"]["centroid_shift"] is None


def test_drift_between_model_versions(con, fx):
    changes = rows_of(query.ask(con, "family_changes", a=qf.MV_A, b=qf.MV_B))
    assert [c["path"] for c in changes] == ["/corpus/beta-07"]
    assert (changes[0]["attributed_a"], changes[0]["attributed_b"]) == ("beta", "gamma")
    drift = {r["family"]: r for r in rows_of(query.ask(con, "drift_versions", a=qf.MV_A, b=qf.MV_B))}
    assert drift["beta"]["changed"] == 1 and drift["alpha"]["changed"] == 0
    assert drift["beta"]["changed_share"] == pytest.approx(1 / drift["beta"]["files_with_neighbors"])
    with pytest.raises(query.QueryError, match="no stored neighbours for model version nope"):
        query.ask(con, "drift_versions", a=qf.MV_A, b="nope")


# -- roots: odd names, materialised databases, missing pieces ----------------------------------------------------

@pytest.mark.parametrize("name", ["o'brien run", "run[1]", "a b", "star*and?mark", "brace{a,b}", "back\\slash[1]"])
def test_odd_root_names_are_read_exactly(tmp_path, name):
    """A sibling that the name would match as a glob holds other data: it must never be read."""
    decoy = qf.write_root(str(tmp_path / "run1"))  # what run[1] would match as a glob
    shutil.copytree(tmp_path / "run1", tmp_path / "runX")  # what star*and?mark-like patterns could reach
    fx2 = qf.write_root(str(tmp_path / name))
    # make the two roots differ: the decoy loses a run
    shutil.rmtree(os.path.join(decoy.root, "embeddings", f"model_version={qf.MV_B}", f"run={qf.RUN3}"))
    for materialize in (False, True):
        c = query.connect(fx2.root, materialize=materialize)
        assert c.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 45
        assert c.execute("SELECT count(*) FROM embeddings_all").fetchone()[0] == 75
        assert len(query.similar(c, qf.sha("delta-0"), 3)[1]) == 3
    c = query.connect(fx2.root)
    files = c.execute("SELECT DISTINCT filename FROM read_parquet(getvariable('embedlib_src_embeddings'), filename=true)"
                      ).fetchall() if layout.duckdb_safe(fx2.root) else [(fx2.root,)]
    assert all(f[0].startswith(fx2.root) for f in files)


def test_escaping_is_exact_where_duckdb_globs():
    assert layout.duckdb_path("/a/run[1]/p*?.parquet") == "/a/run[[]1[]]/p[*][?].parquet"
    assert layout.duckdb_safe("/a/b\\c/x.parquet") and not layout.duckdb_safe("/a/b\\c[1]/x.parquet")


def test_materialised_database_is_reusable_without_the_root(fx, tmp_path):
    db = str(tmp_path / "e.duckdb")
    c = query.connect(fx.root, database=db)
    sha = qf.sha("beta-03")
    want = query.similar(c, sha, 5)
    assert c.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'embeddings'").fetchone() == (
        "BASE TABLE",)
    c.close()
    again = query.open_database(db)
    assert query.similar(again, sha, 5) == want
    assert again.execute("SELECT count(*) FROM attribution").fetchone()[0] == 45
    again.close()
    query.connect(fx.root, database=db).close()  # rebuilding replaces it
    assert not [f for f in os.listdir(tmp_path) if "building" in f]


def test_database_paths_that_cannot_be_used(fx, tmp_path):
    with pytest.raises(query.QueryError, match="is a directory"):
        query.connect(fx.root, database=str(tmp_path))
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE mine AS SELECT 1").close()
    with pytest.raises(query.QueryError, match="not an embedlib database"):
        query.connect(fx.root, database=str(other))
    with pytest.raises(query.QueryError, match="no database"):
        query.open_database(str(tmp_path / "missing.duckdb"))
    with pytest.raises(query.QueryError, match="folder .* does not exist"):
        query.connect(fx.root, database=str(tmp_path / "no" / "x.duckdb"))


def test_roots_that_are_missing_empty_or_partial(tmp_path):
    with pytest.raises(query.QueryError, match="does not exist"):
        query.connect(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(query.QueryError, match="is empty"):
        query.connect(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(query.QueryError, match="is a file"):
        query.connect(str(tmp_path / "file"))
    fx2 = qf.write_root(str(tmp_path / "no neighbours"))
    c = query.connect(fx2.root)
    for view in ("attribution", "neighbors"):
        with pytest.raises(query.QueryError, match=f"{view} is not available: no stored neighbours"):
            query.run_sql(c, f"SELECT * FROM {view}")
    with pytest.raises(query.QueryError, match="labels is not available: no labels manifest"):
        query.run_sql(c, "SELECT * FROM labels")
    shutil.rmtree(os.path.join(fx2.root, "errors"))
    c = query.connect(fx2.root)
    assert query.ask(c, "errors", run=None)[1] == []  # no error in any run is an empty table, not an error


# -- the blocked kNN itself ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "torch:cpu"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("block_rows,corpus_block", [(7, 13), (1000, 1000), (1, 5)])
def test_knn_in_blocks_matches_a_full_sort(backend, metric, block_rows, corpus_block):
    from embedlib.query.neighbors import knn

    rng = np.random.default_rng(11)
    corpus = rng.normal(size=(60, 5)).astype(np.float32)
    corpus[7] = corpus[3]  # an exact tie: broken by index, as the SQL breaks it by sha256
    own = np.array([0, 3, 7, 59, -1])
    queries = np.concatenate([corpus[own[:4]], rng.normal(size=(1, 5)).astype(np.float32)])
    if metric == "cosine":
        n = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
        full = 1 - (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ n.T
    else:
        full = np.linalg.norm(queries[:, None] - corpus[None], axis=2)
    for i, j in enumerate(own):
        if j >= 0:
            full[i, j] = np.inf
    want = np.stack([sorted(range(60), key=lambda c: (round(float(full[i, c]), 5), c))[:6] for i in range(5)])
    idx, dist = knn(queries, corpus, 6, metric, own, block_rows=block_rows, corpus_block=corpus_block, backend=backend)
    assert (idx == want).all()
    assert np.allclose(dist, np.take_along_axis(full, want, 1), atol=1e-5)
    assert 7 not in idx[2] and 3 in idx[2]  # itself excluded, its identical twin kept at distance 0


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_device_top_k_resolves_ties_beyond_its_margin_like_the_host(metric):
    """The torch path copies only k + TIE_MARGIN columns back: a tie at the k-th distance wider than that (many
    identical files) must still be broken by sha256 exactly as the host's full sort breaks it."""
    from embedlib.query import topk

    rng = np.random.default_rng(5)
    corpus = rng.normal(size=(80, 6)).astype(np.float32)
    corpus[10:10 + topk.TIE_MARGIN + 12] = corpus[9]  # 21 identical twins of row 9
    sha = np.array([f"{(i * 7919) % 997:064d}" for i in range(80)], topk.SHA)
    queries = corpus[[9, 40, 0]] + np.float32(0)
    query_sha = np.array([sha[9], sha[40], b"f" * 64], topk.SHA)
    want, _ = topk.scan(queries, query_sha, [(sha, corpus)], 4, metric, backend="numpy", block_rows=2)
    got, _ = topk.scan(queries, query_sha, [(sha, corpus)], 4, metric, backend="torch:cpu", block_rows=2)
    assert (got.sha == want.sha).all() and np.allclose(got.dist, want.dist, atol=1e-5)
    twins = sorted(sha[10:10 + topk.TIE_MARGIN + 12].tolist())
    assert got.sha[0].tolist() == twins[:4]  # query 9's four nearest: its twins, the smallest sha256 first


def test_knn_with_fewer_rows_than_k():
    from embedlib.query.neighbors import knn

    x = np.eye(3, dtype=np.float32)
    idx, dist = knn(x, x, 10, "cosine", np.arange(3))
    assert idx.shape == (3, 2) and not np.isinf(dist).any()
    idx, _ = knn(x[:0], x, 10, "cosine")
    assert idx.shape == (0, 0)


def test_neighbors_of_a_run_that_embedded_nothing(tmp_path):
    """A nightly run that found nothing new: no queries, no parts, no error."""
    import datetime as dt

    import pyarrow as pa

    from embedlib import schema
    from embedlib.root.store import Store

    fx2 = qf.write_root(str(tmp_path / "r"))
    empty_run = "20261104T010000Z-eeeeee"
    now = dt.datetime(2026, 11, 4, 1, tzinfo=dt.timezone.utc)
    row = {name: 0 for name in schema.RUNS.names} | {
        "run_id": empty_run, "job": "embed", "model_version": qf.MV_B, "raster": "{}", "input": "/corpus",
        "started": now, "finished": now, "seconds": 1.0, "embedlib_version": "t", "config": "{}"}
    Store(fx2.root).write_parquet(f"runs/{empty_run}.parquet", pa.Table.from_pylist([row], schema=schema.RUNS))
    result = compute_neighbors(fx2.root, run=empty_run, k=3)
    assert (result.runs, result.model_version, result.queries, result.parts) == ([empty_run], qf.MV_B, 0, [])
    assert compute_neighbors(fx2.root, k=3).runs == [qf.RUN2, qf.RUN3]  # the empty run needs none


# -- neighbours streamed: the version block by block, the run's rows chunk by chunk -------------------------------

def test_disjoint_parts_merge_into_one_scan_with_ties_by_sha256():
    from embedlib.query import topk

    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    x[[3, 17, 29]] = x[8]  # identical rows: ties that a cut inside any part must break by sha256
    sha = np.array([f"{(i * 7919) % 1000:064d}" for i in range(40)], topk.SHA)
    q = x[[8, 0, 3]]
    one, seen = topk.scan(q, sha[[8, 0, 3]], [(sha, x)], 4)
    assert seen == 40
    parts = [topk.scan(q, sha[[8, 0, 3]], [(sha[s], x[s])], 4, block_rows=2)[0]
             for s in (slice(0, 10), slice(10, 25), slice(25, 40))]
    merged = topk.TopK.empty(3)
    for p in parts:
        merged = topk.merge(merged, p, 4)
    assert (merged.sha == one.sha).all() and np.allclose(merged.dist, one.dist, atol=1e-6)
    twins = sorted(sha[[3, 17, 29]].tolist())  # query 0 (row 8) meets its three twins, never itself
    assert one.sha[0, :3].tolist() == twins and np.allclose(one.dist[0, :3], 0, atol=1e-6)
    assert sha[8] not in one.sha[0]


def test_neighbors_stream_in_bounded_chunks_with_the_same_answer(tmp_path, monkeypatch):
    """The run's rows arrive QUERY_CHUNK at a time and the version corpus_block rows at a time (never the whole
    version in memory), and the neighbours are exactly those of one pass."""
    from embedlib.query import neighbors, topk

    fx2 = qf.write_root(str(tmp_path / "r"))
    whole = compute_neighbors(fx2.root, run=qf.RUN2, k=4)
    want = sorted(pq.read_table(whole.parts[0]).to_pylist(), key=lambda r: (r["sha256"], r["rank"]))
    seen = {"queries": [], "blocks": []}
    scan = topk.scan

    def watched(queries, query_sha, blocks, *a, **kw):
        seen["queries"].append(len(queries))

        def counted():
            for b in blocks:
                seen["blocks"].append(len(b[0]))
                yield b
        return scan(queries, query_sha, counted(), *a, **kw)

    monkeypatch.setattr(neighbors, "QUERY_CHUNK", 10)
    monkeypatch.setattr(topk, "scan", watched)
    chunked = compute_neighbors(fx2.root, run=qf.RUN2, k=4, corpus_block=7, rows_per_part=4 * 15)
    got = sorted((r for p in chunked.parts for r in pq.read_table(p).to_pylist()), key=lambda r: (r["sha256"], r["rank"]))
    assert (chunked.queries, chunked.corpus, len(chunked.parts)) == (36, 45, 3)  # 15 queries a part
    assert seen["queries"] == [10, 10, 10, 6]
    assert max(seen["blocks"]) <= 7 and sum(seen["blocks"]) == 45 * len(seen["queries"])
    assert [(r["sha256"], r["rank"], r["neighbor"]) for r in got] == [(r["sha256"], r["rank"], r["neighbor"]) for r in want]
    # float32 1 - cosine: blocks of another size sum in another order, a few ulps of 1.0 apart (6e-8 on an AMD
    # EPYC's BLAS, at distances near 0 too: a relative tolerance alone fails there)
    assert np.allclose([r["distance"] for r in got], [r["distance"] for r in want], rtol=1e-5, atol=1e-6)
    c = query.connect(fx2.root)
    assert c.execute("SELECT count(*), count(DISTINCT sha256) FROM neighbors WHERE run_id = $r",
                     {"r": qf.RUN2}).fetchone() == (36 * 4, 36)


def test_default_backend_asks_torch_only_where_a_gpu_driver_is(tmp_path):
    import subprocess
    import sys

    from embedlib.query.neighbors import GPU_DEVICES, default_backend

    assert default_backend(devices=(str(tmp_path / "no-driver"),)) == "numpy"
    code = ("import sys; from embedlib.query.neighbors import default_backend; b = default_backend(); "
            "print(b, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    if not any(os.path.exists(d) for d in GPU_DEVICES):  # this machine has no GPU driver: torch never imported
        assert out.stdout.split() == ["numpy", "False"]
    else:
        assert out.stdout.split()[1] == "True"
