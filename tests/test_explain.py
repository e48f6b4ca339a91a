"""Evidence kept with each embedding, and the explanations in SQL (issue 20): the items are the ones the views
hash (the numpy definition's), weighed by the model's IDF; the pipeline writes them from the same bytes; the
macros explain(), similar(shared := true), family_profile(), family_neighbors() answer on a real root written by
the real pipeline, cope with rows that have no evidence, and refuse bad input in one line. On the same root: the
words kept with each embedding are its fixed part before the fold, and similar() re-scores with them exactly as
the evaluation does (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from explained_root import build

import torch

from embedlib import query, schema, views
from embedlib.config import Config, ViewsConfig
from embedlib.eval import retrieval
from embedlib.model import checkpoint, exact
from embedlib.root import catalog
from embedlib.root.store import Store
from embedlib.views import evidence, kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("/usr/bin/ls", "/usr/bin/cp", "/usr/bin/python3.11")


@pytest.fixture(scope="module")
def real(tmp_path_factory, system_files):
    return build(str(tmp_path_factory.mktemp("explained")), system_files)


@pytest.fixture(scope="module")
def con(real):
    c = query.connect(real.root)
    yield c
    c.close()


def sha_of(con, path: str) -> str:
    return con.execute("SELECT sha256 FROM embeddings WHERE path = $p", {"p": path}).fetchone()[0]


# -- the items are the views' own --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES)
def test_items_are_the_distinct_items_the_views_hash(path):
    """Every view's distinct items, as the kernels return them, are exactly the numpy definition's distinct hashes,
    and the bytes at each item's position hash to it (a word's lowercased), so the text shown is what was hashed."""
    data = open(path, "rb").read()[: 4 << 20]
    arr = np.frombuffer(data, np.uint8)
    v = ViewsConfig()
    counts, items = kernels.sketch_items(arr, v.names, v.strings_min_len, v.idents_min_len, v.tokens_min_len,
                                         v.buckets)
    starts, ends = views.runs(views.printable(arr), min(v.strings_min_len, v.idents_min_len))
    long = (ends - starts) >= v.strings_min_len
    si, ei = views.identifiers_among(arr, starts, ends, v.idents_min_len)
    ti, tei = views.identifiers_among(arr, starts[~long], ends[~long], v.idents_min_len)
    want = {
        "strings": np.unique(views.hash_runs(arr, starts[long], ends[long])),
        "idents": np.unique(views.hash_runs(arr, si, ei)),
        "tokens": views.word_hashes(arr, np.concatenate([starts[long], ti]), np.concatenate([ends[long], tei]),
                                    v.tokens_min_len),
    }
    for name, (hashes, s, e) in items.items():
        assert np.array_equal(np.sort(hashes), want[name]), name
        assert len(hashes) == len(np.unique(hashes)), name
        assert np.array_equal(views.bucket_counts(hashes, v.buckets), counts[name]), name
        for h, a, b in list(zip(hashes, s, e))[:: max(1, len(hashes) // 200)]:
            text = data[a:b].lower() if name == "tokens" else data[a:b]
            assert views.hash_runs(np.frombuffer(text, np.uint8), np.array([0]), np.array([len(text)]))[0] == h


def test_views_with_evidence_are_the_views():
    cfg = Config()
    weights = {n: np.linspace(1.0, 3.0, cfg.views.buckets) for n in cfg.views.names}
    for path in FILES:
        data = open(path, "rb").read()
        got, items = evidence.views_with_evidence(data, cfg, weights, 64, 40)
        want = views.compute_views(data, cfg)
        assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
        assert 0 < len(items) <= 64
        assert [x["weight"] for x in items] == sorted((x["weight"] for x in items), reverse=True)
        assert len({x["item"] for x in items}) == len(items)
        assert {x["kind"] for x in items} <= {"string", "name", "word"}
        assert all(len(x["item"]) <= 43 and evidence.readable(x["item"]) for x in items)
        low = data.lower()
        assert all(x["item"].removesuffix("...").encode().lower() in low for x in items)
        assert items == evidence.views_with_evidence(data, cfg, weights, 64, 40)[1]  # deterministic


def test_item_weights_rebuild_the_unit_tfidf_vector():
    """Summed per bucket, the items' weights are the view's TF-IDF unit vector as the model computes it."""
    import torch

    from embedlib.config import ModelConfig
    from embedlib.model.network import SketchWeights

    data = open("/usr/bin/ls", "rb").read()
    v = ViewsConfig()
    counts, items = kernels.sketch_items(np.frombuffer(data, np.uint8), v.names, v.strings_min_len,
                                         v.idents_min_len, v.tokens_min_len, v.buckets)
    idf = np.random.default_rng(0).uniform(1.0, 6.0, v.buckets)
    for name in counts:
        w = evidence.item_weights(counts[name], items[name][0], idf ** 2)
        per_bucket = np.bincount(views.bucket_of(items[name][0], v.buckets), weights=w, minlength=v.buckets)
        sketch = SketchWeights(v.buckets, ModelConfig())
        sketch.idf.copy_(torch.as_tensor(idf, dtype=torch.float32))
        model = sketch.weighted(torch.as_tensor(counts[name][None]), augment=False, idf_power=2.0)[0].numpy()
        assert np.allclose(per_bucket, model, atol=1e-5), name


def test_the_compiled_pool_is_the_heaviest_items_by_weight_then_hash():
    """kernels.evidence_pool: item_weights' numbers exactly, the `pool` heaviest, ties by the smaller hash (every
    item when there are fewer), on real files' views with a real-looking IDF and with one that makes many ties."""
    v = ViewsConfig()
    rng = np.random.default_rng(0)
    share = np.log1p(np.arange(256)) / np.maximum(np.arange(256), 1)
    for path in FILES:
        data = open(path, "rb").read()
        counts, items = kernels.sketch_items(np.frombuffer(data, np.uint8), v.names, v.strings_min_len,
                                             v.idents_min_len, v.tokens_min_len, v.buckets)
        for idf in (rng.uniform(1.0, 6.0, v.buckets), np.ones(v.buckets)):
            for name in counts:
                hashes = items[name][0]
                want_w = evidence.item_weights(counts[name], hashes, idf)
                norm = evidence.view_norm(counts[name], idf)
                for pool in (1, 128, 10**6):
                    got, got_w = kernels.evidence_pool(counts[name], hashes, idf, norm, share,
                                                       np.uint64(65 - v.buckets.bit_length()), pool)
                    want = np.lexsort((hashes, -want_w))[:pool]
                    assert got.tolist() == want.tolist(), (path, name, pool)
                    assert np.array_equal(got_w, want_w[want])


