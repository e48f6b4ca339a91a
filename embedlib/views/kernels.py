"""Compiled (numba) kernels for the sketch views `strings`, `idents` and `tokens` of embedlib.views: a few
passes over a file's bytes instead of the numpy pipeline's dozens of temporary arrays, bit-identical to it.

Why compiled: the numpy version (`views.compute_views_reference`) spends its time materialising per-byte and
per-word temporaries (masks, index arrays, np.repeat, np.unique's sort) and ran at about 0.27 GB/s per core,
most of a file's CPU. Here each byte is read a few times into registers and each distinct hash lands in a small
open-addressing set: about one pass over the bytes plus one hash per string and word.

What must not change (the views version, so every stored corpus and model, depends on it); the tests
(tests/test_sketch_kernels.py) compare the result with the numpy reference on real files:
  runs      maximal runs of printable bytes (0x20..0x7e and tab) of >= min_len bytes (`views.runs`)
  idents    the runs with a NUL byte right before and right after, of [A-Za-z0-9_.@$-] only
  tokens    the words of the strings (runs >= strings_min_len) laid end to end, then of the identifier runs
            among the shorter runs: letters and digits, cut at fooBar and HTTPServer boundaries, lowercased
            (`views.word_runs`). The numpy version finds the HTTPServer cut by looking one byte past a run's
            end, into the NEXT run of that order (a run that ends in two capitals, followed by a run that starts
            with a lowercase letter, loses its last capital to a one-letter word); `_word_hashes` keeps that.
  hash      8-byte little-endian words, splitmix64's finaliser, a key per word position (word 4095 and every
            later one use the last key), summed, mixed with the length (`views.hash_runs`)
  counts    distinct hashes per bucket (the hash's top bits), clipped at 255 (`views.bucket_counts`)

How it is fast in numba: bytes are classified 64 at a time into bit masks by vector compares (`_printable64`,
`_range64`: a few lines of LLVM IR through numba's documented intrinsic API, which LLVM lowers to the host's
SIMD instructions; nothing for CI to compile but numba's own JIT), and runs, words and cuts are then read off
the masks with count-trailing-zeros instead of a branch per byte. The per-byte and per-word helpers take the
buffer's ADDRESS (an integer) and read it with one-instruction loads (`_load8`, `_load1`), never the array
itself: numba reference-counts an array on every call that takes one (two atomic operations), and that cost
more than the work. Helpers that take arrays are called once per file. One thread per call (a Ray task runs
one); no parallel=True.

Compilation: lazy, on a process's first call (`sketch_counts`): about 5 s of CPU, once, then cached on disk
(cache=True); a later process pays about 0.2 s to import numba and 0.2 s to load the cached code, once (a Ray
worker process keeps it for all its tasks). See `fallback_cache_dir` for read-only installs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping

import numpy as np


def _writable(folder: str) -> bool:
    """Whether a file can be created in `folder` (made if missing): numba's own test for a cache folder."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def fallback_cache_dir(environ: Mapping[str, str], defaults: list[str], writable=_writable) -> str | None:
    """The NUMBA_CACHE_DIR to set so that numba's on-disk cache works where the package is read-only, or None.

    numba caches next to the source (__pycache__), else in the user's cache folder (~/.cache/numba); when
    neither is writable (a cluster image with a read-only root file system and no home), `cache=True` raises
    at import. Then, and only when NUMBA_CACHE_DIR is not set already, the cache goes to a per-user folder
    under the temporary directory, so that the worker processes of one machine compile once between them
    instead of once each."""
    if environ.get("NUMBA_CACHE_DIR") or any(writable(folder) for folder in defaults):
        return None
    return _private_folder(os.path.join(tempfile.gettempdir(), f"embedlib-numba-{os.getuid()}"))


