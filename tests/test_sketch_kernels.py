"""embedlib.views.kernels (the compiled strings, idents and tokens views) against their definition, the numpy
functions of embedlib.views (`views.compute_views_reference`): the same arrays, bit for bit, on real files of
this machine, random bytes and crafted edge cases, under several settings. A difference would silently change
every stored view under an unchanged views version."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
import pytest

from embedlib import views
from embedlib.views import kernels as sketch_kernels
from embedlib.config import Config, ViewsConfig

SKETCHES = ("strings", "idents", "tokens")

SETTINGS = {  # name -> ViewsConfig; buckets=1 is refused by config validation but bucket_of supports it
    "default": ViewsConfig(),
    "every-view": ViewsConfig(names=views.KNOWN_VIEWS),
    "strings-4-256": ViewsConfig(names=("strings",), strings_min_len=4, buckets=256),
    "idents-1-2": ViewsConfig(names=("idents",), idents_min_len=1, buckets=2),
    "tokens-only-long-idents": ViewsConfig(names=("tokens",), strings_min_len=4, idents_min_len=6, tokens_min_len=1,
                                           buckets=1 << 16),
    "all-1": ViewsConfig(names=("tokens", "strings", "idents"), strings_min_len=1, idents_min_len=1,
                         tokens_min_len=1, buckets=4096),
    "odd-lengths": ViewsConfig(names=("idents", "tokens", "strings"), strings_min_len=33, idents_min_len=2,
                               tokens_min_len=8, buckets=1024),
    "beyond-window": ViewsConfig(names=("strings", "idents"), strings_min_len=64, idents_min_len=40, buckets=4096),
    "one-bucket": ViewsConfig(names=SKETCHES, buckets=1),
}


def config(v: ViewsConfig) -> Config:
    return Config(views=v)


def assert_identical(data: bytes, v: ViewsConfig, what: str = "") -> None:
    cfg = config(v)
    want = views.compute_views_reference(data, cfg)
    got = views.compute_views(data, cfg)
    assert list(got) == list(want), what
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, (what, name)
        assert np.array_equal(got[name], want[name]), f"{what}: view {name} differs ({v})"


def machine_files(n: int, cap: int = 1 << 20) -> list[tuple[str, bytes]]:
    """n regular files of /usr/bin and /usr/lib, two thirds of them ELF, evenly spread over the sorted
    listing, each cut at `cap` bytes (a cut file is as good an input as any)."""
    elf, other = [], []
    for root in ("/usr/bin", "/usr/lib"):
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
                        continue
                    with open(path, "rb") as fh:
                        (elf if fh.read(4) == b"\x7fELF" else other).append(path)
                except OSError:
                    continue
    n_elf = min(len(elf), 2 * n // 3)
    chosen = elf[:: max(1, len(elf) // max(1, n_elf))][:n_elf]
    chosen += other[:: max(1, len(other) // max(1, n - len(chosen)))][: n - len(chosen)]
    if n_elf < n // 3:
        pytest.skip("this machine has too few executables in /usr/bin and /usr/lib")
    out = []
    for path in chosen:
        with open(path, "rb") as fh:
            out.append((path, fh.read(cap)))
    return out


@pytest.fixture(scope="module")
def real_files() -> list[tuple[str, bytes]]:
    return machine_files(300)


def test_position_keys_are_the_views_keys():
    assert np.array_equal(sketch_kernels._KEYS, views._CHUNK_KEYS)


def test_identical_on_real_files_default_settings(real_files):
    assert sum(data[:4] == b"\x7fELF" for _, data in real_files) >= len(real_files) // 2
    for path, data in real_files:
        assert_identical(data, SETTINGS["default"], path)


@pytest.mark.parametrize("setting", [k for k in SETTINGS if k != "default"])
def test_identical_on_real_files_other_settings(real_files, setting):
    for path, data in real_files[::6]:
        assert_identical(data, SETTINGS[setting], path)


def biased_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Random bytes drawn mostly from the characters that matter: letters of both cases, digits, identifier
    punctuation, NULs, tabs, spaces, other printable and non-printable bytes; many short runs and names."""
    alphabet = np.frombuffer(b"aAbBzZqQxX09_.@$-/ \t\0\0\0\0\x01\x7f\x80\xff%:~", np.uint8)
    return alphabet[rng.integers(0, len(alphabet), n)].tobytes()


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_identical_on_random_bytes(setting):
    rng = np.random.default_rng(19)
    for n in list(range(0, 20)) + [63, 64, 65, 127, 128, 129, 1000, 4099, 100_000]:
        assert_identical(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), SETTINGS[setting], f"uniform {n}")
        assert_identical(biased_bytes(rng, n), SETTINGS[setting], f"biased {n}")