def _picks_in_python(data: bytes, starts, ends, lower, max_chars: int, top: int) -> list[int]:
    """What evidence.top_items kept before its compiled pass: readable (after lowercasing) and unseen, in order."""
    picked, seen = [], set()
    for c, (s, e, low) in enumerate(zip(starts, ends, lower)):
        raw = data[s:min(e, s + max_chars)]
        raw = raw.lower() if low else raw
        if raw in seen or not evidence.readable(raw):
            continue
        seen.add(raw)
        picked.append(c)
        if len(picked) == top:
            break
    return picked


def test_the_compiled_pick_is_readable_and_unseen_as_in_python():
    """kernels.evidence_picks against the Python loop it replaced: crafted texts at each rule's edge (11/12 hex
    digits, a digit at the end of a hex run, 3/4 repeats, a case that repeats only once lowercased, the same text
    as a string and as a lowercased word, the cut at max_chars), then every item of real files."""
    texts = [b"abcdef012345", b"abcdef01234", b"abcdefabcdefabcdef7", b"abcdefabcdefabcdef", b"xyaaab", b"xyaaaab",
             b"zzAAaaq", b"Hello_World", b"hello_world", b"HELLO_WORLD", b"ab1", b"abc", b"x1x2x3", b"\tab\tcd",
             b"LongPrefix0123456789abcdef", b"LongPrefix0123456789abcdeX", b"gimp"]
    data = b"\0".join(texts)
    starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    ends = starts + np.array([len(t) for t in texts])
    for lower_all in (0, 1):
        for max_chars, top in ((64, 64), (13, 64), (64, 3)):
            lower = np.full(len(texts), lower_all, np.uint8)
            lower[::3] = 1 - lower_all
            got = kernels.evidence_picks(np.frombuffer(data, np.uint8), starts.astype(np.int64),
                                         ends.astype(np.int64), lower, max_chars, top)
            assert got.tolist() == _picks_in_python(data, starts, ends, lower, max_chars, top)
    v = ViewsConfig()
    for path in FILES:
        data = open(path, "rb").read()
        _, items = kernels.sketch_items(np.frombuffer(data, np.uint8), v.names, v.strings_min_len, v.idents_min_len,
                                        v.tokens_min_len, v.buckets)
        starts = np.concatenate([items[n][1] for n in items])
        ends = np.concatenate([items[n][2] for n in items])
        lower = np.concatenate([np.full(len(items[n][1]), n == "tokens", np.uint8) for n in items])
        order = np.random.default_rng(0).permutation(len(starts))
        starts, ends, lower = starts[order], ends[order], lower[order]
        got = kernels.evidence_picks(np.frombuffer(data, np.uint8), starts, ends, lower, 40, 10**9)
        want = _picks_in_python(data, starts, ends, lower, 40, 10**9)
        assert 100 < len(want) < len(starts) and got.tolist() == want, path