def _private_folder(path: str) -> str:
    """path, made if missing, when it is a real folder of ours that nobody else can write to; else a fresh
    private folder (numba's cache holds pickles and machine code: one that another user could have planted in
    a shared /tmp must not be loaded)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if os.path.isdir(path) and not os.path.islink(path) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return path
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="embedlib-numba-")


def _numba_default_cache_dirs() -> list[str]:
    return [os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"),
            os.path.join(os.path.expanduser("~"), ".cache", "numba")]


_fallback = fallback_cache_dir(os.environ, _numba_default_cache_dirs())
if _fallback:
    os.environ["NUMBA_CACHE_DIR"] = _fallback

import numba  # noqa: E402  (after the cache folder is settled: numba reads NUMBA_CACHE_DIR on import)
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.cpython.unsafe.numbers import trailing_zeros  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

if _fallback and not numba.config.CACHE_DIR:  # numba was imported before us: its config is already read
    numba.config.CACHE_DIR = _fallback
if sys.byteorder != "little":  # `_load8` reads words in the host's order; views.hash_runs defines little-endian
    raise ImportError("embedlib.views.kernels needs a little-endian host")

_U = np.uint64
_K = _U(0x9E3779B97F4A7C15)
_M1 = _U(0xBF58476D1CE4E5B9)
_M2 = _U(0x94D049BB133111EB)
_HIGH = _U(0x8080808080808080)
_MAX_WINDOW = 32  # runs are found with a window of at most this many bytes, then filtered by their length


def _position_keys() -> np.ndarray:
    """views._CHUNK_KEYS, computed here (not imported) so that numba's cache, keyed on this file's content,
    cannot keep compiled code that disagrees with them; a test checks they are equal."""
    with np.errstate(over="ignore"):
        h = np.arange(1, 4097, dtype=np.uint64) * _K
        h ^= h >> _U(30)
        h *= _M1
        h ^= h >> _U(27)
        h *= _M2
        h ^= h >> _U(31)
    return h | _U(1)


_KEYS = _position_keys()
_LAST_KEY = len(_KEYS) - 1
_IDENT = np.zeros(256, dtype=np.uint8)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@$-":
    _IDENT[_c] = 1
_OTHER, _DIGIT, _LOWER, _UPPER = 0, 1, 2, 3
_CLASS = np.zeros(256, dtype=np.uint8)
_CLASS[ord("0") : ord("9") + 1] = _DIGIT
_CLASS[ord("a") : ord("z") + 1] = _LOWER
_CLASS[ord("A") : ord("Z") + 1] = _UPPER

# Only the entry point (`sketch_counts`) is cached: its compiled code includes everything it calls. The
# helpers called once per file and view (`_helper`) are ordinary jitted functions; the per-byte and per-word
# helpers (`_inline`, scalar arguments only) are inlined into their callers at numba's IR level, because numba
# does not get LLVM to inline one jitted function into another reliably, and a call per 8 bytes would cost
# more than the work.
_jit = numba.njit(cache=True, nogil=True, boundscheck=False)
_helper = numba.njit(nogil=True, boundscheck=False)
_inline = numba.njit(inline="always", boundscheck=False)


# ---------------------------------------------------------------------------------------------------
# Reading the buffer by address
# ---------------------------------------------------------------------------------------------------

@intrinsic
def _load8(typingctx, addr, pos):
    """The 8 bytes at address addr + pos as a little-endian uint64: one unaligned load. The caller keeps
    pos <= len - 8 (numba would otherwise emit eight byte loads, at a quarter of the speed)."""
    if not (isinstance(addr, types.Integer) and isinstance(pos, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(builder.add(args[0], args[1]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return types.uint64(addr, pos), codegen


@intrinsic
def _load1(typingctx, addr, pos):
    """The byte at address addr + pos."""
    if not (isinstance(addr, types.Integer) and isinstance(pos, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(builder.add(args[0], args[1]), ir.IntType(8).as_pointer()))

    return types.uint8(addr, pos), codegen


@_inline
def _word(addr, last, pos, end):
    """The bytes [pos, min(pos + 8, end)) as a little-endian uint64, zero above. A load never starts past
    `last` (the buffer's length - 8): near the end it starts earlier and shifts, as views.hash_runs does."""
    q = min(pos, last)
    w = _load8(addr, q) >> _U(8 * (pos - q))
    return w & (~_U(0) >> _U(64 - 8 * min(end - pos, 8)))  # no branch: short words are the common case


# ---------------------------------------------------------------------------------------------------
# Hashing (views.hash_runs, one run at a time)
# ---------------------------------------------------------------------------------------------------

@_inline
def _mix(h):
    """splitmix64's finaliser (uint64, wrapping), as views._mix."""
    h ^= h >> _U(30)
    h *= _M1
    h ^= h >> _U(27)
    h *= _M2
    h ^= h >> _U(31)
    return h


@_inline
def _lowercase(w):
    """A-Z -> a-z in each byte of w, whose bytes are all < 0x80 (letters, digits, zero padding): carry-free."""
    upper = (w + _U(0x3F3F3F3F3F3F3F3F)) & ~(w + _U(0x2525252525252525)) & _HIGH  # 0x41 <= byte <= 0x5a
    return w + (upper >> _U(2))


@_inline
def _hash(addr, last, start, end, lower):
    """views.hash_runs of the bytes [start, end) (lowercased first when `lower`)."""
    if end - start <= 8:  # most strings' words and many names: one word, no loop
        w = _word(addr, last, start, end)
        if lower:
            w = _lowercase(w)
        return _mix(_mix(w + _K) * _KEYS[0] + _U(end - start) * _K)
    total = _U(0)
    k = 0
    for pos in range(start, end, 8):
        w = _word(addr, last, pos, end)
        if lower:
            w = _lowercase(w)
        total += _mix(w + _K) * _KEYS[min(k, _LAST_KEY)]
        k += 1
    return _mix(total + _U(end - start) * _K)


# ---------------------------------------------------------------------------------------------------
# Printable runs: 64 bytes at a time as a bit mask (views.runs of views.printable)
# ---------------------------------------------------------------------------------------------------

@intrinsic
def _printable64(typingctx, addr, pos):
    """uint64 whose bit j says whether the byte at addr + pos + j is printable (0x20..0x7e or a tab): one
    64-byte vector load, two compares and a bit cast of the <64 x i1> result, which LLVM lowers to the host's
    SIMD compare-to-mask instructions (AVX-512, AVX2 or SSE2 movemask). The caller keeps pos <= len - 64."""
    if not (isinstance(addr, types.Integer) and isinstance(pos, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.inttoptr(builder.add(args[0], args[1]), vec.as_pointer()), align=1)
        splat = lambda x: ir.Constant(vec, [x] * 64)  # noqa: E731
        printable = builder.icmp_unsigned("<", builder.sub(v, splat(0x20)), splat(0x7F - 0x20))
        tab = builder.icmp_unsigned("==", v, splat(0x09))
        return builder.bitcast(builder.or_(printable, tab), ir.IntType(64))

    return types.uint64(addr, pos), codegen


@intrinsic
def _range64(typingctx, addr, pos, lo, width):
    """uint64 whose bit j says whether lo <= the byte at addr + pos + j < lo + width (as `_printable64`)."""
    if not all(isinstance(t, types.Integer) for t in (addr, pos, lo, width)):
        return None

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.inttoptr(builder.add(args[0], args[1]), vec.as_pointer()), align=1)

        def splat(x):
            one = builder.insert_element(ir.Constant(vec, None), builder.trunc(x, ir.IntType(8)),
                                         ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(vec, None),
                                          ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))

        inside = builder.icmp_unsigned("<", builder.sub(v, splat(args[2])), splat(args[3]))
        return builder.bitcast(inside, ir.IntType(64))

    return types.uint64(addr, pos, lo, width), codegen