def crafted() -> dict[str, bytes]:
    """Inputs aimed at each rule and each boundary of the kernels."""
    cases = {
        "run-at-start": b"hello world\0\x01",
        "run-at-end": b"\x01\0hello world",
        "whole-input-one-run": b"hello world",
        "ident-at-start-no-nul-before": b"puts\0exit\0",
        "ident-at-end-no-nul-after": b"\0puts\0exit",
        "tabs": b"\0\tfoo\tbar\t\0tab\there\0\t\t\t\t\t\t\t\0",
        "camel": b"\0fooBar\0HTTPServer\0XMLHttpRequest\0utf8Decoder\0ABC1def\0x86_64\0getHTTPResponseCode\0",
        "capitals-then-next-run-lowercase": b"\0FOOBAR\0\x01barbaz\0",  # the numpy lookahead into the next run
        "capitals-then-short-ident-lowercase": b"\x01SOME STRING XY\x01\0ab\0\x01\0cdef\0",
        "last-run-ends-in-capitals": b"\x01aaaaaaaaAB",
        "digits": b"\0123456\0v1.2.3\0a1b2c3\0\x01 2024-01-01T00:00:00Z \x01",
        "case-mix": b"\0aB\0Ab\0ABc\0aBC\0abC\0ABCD\0AbCdEf\0",
        "only-punct": b"\0____....----\0@@@$$$\0",
        "repeated": b"\0same string\0" * 500,
        "binary-then-strings": bytes(range(256)) * 4 + b"\0printable text here\0",
    }
    for k in range(1, 9):  # inputs shorter than 8 bytes, and exactly 8
        cases[f"short-{k}"] = b"aB\0cd\tEf"[:k]
        cases[f"short-printable-{k}"] = b"Abcdefgh"[:k]
    for size in (4095 * 8, 4096 * 8, 4097 * 8, 40_000, 70_001):  # position keys clamp at word 4095
        cases[f"long-{size}"] = b"\0" + b"a" * size + b"\0"
        cases[f"long-camel-{size}"] = b"\0" + (b"xY" * size)[:size] + b"\0"
        cases[f"long-text-{size}"] = (b"The quick brown Fox, jumps over 13 lazy DOGS; " * (size // 40))[:size]
    cases["two-long-differ-at-end"] = b"q" * 40_000 + b"\0" + b"q" * 39_999 + b"r"
    for offset in range(58, 72):  # words, cuts and capitals across the 64-byte chunks of a run
        cases[f"chunk-edge-{offset}"] = (b"\0" + b"a" * offset + b"BCd" + b"e" * 70 + b"FG\0"
                                         + b"h" * (offset % 7) + b"IJk\0")
        cases[f"chunk-edge-caps-{offset}"] = b"\x01" + b"A" * offset + b"bc\x01" + b"Z" * (offset + 1) + b"\x01"
    return cases


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_identical_on_crafted_inputs(setting):
    for name, data in crafted().items():
        assert_identical(data, SETTINGS[setting], name)
        for cut in (1, 7, 8, 9, 63, 64, 65) if len(data) < 10_000 else (1, 64):  # runs ending near the buffer's end
            if len(data) > cut:
                assert_identical(data[:-cut], SETTINGS[setting], f"{name}[:-{cut}]")


def test_token_lookahead_across_runs_is_the_reference_rule():
    """The rule the kernels keep on purpose: FOOBAR followed (in the tokens' run order) by a run that starts
    with a lowercase letter splits as FOOBA|R; followed by one that does not, FOOBAR is one word."""
    cfg = config(ViewsConfig(names=("tokens",), tokens_min_len=1, buckets=1 << 16))
    linked = views.compute_views(b"\0FOOBAR\0\x01barbaz\0", cfg)["tokens"]
    alone = views.compute_views(b"\0FOOBAR\0\x01BARBAZ\0", cfg)["tokens"]
    assert int(linked.sum()) == 3 and int(alone.sum()) == 2  # fooba, r, barbaz / foobar, barbaz
    assert_identical(b"\0FOOBAR\0\x01barbaz\0", cfg.views)


def test_any_buffer_type_gives_the_same_views():
    data = b"\0libfoo_openWindow\0HTTPServer /usr/share/foo-bar.txt\0" * 3
    cfg = config(ViewsConfig())
    want = views.compute_views(data, cfg)
    for other in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8).copy()):
        got = views.compute_views(other, cfg)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    unaligned = np.frombuffer(b"x" + data, np.uint8)[1:]
    got = sketch_kernels.sketch_views(unaligned, SKETCHES, 6, 4, 3, 4096)
    assert all(np.array_equal(got[k], want[k]) for k in got)