def _top_items_in_python(data: bytes, counts, items, weights, top: int, max_chars: int) -> list[dict]:
    """evidence.top_items as plain numpy and Python: each view's 2 x top heaviest items (ties: smaller hash),
    all of them ordered by weight, view, hash; the weightless dropped; then the readable and unseen, cut text."""
    candidates = []
    for c, view in enumerate(sorted(weights)):
        if view not in items or view not in counts:
            continue
        hashes, starts, ends = items[view]
        w = evidence.item_weights(counts[view], hashes, weights[view])
        candidates += [(-w[i], c, int(hashes[i]), int(starts[i]), int(ends[i]), view)
                       for i in np.lexsort((hashes, -w))[: 2 * top] if w[i] > 0]
    candidates.sort()
    picked = _picks_in_python(data, [x[3] for x in candidates], [x[4] for x in candidates],
                              [x[5] == "tokens" for x in candidates], max_chars, top)
    rows = []
    for neg_w, _, _, s, e, view in (candidates[p] for p in picked):
        raw = data[s:min(e, s + max_chars)]
        text = (raw.lower() if view == "tokens" else raw).decode("ascii") + ("..." if e - s > max_chars else "")
        rows.append({"item": text, "kind": evidence.KINDS[view], "weight": -neg_w})
    return rows


def test_top_items_are_the_plain_selection():
    """evidence.top_items (compiled) keeps exactly the rows of the plain definition: real files, a real-looking
    IDF, one that makes many ties, a view without weights, a short text cut, `top` of 1 and of every item."""
    v = ViewsConfig()
    rng = np.random.default_rng(1)
    for path in FILES:
        data = open(path, "rb").read()
        counts, items = kernels.sketch_items(np.frombuffer(data, np.uint8), v.names, v.strings_min_len,
                                             v.idents_min_len, v.tokens_min_len, v.buckets)
        for weights in ({n: rng.uniform(1.0, 6.0, v.buckets) for n in counts},
                        {n: np.ones(v.buckets) for n in counts},
                        {"tokens": rng.uniform(0.0, 3.0, v.buckets) ** 2, "idents": np.zeros(v.buckets)}):
            for top, max_chars in ((64, 64), (1, 64), (64, 9)) + (((10**5, 40),) if path == FILES[0] else ()):
                got = evidence.top_items(data, counts, items, weights, top, max_chars)
                assert got == _top_items_in_python(data, counts, items, weights, top, max_chars), (path, top)
                assert got, path
    # equal weights in two views: the view decides (idents before strings), not the smaller hash (the string's)
    data = b"alpha_name\0beta string"
    counts = {"idents": np.array([0, 0, 0, 1], np.uint8), "strings": np.array([0, 1, 0, 0], np.uint8)}
    items = {"idents": (np.array([3 << 62], np.uint64), np.array([0]), np.array([10])),
             "strings": (np.array([1 << 62], np.uint64), np.array([11]), np.array([22]))}
    weights = {"idents": np.ones(4), "strings": np.ones(4)}
    for top in (1, 2):
        got = evidence.top_items(data, counts, items, weights, top, 64)
        assert got == _top_items_in_python(data, counts, items, weights, top, 64)
        assert [x["item"] for x in got] == ["alpha_name", "beta string"][:top]