@_inline
def _block_bits(addr, n, base):
    """uint64 whose bit j says whether byte base + j is printable; 0 at and past n."""
    if base + 64 <= n:
        return _printable64(addr, base)
    bits = _U(0)
    for j in range(max(n - base, 0)):
        c = _load1(addr, base + j)
        if (c >= 0x20 and c < 0x7F) or c == 0x09:
            bits |= _U(1) << _U(j)
    return bits


@_inline
def _is_identifier(addr, last, n, start, end):
    """A NUL byte right before and right after [start, end), and identifier characters only inside: 64 bytes at
    a time with vector compares ([A-Za-z0-9] and _ . @ $ -), a byte loop for the last bytes of the buffer."""
    if start == 0 or end >= n or _load1(addr, start - 1) != 0 or _load1(addr, end) != 0:
        return False
    for base in range(start, end, 64):
        m = min(64, end - base)
        if base + 64 <= last + 8:
            ok = (_range64(addr, base, 0x41, 26) | _range64(addr, base, 0x61, 26) | _range64(addr, base, 0x30, 10)
                  | _range64(addr, base, 0x5F, 1) | _range64(addr, base, 0x2E, 1) | _range64(addr, base, 0x40, 1)
                  | _range64(addr, base, 0x24, 1) | _range64(addr, base, 0x2D, 1))
            valid = ~_U(0) if m == 64 else (_U(1) << _U(m)) - _U(1)
            if ok & valid != valid:
                return False
        else:
            for i in range(base, base + m):
                if _IDENT[_load1(addr, i)] == 0:
                    return False
    return True