def test_max_bytes_cuts_before_the_kernels():
    data = b"\0first string\0" + b"\0second string\0"
    cfg = dataclasses.replace(config(ViewsConfig()), input=dataclasses.replace(Config().input, max_bytes=14))
    assert np.array_equal(views.compute_views(data, cfg)["strings"], views.compute_views(data[:14], cfg)["strings"])
    assert_identical(data, cfg.views)


def test_bad_settings_are_refused():
    arr = np.zeros(16, np.uint8)
    with pytest.raises(ValueError):
        sketch_kernels.sketch_views(arr, SKETCHES, 6, 4, 3, 1000)
    with pytest.raises(ValueError):
        sketch_kernels.sketch_views(arr, SKETCHES, 0, 4, 3, 4096)


def test_cache_folder_falls_back_only_when_numba_has_none(tmp_path):
    defaults = [str(tmp_path / "pkg" / "__pycache__"), str(tmp_path / "home" / ".cache" / "numba")]
    assert sketch_kernels.fallback_cache_dir({}, defaults) is None  # writable: numba's own choice
    assert sketch_kernels.fallback_cache_dir({}, defaults, writable=lambda d: d == defaults[1]) is None
    assert sketch_kernels.fallback_cache_dir({"NUMBA_CACHE_DIR": "/x"}, defaults, writable=lambda d: False) is None
    folder = sketch_kernels.fallback_cache_dir({}, defaults, writable=lambda d: False)
    assert folder and os.path.isdir(folder) and os.stat(folder).st_uid == os.getuid()
    assert not os.stat(folder).st_mode & 0o022


def test_imports_from_a_read_only_install_with_a_read_only_home(tmp_path):
    """Where neither the package folder nor the home is writable (a cluster image with a read-only root file
    system), numba's cache=True alone raises at import; the kernels' module falls back to a private folder
    under the temporary directory. Simulated with read-only bind mounts in a private mount namespace (needs
    root and unshare; skipped elsewhere)."""
    import shutil
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    install, home = tmp_path / "site", tmp_path / "home"
    shutil.copytree(os.path.join(repo, "embedlib"), install / "embedlib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home.mkdir()
    script = (f"mount --bind {install} {install} && mount -o remount,bind,ro {install} && "
              f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
              f"HOME={home} PYTHONPATH={install} NUMBA_CACHE_DIR= {sys.executable} -c "
              "'import os, embedlib.views.kernels as k; print(os.environ[\"NUMBA_CACHE_DIR\"], k.__file__)'")
    try:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode:
        pytest.skip("cannot make a mount namespace here (not root?)")
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)  # not the repository: its embedlib would win
    assert run.returncode == 0, run.stderr[-2000:]
    cache_dir, module = run.stdout.split()
    assert module.startswith(str(install)) and cache_dir.startswith(os.path.realpath(tempfile.gettempdir()))