def test_readable_drops_build_ids_and_code_bytes():
    for text in ("795cd5b54bfa71cab88f597d40c6d6229d679c.debug", "bb3572f54c129e3ea67a61330bfc8d1c96f7c0", "4648",
                 "vuuuuuuuav1", "AAAAAAAA", "%s: %s"):
        assert not evidence.readable(text), text
    for text in ("gimp", "gnunet_service_reclaim", "/usr/share/locale", "e2fsprogs", "x86_64-linux", "deadbeef",
                 "--ignore-garbage"):
        assert evidence.readable(text), text


def test_a_model_gives_its_idf_as_evidence_weights():
    from embedlib.model.network import build_model

    cfg = Config()
    model = build_model(cfg.model, 2, views.view_specs(cfg))
    df = np.arange(cfg.views.buckets) % 7
    for name in views.sketch_views(cfg):
        model.set_document_frequency(name, df, 10)
    weights = model.evidence_weights()
    idf = np.log(11.0 / (1.0 + df)) + 1.0
    assert set(weights) == set(views.sketch_views(cfg)) == {"strings", "idents", "tokens"}  # token_ids: no text
    # the words feed the fixed part (through token_ids): their evidence has the fixed part's power
    assert np.allclose(weights["tokens"], idf ** cfg.model.skip_idf_power, rtol=1e-6)
    assert np.allclose(weights["strings"], idf, rtol=1e-6)
    image_only = build_model(cfg.model, 2, None)
    assert image_only.evidence_weights() == {}


# -- the pipeline writes it ------------------------------------------------------------------------------------

def test_the_pipeline_keeps_evidence_with_every_row(real, con):
    rows = con.execute("SELECT path, evidence FROM embeddings").fetchall()
    assert len(rows) == len(real.files) + 3
    for path, ev in rows:
        assert ev and len(ev) <= 64, path
        weights = [x["weight"] for x in ev]
        assert weights == sorted(weights, reverse=True)
    store = Store(real.root)
    part = catalog.table_files(store, "embeddings")[0]
    written = pq.read_schema(store.path(part))
    assert written.field("evidence").type == schema.EVIDENCE
    assert written.metadata[b"embedlib.schema_version"] == b"5" == str(schema.SCHEMA_VERSION).encode()
    # the items of a file are its own: found in its bytes (words lowercased)
    path, ev = next((p, e) for p, e in rows if p == real.files[0].path)
    data = open(path, "rb").read().lower()
    assert all(x["item"].removesuffix("...").lower().encode() in data for x in ev)


# -- SQL --------------------------------------------------------------------------------------------------------

def test_explain_ranks_the_shared_items_by_contribution(real, con):
    fam = real.files[0].family
    a, b = [f.path for f in real.files if f.family == fam][:2]
    sa, sb = sha_of(con, a), sha_of(con, b)
    cols, rows = query.explain_pair(con, sa, sb, k=64)
    got = [dict(zip(cols, r)) for r in rows]
    ev = dict(con.execute("SELECT sha256, evidence FROM evidence WHERE sha256 IN ($a, $b)", {"a": sa, "b": sb}).fetchall())
    wa = {x["item"]: x["weight"] for x in ev[sa]}
    wb = {x["item"]: x["weight"] for x in ev[sb]}
    shared = set(wa) & set(wb)
    assert shared, "two programs of one dpkg family share no evidence"
    both = [r for r in got if r["side"] == "both"]
    assert {r["item"] for r in both} == shared
    for r in both:
        assert r["contribution"] == pytest.approx(wa[r["item"]] * wb[r["item"]], rel=1e-5)
    assert [r["contribution"] for r in both] == sorted((r["contribution"] for r in both), reverse=True)
    assert {r["item"] for r in got if r["side"] == "a"} == set(wa) - shared
    assert {r["item"] for r in got if r["side"] == "b"} == set(wb) - shared
    assert [r["rank"] for r in got] == list(range(1, len(got) + 1))
    assert [r["side"] for r in got] == sorted((r["side"] for r in got), key=["both", "a", "b"].index)
    few = query.explain_pair(con, sa, sb, k=2)[1]
    assert len(few) <= 6 and [r[1] for r in few[:2]] == ["both", "both"]