@_helper
def _runs(addr, last, n, min_len, long_min, ident_min, hash_long, hash_idents):
    """The printable runs (views.runs(views.printable(arr), min_len)) that a view uses: those of >= long_min
    bytes (strings) and the NUL-bounded identifier runs of >= ident_min bytes (views.identifiers_among); the
    others (most runs of code sections) are dropped here. Returns (starts, ends, identifier flag, hash): the
    hash (views.hash_runs) of the long runs when hash_long and of the identifier runs when hash_idents, else
    undefined. Each run is checked and hashed as soon as it ends, while its bytes are in the L1 cache.

    A 64-byte block's printable mask is ANDed with itself shifted by 1..w-1 bits (the next block's bits shifted
    in), which leaves bit j set exactly where the w bytes from j on are all printable (w = min(min_len, 32));
    the runs are the maximal runs of that sparse mask, read from its transitions with count-trailing-zeros,
    then kept when at least min_len long. One block past the end closes a run that reaches it.

    The output arrays are allocated at their largest possible size, uninitialised: only the pages written are
    ever backed by memory, and an array that is never reassigned is not reference-counted in the loop."""
    width = min(min_len, _MAX_WINDOW)
    most = n // (min_len + 1) + 1  # runs of >= min_len bytes with a byte between each two
    starts = np.empty(most, np.int64)
    ends = np.empty(most, np.int64)
    flags = np.empty(most, np.uint8)
    hashes = np.empty(most, np.uint64)
    count = 0
    blocks = (n + 63) // 64
    nxt = _block_bits(addr, n, 0)
    carry = _U(0)  # the window's bit 63 in the previous block
    open_at = -1
    for b in range(blocks + 1):
        cur = nxt
        nxt = _block_bits(addr, n, 64 * (b + 1))
        window = cur
        for k in range(1, width):
            window &= (cur >> _U(k)) | (nxt << _U(64 - k))
        edges = window ^ ((window << _U(1)) | carry)
        carry = window >> _U(63)
        while edges:
            j = 64 * b + np.int64(trailing_zeros(edges))
            edges &= edges - _U(1)
            if open_at < 0:
                open_at = j
                continue
            start, end = open_at, j + width - 1
            open_at = -1
            length = end - start
            if length < min_len:
                continue
            identifier = length >= ident_min and _is_identifier(addr, last, n, start, end)
            if length < long_min and not identifier:
                continue
            starts[count], ends[count], flags[count] = start, end, identifier
            if (hash_long and length >= long_min) or (hash_idents and identifier):
                hashes[count] = _hash(addr, last, start, end, False)
            count += 1
    return starts[:count], ends[:count], flags[:count], hashes[:count]


@_helper
def _picked(starts, ends, min_len, flags, flagged_only):
    """The indices of the runs of >= min_len bytes (only of the flagged ones when flagged_only)."""
    out = np.empty(len(starts), np.int64)
    count = 0
    for r in range(len(starts)):
        if ends[r] - starts[r] >= min_len and (not flagged_only or flags[r]):
            out[count] = r
            count += 1
    return out[:count]


@_helper
def _token_runs(starts, ends, long_min, identifiers):
    """The runs whose words are tokens, in the numpy version's order: the strings (>= long_min bytes) in file
    order, then the identifier runs among the shorter runs, in file order. The order matters through the byte
    that follows each run in it (see `_word_hashes`)."""
    m = len(starts)
    ts = np.empty(m, np.int64)
    te = np.empty(m, np.int64)
    t = 0
    for r in range(m):
        if ends[r] - starts[r] >= long_min:
            ts[t], te[t] = starts[r], ends[r]
            t += 1
    for r in range(m):
        if ends[r] - starts[r] < long_min and identifiers[r]:
            ts[t], te[t] = starts[r], ends[r]
            t += 1
    return ts[:t], te[:t]


@_inline
def _class_bits(addr, buflen, base, m):
    """(letters or digits, uppercase, lowercase) bit masks of the m <= 64 bytes from base on (bit j: byte
    base + j); bits from m on are 0. Vector compares, or a byte loop for the last bytes of the buffer."""
    if base + 64 <= buflen:
        upper = _range64(addr, base, 0x41, 26)
        lower = _range64(addr, base, 0x61, 26)
        alnum = upper | lower | _range64(addr, base, 0x30, 10)
    else:
        upper, lower, alnum = _U(0), _U(0), _U(0)
        for j in range(m):
            c = _CLASS[_load1(addr, base + j)]
            bit = _U(1) << _U(j)
            if c != _OTHER:
                alnum |= bit
            if c == _UPPER:
                upper |= bit
            elif c == _LOWER:
                lower |= bit
    valid = ~_U(0) if m == 64 else (_U(1) << _U(m)) - _U(1)
    return alnum & valid, upper & valid, lower & valid


