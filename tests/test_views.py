"""embedlib.views on real executables of this machine and on hostile input: shapes, exact run finding against a
plain reference, hash equality for equal strings, bounded cost on a 16 MiB input."""

from __future__ import annotations

import dataclasses
import glob
import os
import time

import numpy as np
import pytest

from embedlib import views

from embedlib.views import raster
from embedlib.config import Config, ConfigError, ViewsConfig, load

CFG = Config(views=ViewsConfig(names=views.VIEW_NAMES))


def real_executables(n: int) -> list[str]:
    paths = sorted(p for p in glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p)
                   and os.path.getsize(p) > 10_000)
    with_magic = [p for p in paths if open(p, "rb").read(4) == b"\x7fELF"]
    if len(with_magic) < n:
        pytest.skip("this machine lacks ELF files in /usr/bin")
    return with_magic[:: max(1, len(with_magic) // n)][:n]


def reference_runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Maximal runs of True of length >= min_len, the obvious way."""
    out, i, m = [], 0, mask.tolist()
    while i < len(m):
        if m[i]:
            j = i
            while j < len(m) and m[j]:
                j += 1
            if j - i >= min_len:
                out.append((i, j))
            i = j
        else:
            i += 1
    return out


def reference_strings(data: bytes, min_len: int) -> set[bytes]:
    """Printable ASCII + tab runs (what GNU `strings -n min_len` prints for a file's whole content)."""
    arr = np.frombuffer(data, np.uint8)
    ok = ((arr >= 0x20) & (arr <= 0x7E)) | (arr == 9)
    return {data[s:e] for s, e in reference_runs(ok, min_len)}


def check_specs(out: dict[str, np.ndarray], cfg: Config) -> None:
    specs = views.view_specs(cfg)
    assert set(out) == set(specs) == set(cfg.views.names)
    for name, (shape, dtype) in specs.items():
        assert out[name].shape == shape, name
        assert out[name].dtype == dtype, name
        assert np.all(np.isfinite(out[name])), name


def test_real_executables_every_view():
    for path in real_executables(8):
        data = open(path, "rb").read()
        out = views.compute_views(data, CFG)
        check_specs(out, CFG)
        assert np.array_equal(out["image"], raster.to_image(data, CFG.raster.size))
        # every distinct printable string >= 6 bytes is counted once in its bucket
        assert int(out["strings"].astype(np.int64).sum()) == len(reference_strings(data, 6)) or out["strings"].max() == 255
        assert out["idents"].sum() > 0  # dynamic symbol names: every dynamically linked ELF has some
        hist = out["bytehist"]
        assert hist[:256].sum() == pytest.approx(1.0, abs=1e-5) and hist[256:].sum() == pytest.approx(1.0, abs=1e-5)
        assert hist[0] == pytest.approx(data.count(0) / len(data), abs=1e-6)


def test_runs_match_the_reference_for_every_length():
    data = open(real_executables(1)[0], "rb").read()[:60_000]
    mask = views.printable(np.frombuffer(data, np.uint8))
    for min_len in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 33):
        starts, ends = views.runs(mask, min_len)
        assert list(zip(starts.tolist(), ends.tolist())) == reference_runs(mask, min_len), min_len


def test_equal_strings_hash_equal_anywhere_and_different_strings_differ():
    data = open(real_executables(1)[0], "rb").read()
    arr = np.frombuffer(data, np.uint8)
    starts, ends = views.runs(views.printable(arr), 6)
    hashes = views.hash_runs(arr, starts, ends).tolist()
    seen: dict[bytes, int] = {}
    for s, e, h in zip(starts.tolist(), ends.tolist(), hashes):
        assert seen.setdefault(data[s:e], h) == h
    assert len(set(hashes)) == len(seen)  # no collision among this file's distinct strings
    # the same string at the very end of the input (a load past the end) and shifted by one byte
    for prefix in (b"", b"\0", b"\0\0\0\0\0\0\0"):
        blob = prefix + b"hello, world\0xx\0hello, world"
        a = np.frombuffer(blob, np.uint8)
        h = views.hash_runs(a, *views.runs(views.printable(a), 6))
        assert len(h) == 2 and h[0] == h[1]


def test_long_strings_and_short_inputs_hash_without_error():
    for blob in (b"abcdefg", b"a" * 100_000, b"x" * 7 + b"\0" + b"y" * 70_000 + b"\xff"):
        a = np.frombuffer(blob, np.uint8)
        assert len(views.string_hashes(a, 6)) == (2 if b"\0" in blob else 1)
    long1 = np.frombuffer(b"q" * 40_000 + b"\0" + b"q" * 39_999 + b"r", np.uint8)
    assert len(views.string_hashes(long1, 6)) == 2


def test_identifiers_are_nul_bounded_names():
    blob = b"\0puts\0printf\0.text\0libc.so.6\0has space\0ab\0xx@GLIBC_2.2.5\0noend"
    a = np.frombuffer(blob, np.uint8)
    starts, ends = views.ident_runs(a, 4)
    names = {blob[s:e] for s, e in zip(starts.tolist(), ends.tolist())}
    assert names == {b"puts", b"printf", b".text", b"libc.so.6", b"xx@GLIBC_2.2.5"}


@pytest.mark.parametrize("data", [b"", b"\x7f", bytes(4096), os.urandom(200_000), b"\xff" * 3000,
                                  b"A" * 5000, b"\0abcdef\0" * 1000], ids=["empty", "one-byte", "zeros", "random",
                                                                           "ff", "one-long-string", "repeated"])
def test_hostile_inputs_give_fixed_shapes(data):
    out = views.compute_views(data, CFG)
    check_specs(out, CFG)
    if not data:
        assert all(not v.any() for v in out.values())


def test_sixteen_mib_is_bounded():
    """A 16 MiB input (input.max_bytes) of random bytes plus strings: computed in linear time, once; larger input
    is cut at max_bytes."""
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 16 * 1024 * 1024, dtype=np.uint8).tobytes()
    started = time.process_time()
    out = views.compute_views(blob + b"\0never seen string\0", CFG)
    seconds = time.process_time() - started
    check_specs(out, CFG)
    assert seconds < 60  # a guard against quadratic behaviour, not a benchmark (bench/ measures speed)
    assert np.array_equal(out["strings"], views.compute_views(blob, CFG)["strings"])  # beyond max_bytes: ignored


def test_bucket_counts_are_distinct_string_counts():
    h = np.array([1, 2, 3, 2**63, 2**64 - 1], dtype=np.uint64)
    counts = views.bucket_counts(h, 4)
    assert counts.tolist() == [3, 0, 1, 1]
    assert views.bucket_counts(np.zeros(0, np.uint64), 8).tolist() == [0] * 8
    with pytest.raises(ValueError):
        views.bucket_of(h, 6)


def test_views_config_is_validated():
    assert load(overrides=['views.names=["strings"]', "views.buckets=1024"]).views == \
        dataclasses.replace(ViewsConfig(), names=("strings",), buckets=1024)
    for bad in ('views.names=["nope"]', "views.buckets=1000", 'views.names=[]', "views.colour=1",
                'views.names=["image","image"]'):
        with pytest.raises(ConfigError):
            load(overrides=[bad])


def test_only_requested_views_are_computed():
    cfg = dataclasses.replace(CFG, views=dataclasses.replace(CFG.views, names=("strings",), buckets=256))
    out = views.compute_views(b"\0some string here\0", cfg)
    assert set(out) == {"strings"} and out["strings"].shape == (256,) and out["strings"].sum() == 1


def test_tokens_are_lowercased_words_split_at_punctuation_and_case():
    blob = b"\0libfoo_openWindow\0HTTPServer /usr/share/foo-bar.txt\0\x01ab\0XMLHttpRequest x86_64\0\0ls\0"
    a = np.frombuffer(blob, np.uint8)
    s, e = views.runs(views.printable(a), 4)
    buf, ws, we = views.word_runs(a, s, e, 3)
    words = [bytes(buf[x:y]) for x, y in zip(ws.tolist(), we.tolist())]
    assert words == [b"libfoo", b"open", b"window", b"http", b"server", b"usr", b"share", b"foo", b"bar", b"txt",
                     b"xml", b"http", b"request", b"x86"]
    # the same word in different strings and cases is one token; the view counts distinct words per bucket
    cfg = Config(views=ViewsConfig(names=("tokens",), buckets=1 << 16))
    out = views.compute_views(blob, cfg)["tokens"]
    assert int(out.sum()) == len(set(words))
    assert np.array_equal(views.compute_views(b"\0FOO_BAR\0", cfg)["tokens"],
                          views.compute_views(b"\0foo-bar\0", cfg)["tokens"])


def test_tokens_on_real_executables_and_hostile_input():
    cfg = Config(views=ViewsConfig(names=views.KNOWN_VIEWS))
    for path in real_executables(3):
        out = views.compute_views(open(path, "rb").read(), cfg)
        check_specs(out, cfg)
        assert out["tokens"].sum() > out["idents"].sum() > 0  # names split into words: more words than names
    for data in (b"", os.urandom(100_000), b"A" * 5000, b"aB" * 5000):
        check_specs(views.compute_views(data, cfg), cfg)


# -- token_ids: the words as fine-grained ids (the embedding's fixed part) ----------------------------------------

def test_token_ids_are_the_smallest_distinct_top_bits_of_the_word_hashes():
    hashes = np.array([5 << 44, 3 << 44, (5 << 44) + 1, 9 << 44, 1 << 44], np.uint64)  # two words share id 5
    ids = views.token_ids(hashes, 20, 3)
    assert ids.dtype == np.uint32 and ids.tolist() == [1, 3, 5]  # distinct, ascending, the 3 smallest
    padded = views.token_ids(hashes, 20, 6)
    assert padded.tolist() == [1, 3, 5, 9, views.TOKEN_ID_PAD, views.TOKEN_ID_PAD]
    assert views.token_ids(np.zeros(0, np.uint64), 20, 2).tolist() == [views.TOKEN_ID_PAD] * 2


def test_token_ids_view_holds_the_words_of_the_tokens_view_on_real_files():
    """Coarsened to the tokens' 4,096 buckets, a file's ids are exactly the tokens view's non-empty buckets (while
    it keeps them all), the compiled and the numpy definitions agree, and the smallest ids are a consistent
    sample: two files keep the same ids from the words they share."""
    cfg = Config()
    v = cfg.views
    shift = v.token_id_bits - (v.buckets.bit_length() - 1)
    kept = []
    for path in real_executables(6):
        data = open(path, "rb").read()
        got, ref = views.compute_views(data, cfg), views.compute_views_reference(data, cfg)
        assert got["token_ids"].shape == (v.token_ids,) and np.array_equal(got["token_ids"], ref["token_ids"]), path
        ids = got["token_ids"][got["token_ids"] != views.TOKEN_ID_PAD]
        assert len(ids) and np.all(np.diff(ids.astype(np.int64)) > 0)
        if len(ids) < v.token_ids:
            assert np.array_equal(np.unique(ids >> shift), np.flatnonzero(got["tokens"])), path
        kept.append(ids)
    a, b = kept[0], kept[1]
    top = min(a.max(), b.max())  # below both files' largest kept id, each kept every id it has
    assert set(a[a <= top]) & set(b[b <= top]) == set(a) & set(b) & set(range(int(top) + 1))


def test_document_frequency_counts_files_per_id():
    cfg = Config(views=ViewsConfig(token_id_bits=8, token_ids=3))
    pad = views.TOKEN_ID_PAD
    batch = np.array([[1, 7, pad], [7, 200, 255], [pad, pad, pad]], np.uint32)
    df = views.document_frequency("token_ids", batch, cfg)
    assert df.shape == (256,) and df[7] == 2 and df[1] == df[200] == df[255] == 1 and df.sum() == 5
    sketch = np.array([[0, 3, 1], [2, 0, 0]], np.uint8)
    assert views.document_frequency("tokens", sketch, cfg).tolist() == [1, 1, 1]
    assert views.weighted_views(Config()) == ["strings", "idents", "tokens", "token_ids"]


def test_token_ids_of_a_large_set_equal_the_sorted_definition():
    """Past 2 x keep words the smallest ids come from a partition, not a sort: the same ids, also when many words
    share an id (only the few smallest values distinct)."""
    rng = np.random.default_rng(1)
    many = rng.integers(0, 2**63, 50_000, dtype=np.uint64) * np.uint64(2)
    crowded = np.concatenate([np.repeat(np.arange(3, dtype=np.uint64) << np.uint64(44), 5000), many[:100]])
    for hashes in (many, crowded, many[:4100], many[:4096]):
        want = np.unique(hashes >> np.uint64(44)).astype(np.uint32)[:2048]
        got = views.token_ids(hashes, 20, 2048)
        assert np.array_equal(got[: len(want)], want) and np.all(got[len(want):] == views.TOKEN_ID_PAD)