def test_similar_adds_shared_evidence_only_when_asked(real, con):
    sha = sha_of(con, real.files[0].path)
    cols, rows = query.similar(con, sha, 5)
    cols_s, rows_s = query.similar(con, sha, 5, shared=True)
    assert "shared" not in cols and cols_s == cols + ["shared"]
    assert [r[:-1] for r in rows_s] == rows
    assert any(r[-1] for r in rows_s)
    own = {x["item"] for x in con.execute("SELECT evidence FROM evidence WHERE sha256 = $s", {"s": sha}).fetchone()[0]}
    for r in rows_s:
        theirs = con.execute("SELECT evidence FROM evidence WHERE sha256 = $s", {"s": r[2]}).fetchone()[0]
        assert set(r[-1]) <= own & {x["item"] for x in theirs} and len(r[-1]) <= 8
        assert len(r[-1]) == min(8, len(own & {x["item"] for x in theirs}))
    sql = con.execute("SELECT * FROM similar($s, 3, shared := true)", {"s": sha}).description
    assert sql[-1][0] == "shared"


def test_family_profile_matches_python(real, con):
    fam = real.files[0].family
    rows = con.execute("SELECT e.sha256, l.family, e.evidence FROM embeddings e LEFT JOIN labelled_files l "
                       "USING (sha256)").fetchall()
    n = len(rows)
    members = [set(x["item"] for x in ev) for _, f, ev in rows if f == fam]
    table_df: dict[str, int] = {}
    for _, _, ev in rows:
        for item in {x["item"] for x in ev}:
            table_df[item] = table_df.get(item, 0) + 1
    score = {}
    for item in set().union(*members):
        fam_df = sum(item in m for m in members)
        score[item] = fam_df / len(members) * np.log(n / table_df[item])
    cols, got = query.family_profile(con, fam, k=10)
    got = [dict(zip(cols, r)) for r in got]
    assert len(got) == 10
    best = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [r["score"] for r in got] == pytest.approx([round(s, 4) for _, s in best], abs=1e-4)
    assert got[0]["family_files_with_evidence"] == len(members)
    assert got[0]["family_files"] == sum(got[0]["item"] in m for m in members)


def test_family_neighbors_count_the_stored_neighbours(real, con):
    fam = real.files[0].family
    cols, rows = query.family_neighbors(con, fam, k=50)
    got = {r[cols.index("family")]: r[cols.index("neighbors")] for r in rows}
    want = con.execute("""SELECT coalesce(f.family, '(unlabelled)'), count(*) FROM neighbors n
        JOIN labelled_files m ON m.sha256 = n.sha256 AND m.family = $f
        LEFT JOIN labelled_files f ON f.sha256 = n.neighbor GROUP BY ALL""", {"f": fam}).fetchall()
    assert got == dict(want)
    assert sum(r[cols.index("share")] for r in rows) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("call, message", [
    (lambda c, s: query.explain_pair(c, "00" * 32, s), "unknown sha256 " + "00" * 32),
    (lambda c, s: query.explain_pair(c, s, "xyz"), "malformed sha256 'xyz'"),
    (lambda c, s: query.explain_pair(c, s, s, k=0), "k must be a whole number"),
    (lambda c, s: query.family_profile(c, "no-such-family"), "unknown family 'no-such-family'"),
    (lambda c, s: query.family_neighbors(c, "it's not"), "unknown family 'it''s not'"),
    (lambda c, s: query.similar(c, "zz", 3, shared=True), "malformed sha256 'zz'"),
])
def test_bad_input_is_one_line(real, con, call, message):
    sha = sha_of(con, real.files[0].path)
    with pytest.raises(query.QueryError) as err:
        call(con, sha)
    assert message.replace("''", "'") in str(err.value) or message in str(err.value)
    assert "\n" not in str(err.value)


def _drop_evidence(root: str, keep: int) -> list[str]:
    """Rewrite the root's embeddings parts as an older release wrote them (no evidence or words column, no
    embedlib.learned_dim) except the first `keep` parts; returns the paths whose rows now have none."""
    store = Store(root)
    old = []
    for rel in catalog.table_files(store, "embeddings")[keep:]:
        table = pq.read_table(store.path(rel))
        old += table.column("path").to_pylist()
        if "evidence" in table.column_names:
            meta = {k: v for k, v in table.schema.metadata.items() if k != b"embedlib.learned_dim"}
            table = table.drop_columns(["evidence", "words"]).replace_schema_metadata(meta)
            pq.write_table(table, store.path(rel))
    return old