@_helper
def _word_hashes(addr, last, ts, te, min_len):
    """Hashes of the lowercased words of >= min_len bytes in the runs [ts[r], te[r]) (views.word_runs): maximal
    letter/digit runs, cut before an uppercase letter that follows a lowercase one, and before the last capital
    of a capital run that a lowercase letter follows. That lowercase letter may be the first byte of the NEXT
    run (the numpy version lays the runs end to end and looks across), never past the last run.

    64 bytes of a run at a time, as bit masks (no branch per byte): a word starts at a letter or digit that
    follows none or sits at a cut, and ends before a byte that is neither or is a cut; starts and ends
    alternate, so the k-th start pairs with the k-th end (a word still open at a chunk's end carries over).
    Words do not overlap, so a run of L bytes holds at most L // min_len of them: the output is allocated at
    that size (+ 1 for the slot that a too short word is written to and not kept), uninitialised (see
    `_runs`)."""
    most = 1
    for r in range(len(ts)):
        most += (te[r] - ts[r]) // min_len
    out = np.empty(most, np.uint64)
    word_starts = np.empty(most, np.int64)
    word_ends = np.empty(most, np.int64)
    count = 0
    buflen = last + 8
    for r in range(len(ts)):
        start, end = ts[r], te[r]
        after_lower = r + 1 < len(ts) and _CLASS[_load1(addr, ts[r + 1])] == _LOWER
        open_at = -1  # where a word that goes on into the next chunk started
        carry_alnum, carry_upper, carry_lower = _U(0), _U(0), _U(0)  # bit 63 of the previous chunk
        for base in range(start, end, 64):
            m = min(64, end - base)
            alnum, upper, lower = _class_bits(addr, buflen, base, m)
            next_lower = _CLASS[_load1(addr, base + 64)] == _LOWER if base + 64 < end else after_lower
            lower_next = (lower >> _U(1)) | (_U(next_lower) << _U(m - 1))  # bit j: byte j + 1 is lowercase
            alnum_prev = (alnum << _U(1)) | carry_alnum  # bit j: byte j - 1 is a letter or digit
            cut = upper & (((lower << _U(1)) | carry_lower) | (((upper << _U(1)) | carry_upper) & lower_next))
            starts = alnum & (~alnum_prev | cut)
            ends = alnum_prev & (~alnum | cut)  # bit j: a word ends right before byte j
            carry_alnum, carry_upper, carry_lower = alnum >> _U(63), upper >> _U(63), lower >> _U(63)
            if open_at >= 0 and ends:
                j = base + np.int64(trailing_zeros(ends))
                ends &= ends - _U(1)
                if j - open_at >= min_len:
                    out[count] = _hash(addr, last, open_at, j, True)
                    word_starts[count], word_ends[count] = open_at, j
                    count += 1
                open_at = -1
            while starts:
                i = base + np.int64(trailing_zeros(starts))
                starts &= starts - _U(1)
                if ends:
                    j = base + np.int64(trailing_zeros(ends))
                    ends &= ends - _U(1)
                    out[count] = _hash(addr, last, i, j, True)  # kept only when long enough: no branch
                    word_starts[count], word_ends[count] = i, j
                    count += j - i >= min_len
                else:
                    open_at = i
        if open_at >= 0 and end - open_at >= min_len:  # a word up to the end of a run whose last chunk is full
            out[count] = _hash(addr, last, open_at, end, True)
            word_starts[count], word_ends[count] = open_at, end
            count += 1
    return out[:count], word_starts[:count], word_ends[:count]


# ---------------------------------------------------------------------------------------------------
# Distinct hashes per bucket
# ---------------------------------------------------------------------------------------------------

