"""Near-duplicate detection with MinHash signatures and LSH banding (Broder 1997; Leskovec et al.,
"Mining of Massive Datasets", ch. 3), numpy-vectorised.

MinHash: for a random hash h, P[min h(A) == min h(B)] = |A ∩ B| / |A ∪ B| = Jaccard(A, B) (the
notes: "the probability that the minimum lands in A ∩ B equals the Jaccard similarity"). With
`num_perm` independent hashes, the share of equal signature entries estimates the Jaccard
similarity with standard error sqrt(J(1-J)/num_perm) (<= 0.044 for 128).

Shingles: character k-grams of the case-folded text with whitespace collapsed (language-neutral:
works for Chinese, which has no spaces). Each k-gram is hashed to 32 bits with a polynomial hash;
permutation i is h_i(x) = (a_i * x + b_i) mod p with p = 2^61 - 1 (a Mersenne prime) and
a_i, b_i uniform in [1, p). a_i must span the whole field: with a_i < 2^32, a_i * x < 8p wraps at
most 8 times, the map is nearly order-preserving and all "permutations" pick the same minimum.
The product a_i * x (up to 93 bits) is reduced exactly in uint64 by splitting a_i into 32-bit
halves and using 2^61 ≡ 1 (mod p) (see `_universal`).

LSH banding: the signature is cut into `bands` bands of `rows` rows; two documents become a
candidate pair when some band is identical. For Jaccard s:

    P(candidate) = 1 - (1 - s^r)^b            (an S-curve)

whose steepest point (the effective threshold) is near t ≈ (1/b)^(1/r). Candidates are then
verified: a document is a near-duplicate if its estimated Jaccard with an earlier kept document
is >= `threshold`. Pick b, r so that t is a little below `threshold` (defaults: 128 = 16 x 8,
t ≈ 0.707, threshold 0.8), so true duplicates become candidates with high probability
(s = 0.8: 1 - (1 - 0.8^8)^16 = 0.947; s = 0.9: 0.9999) while pairs at s = 0.3 almost never do (0.0010).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_MERSENNE = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)
_WS = re.compile(r"\s+")


@dataclass
class MinHashConfig:
    shingle_size: int = field(default=5, metadata={"help": "character k-gram length"})
    num_perm: int = field(default=128, metadata={"help": "signature length (number of hash functions)"})
    bands: int = field(default=16, metadata={"help": "LSH bands b; bands * rows <= num_perm"})
    rows: int = field(default=8, metadata={"help": "rows per band r; S-curve threshold ~ (1/b)^(1/r)"})
    threshold: float = field(default=0.8, metadata={"help": "estimated Jaccard at or above which a doc is a near-duplicate"})
    seed: int = 1

    def __post_init__(self):
        if self.shingle_size < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("shingle_size, num_perm, bands and rows must be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


def lsh_threshold(bands: int, rows: int) -> float:
    """Approximate Jaccard where the LSH S-curve is steepest: (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(s: float | np.ndarray, bands: int, rows: int):
    """P(two docs with Jaccard s share at least one identical band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Distinct 32-bit hashes of the character k-grams of the normalised text (uint64 array)."""
    t = _WS.sub(" ", text.casefold()).strip()
    codes = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.zeros(1, dtype=np.uint64)
    if codes.size < k:  # shorter than one shingle: the whole text is the only shingle
        codes = np.concatenate([codes, np.zeros(k - codes.size, dtype=np.uint64)])
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    powers = np.uint64(1_000_003) ** np.arange(k - 1, -1, -1, dtype=np.uint64)  # wraps mod 2^64
    with np.errstate(over="ignore"):
        h = (windows * powers).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(29)          # mix high bits down before truncating to 32 bits
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.unique(h & _MASK32)


_LO29 = np.uint64((1 << 29) - 1)


def _universal(x: np.ndarray, a_hi: np.ndarray, a_lo: np.ndarray, b, bufs=None) -> np.ndarray:
    """(a * x + b) mod p, division-free (shift/mask folds); the result is < p + 1, i.e. exact
    except that p itself may stand for 0, which changes no comparison between documents.

    `bufs` = three preallocated (rows, num_perm) uint64 arrays: every step writes into them, so
    no temporaries are allocated (fresh large arrays cost page faults that dominated the runtime).
    """
    shape = np.broadcast_shapes(x.shape, a_lo.shape)
    v, y, t = bufs if bufs is not None else (np.empty(shape, np.uint64) for _ in range(3))
    np.multiply(x, a_lo, out=v)                        # < 2^64
    np.right_shift(v, 61, out=t)
    np.bitwise_and(v, _MERSENNE, out=v)
    np.add(v, t, out=v)                                # fold: < 2^61 + 8
    np.multiply(x, a_hi, out=y)                        # < 2^61
    np.right_shift(y, 29, out=t)
    np.bitwise_and(y, _LO29, out=y)
    np.left_shift(y, 32, out=y)
    np.add(y, t, out=y)                                # ≡ a_hi * x * 2^32 (mod p), < 2^62
    np.add(v, y, out=v)
    np.add(v, b, out=v)                                # < 2^63
    for _ in range(2):                                 # two folds: < p + 1
        np.right_shift(v, 61, out=t)
        np.bitwise_and(v, _MERSENNE, out=v)
        np.add(v, t, out=v)
    return v


class MinHasher:
    """Signatures of `num_perm` universal hashes (a*x + b) mod (2^61 - 1), a, b uniform in [1, p)."""

    def __init__(self, num_perm: int = 128, seed: int = 1, chunk: int = 256):
        rng = np.random.default_rng(seed)
        p = (1 << 61) - 1
        self.a = rng.integers(1, p, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(1, p, size=num_perm, dtype=np.uint64)
        self.a_hi = (self.a >> np.uint64(32))[None, :]
        self.a_lo = (self.a & _MASK32)[None, :]
        self.chunk = chunk  # shingles per block; the three work buffers are reused across calls
        self._bufs = [np.empty((chunk, num_perm), dtype=np.uint64) for _ in range(3)]

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        sig = np.full(self.a.shape, _MERSENNE, dtype=np.uint64)
        for i in range(0, hashes.size, self.chunk):
            x = hashes[i:i + self.chunk, None]
            bufs = [buf[:x.shape[0]] for buf in self._bufs]
            v = _universal(x, self.a_hi, self.a_lo, self.b[None, :], bufs)
            np.minimum(sig, v.min(axis=0), out=sig)
        return sig


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


class NearDeduper:
    """Streaming near-dedup: `is_duplicate(text)` checks LSH candidates among docs kept so far;
    a duplicate is dropped (not indexed), so the first document of a cluster is the one kept."""

    def __init__(self, cfg: MinHashConfig | None = None):
        self.cfg = cfg or MinHashConfig()
        self.hasher = MinHasher(self.cfg.num_perm, self.cfg.seed)
        self.buckets: list[dict[bytes, list[int]]] = [dict() for _ in range(self.cfg.bands)]
        self.signatures: list[np.ndarray] = []
        self.candidates_checked = 0

    def signature(self, text: str) -> np.ndarray:
        return self.hasher.signature(shingle_hashes(text, self.cfg.shingle_size))

    def find(self, sig: np.ndarray) -> int | None:
        """Index of a kept doc with estimated Jaccard >= threshold, or None."""
        r = self.cfg.rows
        seen: set[int] = set()
        for j, bucket in enumerate(self.buckets):
            for idx in bucket.get(sig[j * r:(j + 1) * r].tobytes(), ()):
                if idx in seen:
                    continue
                seen.add(idx)
                self.candidates_checked += 1
                if estimate_jaccard(sig, self.signatures[idx]) >= self.cfg.threshold:
                    return idx
        return None

    def add(self, sig: np.ndarray) -> int:
        idx = len(self.signatures)
        self.signatures.append(sig)
        r = self.cfg.rows
        for j, bucket in enumerate(self.buckets):
            bucket.setdefault(sig[j * r:(j + 1) * r].tobytes(), []).append(idx)
        return idx

    def is_duplicate(self, text: str) -> bool:
        sig = self.signature(text)
        if self.find(sig) is not None:
            return True
        self.add(sig)
        return False