def _stored_distances(c, sha: str) -> dict[str, float]:
    return dict(c.execute("SELECT e.sha256, array_cosine_distance(e.embedding, q.embedding) FROM embeddings e, "
                          "embeddings q WHERE q.sha256 = $s", {"s": sha}).fetchall())


def test_rows_without_evidence_are_coped_with(real, tmp_path, system_files):
    import shutil

    root = str(tmp_path / "root")
    shutil.copytree(real.root, root)
    parts = catalog.table_files(Store(root), "embeddings")
    assert len(parts) >= 2
    old_paths = set(_drop_evidence(root, keep=1))
    c = query.connect(root)
    old = [s for s, p in c.execute("SELECT sha256, path FROM embeddings").fetchall() if p in old_paths]
    new = [s for s, p in c.execute("SELECT sha256, path FROM embeddings").fetchall() if p not in old_paths]
    assert old and new
    with pytest.raises(query.QueryError, match="has no evidence: it was embedded before evidence was kept"):
        query.explain_pair(c, old[0], new[0])
    cols, rows = query.similar(c, old[0], 10, shared=True)
    assert all(r[-1] is None for r in rows)
    cols, rows = query.similar(c, new[0], 30, shared=True)
    assert all(r[-1] is None for r in rows if r[cols.index("sha256")] in old)
    # rows without words keep their stored distance; a file with words still re-scores its peers that have them
    stored = _stored_distances(c, new[0])
    got = {r[cols.index("sha256")]: r[cols.index("distance")] for r in rows}
    assert all(abs(d - stored[s]) < 1e-5 for s, d in got.items() if s in old)
    assert any(abs(d - stored[s]) > 1e-4 for s, d in got.items() if s not in old)
    assert all(abs(r[1] - stored_old) < 1e-5 for r, stored_old in
               ((r, _stored_distances(c, old[0])[r[2]]) for r in query.similar(c, old[0], 10)[1]))
    c.close()
    # a root none of whose files has the column: the macros exist and say so
    _drop_evidence(root, keep=0)
    c = query.connect(root, materialize=True)
    with pytest.raises(query.QueryError, match="has no evidence"):
        query.explain_pair(c, old[0], new[0])
    with pytest.raises(query.QueryError, match="has evidence"):
        query.family_profile(c, real.files[0].family)
    assert all(r[-1] is None for r in query.similar(c, new[0], 3, shared=True)[1])
    stored = _stored_distances(c, new[0])  # no words anywhere: the stored embedding alone
    assert all(abs(r[1] - stored[r[2]]) < 1e-5 for r in query.similar(c, new[0], 10)[1])
    c.close()


def test_the_command_explains_and_profiles(real, con, tmp_path):
    fam = real.files[0].family
    a, b = [sha_of(con, f.path) for f in real.files if f.family == fam][:2]
    env = {**os.environ, "EMBEDLIB_ROOT": real.root}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "jobs.query", *argv], cwd=REPO, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    proc = run("explain", a, b, "-k", "5", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "rank,side,item,kind,weight_a,weight_b,contribution" and lines[1].split(",")[1] == "both"
    proc = run("family", fam, "-k", "5", "--format", "json")
    assert proc.returncode == 0 and '"score"' in proc.stdout, proc.stderr
    proc = run("family", fam, "--neighbors", "--format", "csv")
    assert proc.returncode == 0 and proc.stdout.startswith("rank,family,neighbors"), proc.stderr
    proc = run("similar", "--sha256", a, "-k", "3", "--shared", "--format", "csv")
    assert proc.returncode == 0 and proc.stdout.splitlines()[0].endswith(",shared"), proc.stderr
    for argv, message in ((("explain", a, "00" * 32), "unknown sha256"), (("explain", a), "the following arguments"),
                          (("family", "nope"), "unknown family 'nope'")):
        proc = run(*argv)
        assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, argv
    # a materialised database explains too, without the root
    db = str(tmp_path / "e.duckdb")
    assert run("sql", "SELECT 1", "--db", db).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "explain", a, b, "--db", db, "--format", "csv"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and ",both," in proc.stdout, proc.stderr


# -- the fixed part before its fold, and similar()'s re-scoring (issue 22) ------------------------------------------

def _stored(con) -> tuple[list[str], np.ndarray, exact.WordRows]:
    t = con.execute("SELECT sha256, embedding, words FROM embeddings ORDER BY sha256").to_arrow_table()
    vectors = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32).reshape(t.num_rows, -1)
    return t.column("sha256").to_pylist(), vectors, exact.WordRows.from_arrow(t.column("words"))