@_helper
def _fill(table, hashes, start, counts, shift, state, firsts):
    """Insert hashes[start:] into the set `table` (linear probing; 0 marks a free slot, so the hash 0 is kept
    on the side in state[1]) and count each hash not seen before in its bucket (its top bits; shift 64: one
    bucket), until the table is half full (state[0] slots used). Each hash not seen before also has its
    position appended to `firsts` (state[2] of them so far): one occurrence of every distinct item, which the
    evidence (embedlib.views.evidence) reads its text from. Returns the position reached. The table is never
    reassigned here: numba would reference-count it on every hash."""
    mask = _U(len(table) - 1)
    used = state[0]
    seen = state[2]
    for p in range(start, len(hashes)):
        if 2 * used >= len(table):
            state[0] = used
            state[2] = seen
            return p
        h = hashes[p]
        if h == 0:
            if state[1]:
                continue
            state[1] = 1
        else:
            i = h & mask
            while table[i] != 0 and table[i] != h:
                i = (i + _U(1)) & mask
            if table[i] == h:
                continue
            table[i] = h
            used += 1
        counts[0 if shift == 64 else np.int64(h >> _U(shift))] += 1
        firsts[seen] = p
        seen += 1
    state[0] = used
    state[2] = seen
    return len(hashes)


@_helper
def _rehashed(table):
    """The set `table` in a table twice as large."""
    bigger = np.zeros(2 * len(table), np.uint64)
    mask = _U(len(bigger) - 1)
    for h in table:
        if h != 0:
            i = h & mask
            while bigger[i] != 0:
                i = (i + _U(1)) & mask
            bigger[i] = h
    return bigger


@_helper
def _distinct_counts(hashes, buckets, expected):
    """(uint8 [buckets]: how many DISTINCT hashes fall in each bucket, clipped at 255, as
    views.bucket_counts(np.unique(hashes), buckets), with a set instead of a sort; the position in `hashes` of
    the first occurrence of each distinct hash, in order). The set starts with room for `expected` distinct
    hashes (a file's strings are mostly distinct; its words mostly recur: ~5000 words are ~600 distinct ones)
    and doubles when half full."""
    shift = 64
    b = buckets
    while b > 1:
        b //= 2
        shift -= 1
    size = 64
    while size < 2 * expected:
        size *= 2
    table = np.zeros(size, np.uint64)
    state = np.zeros(3, np.int64)
    counts = np.zeros(buckets, np.int64)
    firsts = np.empty(len(hashes), np.int64)
    p = 0
    while True:
        p = _fill(table, hashes, p, counts, shift, state, firsts)
        if p == len(hashes):
            break
        table = _rehashed(table)
    return np.minimum(counts, 255).astype(np.uint8), firsts[: state[2]]


@_jit
def sketch_counts(arr, n, want_strings, want_idents, want_tokens, strings_min, idents_min, tokens_min, buckets):
    """(strings, idents, tokens) uint8 [buckets] of the first n bytes of arr (a C-contiguous uint8 array of at
    least max(n, 8) bytes: a shorter input comes zero-padded); a view not wanted is all zeros. Then, per view
    in the same order, its distinct items: (hashes, starts, ends) of one occurrence of each distinct string,
    name or word (a word's bytes are to be lowercased), in order of first occurrence; empty for a view not
    wanted. The items cost one position per distinct item and two per word occurrence: the views are counted
    from the same hashes either way."""
    addr = arr.ctypes.data
    last = len(arr) - 8
    shortest = min(strings_min, idents_min) if (want_idents or want_tokens) else strings_min
    never = n + 1  # a length no run has
    long_min = strings_min if (want_strings or want_tokens) else never
    ident_min = idents_min if (want_idents or want_tokens) else never
    starts, ends, flags, hashes = _runs(addr, last, n, shortest, long_min, ident_min, want_strings, want_idents)
    empty = np.zeros(buckets, np.uint8)
    strings, idents, tokens = empty, empty, empty
    none_h, none_p = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    s_items = (none_h, none_p, none_p)
    i_items = (none_h, none_p, none_p)
    t_items = (none_h, none_p, none_p)
    if want_strings:
        runs = _picked(starts, ends, strings_min, flags, False)
        strings, firsts = _distinct_counts(hashes[runs], buckets, len(runs))
        runs = runs[firsts]
        s_items = (hashes[runs], starts[runs], ends[runs])
    if want_idents:
        runs = _picked(starts, ends, idents_min, flags, True)
        idents, firsts = _distinct_counts(hashes[runs], buckets, len(runs))
        runs = runs[firsts]
        i_items = (hashes[runs], starts[runs], ends[runs])
    if want_tokens:
        ts, te = _token_runs(starts, ends, strings_min, flags)
        words, word_starts, word_ends = _word_hashes(addr, last, ts, te, tokens_min)
        tokens, firsts = _distinct_counts(words, buckets, len(words) // 8)
        t_items = (words[firsts], word_starts[firsts], word_ends[firsts])
    return strings, idents, tokens, s_items, i_items, t_items


def _prepared(arr: np.ndarray, buckets: int, mins: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The settings checked, and `arr` as the kernels read it: C-contiguous, read-only, zero-padded to 8 bytes."""
    if buckets < 1 or buckets & (buckets - 1):
        raise ValueError(f"buckets must be a power of two, got {buckets}")
    if min(mins) < 1:
        raise ValueError("min_len must be >= 1")
    n = len(arr)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)  # the kernels read it by address
    if n < 8:
        arr = np.concatenate([arr, np.zeros(8 - n, np.uint8)])
    if arr.flags.writeable:  # one compiled specialisation: the read-only array that np.frombuffer(bytes) gives
        arr = arr.view()
        arr.flags.writeable = False
    return arr, n


Items = tuple[np.ndarray, np.ndarray, np.ndarray]  # hashes (uint64), starts, ends (int64) of distinct items


def sketch_items(arr: np.ndarray, names: tuple[str, ...] | list[str], strings_min: int, idents_min: int,
                 tokens_min: int, buckets: int) -> tuple[dict[str, np.ndarray], dict[str, Items]]:
    """({name: uint8 [buckets]}, {name: its distinct items (hashes, starts, ends)}) for each of strings, idents
    and tokens in `names`, of the bytes `arr` (uint8). The views are those of `sketch_views`, from one pass."""
    arr, n = _prepared(arr, buckets, (strings_min, idents_min, tokens_min))
    s, i, t, si, ii, ti = sketch_counts(arr, n, "strings" in names, "idents" in names, "tokens" in names,
                                        strings_min, idents_min, tokens_min, buckets)
    views = {name: view for name, view in (("strings", s), ("idents", i), ("tokens", t)) if name in names}
    items = {name: it for name, it in (("strings", si), ("idents", ii), ("tokens", ti)) if name in names}
    return views, items


def sketch_views(arr: np.ndarray, names: tuple[str, ...] | list[str], strings_min: int, idents_min: int,
                 tokens_min: int, buckets: int) -> dict[str, np.ndarray]:
    """{name: uint8 [buckets]} for each of strings, idents and tokens in `names`, of the bytes `arr` (uint8)."""
    return sketch_items(arr, names, strings_min, idents_min, tokens_min, buckets)[0]


# ---------------------------------------------------------------------------------------------------
# Evidence: which candidate items a person can read (embedlib.views.evidence)
# ---------------------------------------------------------------------------------------------------

@_inline
def _folded(b, lower):
    """Byte b, lowercased when `lower` (a word's text is stored lowercased)."""
    if lower and 65 <= b <= 90:
        return b + 32
    return b


@_helper
def _readable(arr, start, end, lower):
    """evidence.readable of arr[start:end] (lowercased when `lower`): >= 3 letters, no letter or digit 4 times in
    a row, no maximal run of >= 12 hex digits that holds a digit. One pass, no copy."""
    letters = 0
    prev = -1
    repeat = 0
    hex_len = 0
    hex_digit = False
    for t in range(start, end):
        b = _folded(np.int64(arr[t]), lower)
        letter = (65 <= b <= 90) or (97 <= b <= 122)
        digit = 48 <= b <= 57
        if letter:
            letters += 1
        if letter or digit:
            repeat = repeat + 1 if b == prev else 1
            if repeat >= 4:
                return False
        else:
            repeat = 0
        prev = b
        if digit or (65 <= b <= 70) or (97 <= b <= 102):
            hex_len += 1
            hex_digit = hex_digit or digit
            if hex_len >= 12 and hex_digit:
                return False
        else:
            hex_len = 0
            hex_digit = False
    return letters >= 3


@_jit
def evidence_picks(arr, starts, ends, lower, max_chars, top):
    """The positions of the first `top` candidates (in the order given: heaviest first) whose text
    arr[start:min(end, start + max_chars)] (lowercased where lower[c]) is `readable` and unlike the text of
    every candidate picked before it: what evidence.top_items keeps, with one Python object per kept item
    instead of per candidate looked at."""
    n = len(starts)
    picked = np.empty(min(n, top), np.int64)
    k = 0
    for c in range(n):
        if k == top:
            break
        s = starts[c]
        e = min(ends[c], s + max_chars)
        low = lower[c] != 0
        if not _readable(arr, s, e, low):
            continue
        seen = False
        for j in range(k):
            p = picked[j]
            ps = starts[p]
            if min(ends[p], ps + max_chars) - ps != e - s:
                continue
            plow = lower[p] != 0
            same = True
            for t in range(e - s):
                if _folded(np.int64(arr[s + t]), low) != _folded(np.int64(arr[ps + t]), plow):
                    same = False
                    break
            if same:
                seen = True
                break
        if not seen:
            picked[k] = c
            k += 1
    return picked[:k]


@_jit
def evidence_pool(counts, hashes, weights, norm, share, shift, pool):
    """(positions, weights) of the `pool` heaviest of a view's distinct items (`hashes`, in bucket
    hashes >> shift), heaviest first and, among equal weights, smallest hash first: evidence.item_weights for
    each item (share[count] x (weight / norm) of its bucket, the same floating-point operations, so the same
    numbers), then a selection in one pass instead of a weight array per step. All of them when there are no
    more than `pool`."""
    n = len(hashes)
    w = np.empty(n, np.float64)
    for i in range(n):
        b = hashes[i] >> shift
        w[i] = share[counts[b]] * (weights[b] / norm)
    if n <= pool:
        chosen = np.arange(n)
    else:
        cut = -np.partition(-w, pool - 1)[pool - 1]  # the pool-th largest weight
        above = 0
        for i in range(n):
            if w[i] > cut:
                above += 1
        ties = np.empty(n - above, np.int64)
        chosen = np.empty(pool, np.int64)
        k = t = 0
        for i in range(n):
            if w[i] > cut:
                chosen[k] = i
                k += 1
            elif w[i] == cut:
                ties[t] = i
                t += 1
        ties = ties[:t]
        ties = ties[np.argsort(hashes[ties], kind="mergesort")]
        chosen[k:] = ties[: pool - k]
    order = chosen[np.argsort(hashes[chosen], kind="mergesort")]
    order = order[np.argsort(-w[order], kind="mergesort")]
    return order, w[order]


@_jit
def view_norm(counts, weights, log1p):
    """The norm of a view's TF-IDF vector log1p[count[b]] * weights[b] (evidence.view_norm)."""
    total = 0.0
    for b in range(len(counts)):
        x = log1p[counts[b]] * weights[b]
        total += x * x
    return np.sqrt(total)


@_jit
def evidence_top(arr, counts, weights, hashes, starts, ends, offsets, lower, log1p, share, shift, pool, top,
                 max_chars):
    """evidence.top_items in one compiled call. View v has bucket counts counts[v], per-bucket weights
    weights[v], distinct items hashes/starts/ends[offsets[v]:offsets[v + 1]], and lowercased text when lower[v].
    Each view's `pool` heaviest items (evidence_pool), all of them heaviest first, then by view and hash, the
    weightless dropped; then the first `top` readable and unseen (evidence_picks). Returns the kept items'
    (view, start, end, weight): no Python object per item looked at."""
    n = 0
    for v in range(len(offsets) - 1):
        n += min(offsets[v + 1] - offsets[v], pool)
    code = np.empty(n, np.int64)
    at = np.empty(n, np.int64)
    w = np.empty(n, np.float64)
    k = 0
    for v in range(len(offsets) - 1):
        first, last = offsets[v], offsets[v + 1]
        if last == first:
            continue
        norm = view_norm(counts[v], weights[v], log1p)
        if norm == 0.0:
            continue
        keep, kept_w = evidence_pool(counts[v], hashes[first:last], weights[v], norm, share, shift, pool)
        for j in range(len(keep)):
            if kept_w[j] > 0.0:
                code[k] = v
                at[k] = first + keep[j]
                w[k] = kept_w[j]
                k += 1
    code, at, w = code[:k], at[:k], w[:k]
    order = np.argsort(hashes[at], kind="mergesort")
    order = order[np.argsort(code[order], kind="mergesort")]
    order = order[np.argsort(-w[order], kind="mergesort")]
    at = at[order]
    low = np.empty(k, np.uint8)
    for j in range(k):
        low[j] = lower[code[order[j]]]
    picked = evidence_picks(arr, starts[at], ends[at], low, max_chars, top)
    chosen = order[picked]
    return code[chosen], starts[at[picked]], ends[at[picked]], w[chosen]