def test_the_words_are_the_fixed_part_before_its_fold(real, con):
    ckpt = checkpoint.load(real.model)
    model = ckpt.model.eval()
    view, weights = model.exact_word_weights()
    learned = model.learned_dim
    store = Store(real.root)
    assert pq.read_schema(store.path(catalog.table_files(store, "embeddings")[0])).metadata[
        b"embedlib.learned_dim"] == str(learned).encode() and learned < ckpt.config.model.embedding_dim
    shas, vectors, words = _stored(con)
    at = {s: i for i, s in enumerate(shas)}
    top = Config().embed.exact_words
    whole = 0
    for f in real.files:
        i = at[sha_of(con, f.path)]
        ids = views.compute_views(open(f.path, "rb").read(), ckpt.config)[view]
        fixed = vectors[i, learned:].astype(np.float64)
        want_ids, want_w = exact.words_of(ids[None], weights, [np.linalg.norm(fixed)], top)[0]
        got = slice(words.indptr[i], words.indptr[i + 1])
        assert words.present[i] and np.array_equal(words.ids[got], want_ids)
        np.testing.assert_allclose(words.weights[got], want_w, rtol=1e-5)
        if (ids != views.TOKEN_ID_PAD).sum() <= top:  # every id kept: the fold of the words is the stored fixed part
            whole += 1
            np.testing.assert_allclose(words.weights[got] @ words.weights[got], fixed @ fixed, rtol=1e-4)
            folded = model.id_sets[view](torch.from_numpy(ids[None].astype(np.int64)), model.skip_idf_power)[0]
            np.testing.assert_allclose(fixed / np.linalg.norm(fixed), (folded / folded.norm()).double().numpy(),
                                       atol=1e-5)
    assert whole >= 3


def test_similar_rescores_its_candidates_as_the_evaluation_does(real, con):
    shas, vectors, words = _stored(con)
    learned = checkpoint.load(real.model).model.learned_dim
    scorer = retrieval.Reranked(vectors, learned, words, depth=exact.RERANK_DEPTH)
    plain = retrieval.Cosine(vectors)
    moved = 0
    for f in real.files[::5]:
        sha = sha_of(con, f.path)
        q = shas.index(sha)
        got = con.execute("SELECT sha256, distance FROM similar($s, 6)", {"s": sha}).fetchall()
        d = scorer.distances(np.array([q]))[0]
        order = sorted((i for i in range(len(shas)) if i != q), key=lambda i: (d[i], shas[i]))[:6]
        assert [s for s, _ in got] == [shas[i] for i in order]
        want = 1.0 - (vectors[order, :learned] @ vectors[q, :learned] + words.dots(q, np.array(order)))
        np.testing.assert_allclose([x for _, x in got], want, atol=1e-5)
        moved += int(np.abs(want - plain.distances(np.array([q]))[0][order]).max() > 1e-4)
        l2 = con.execute("SELECT sha256, distance FROM similar($s, 3, metric := 'l2')", {"s": sha}).fetchall()
        np.testing.assert_allclose([x for _, x in l2], np.linalg.norm(vectors[[shas.index(s) for s, _ in l2]]
                                                                      - vectors[q], axis=1), atol=1e-5)
    assert moved, "re-scoring changed no distance: the fold would be exact"


def test_compaction_keeps_the_rescoring(real, con, tmp_path):
    import shutil

    from embedlib.root import compact

    root = str(tmp_path / "root")
    shutil.copytree(real.root, root)
    sha = sha_of(con, real.files[0].path)
    before = con.execute("SELECT sha256, distance FROM similar($s, 8)", {"s": sha}).fetchall()
    compact.compact(root, target_mb=64)
    assert len(catalog.table_files(Store(root), "embeddings")) == 1
    c = query.connect(root)
    assert c.execute("SELECT learned_dim FROM embedlib_settings").fetchone()[0] == \
        checkpoint.load(real.model).model.learned_dim
    after = c.execute("SELECT sha256, distance FROM similar($s, 8)", {"s": sha}).fetchall()
    c.close()
    assert [s for s, _ in after] == [s for s, _ in before]
    np.testing.assert_allclose([d for _, d in after], [d for _, d in before], atol=1e-6)
