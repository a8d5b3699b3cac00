import json

import numpy as np
import pytest
import torch

from llmlab.data.loader import TokenWindowLoader
from llmlab.data.shards import open_shards, token_dtype, write_shards
from llmlab.errors import UserError


class CharTok:
    """Byte-level toy tokenizer: id = byte value + offset (offset pushes ids past uint16)."""

    def __init__(self, vocab_size=300, offset=0):
        self.vocab_size = vocab_size
        self.offset = offset
        self.eos_id = vocab_size - 1

    def encode(self, text):
        return [b + self.offset for b in text.encode("utf-8")]


DOCS = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(200)]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(DOCS, CharTok(), d, shard_tokens=3000)
    return d


def test_dtype_by_vocab_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32 and token_dtype(10) == np.uint16


def test_roundtrip_boundaries_and_header(shard_dir):
    shards = open_shards(shard_dir)
    index = json.loads((shard_dir / "index.json").read_text())
    assert len(shards) == len(index["shards"]) > 1 and index["num_docs"] == len(DOCS)
    assert index["dtype"] == "uint16" and all(s.tokens.dtype == np.uint16 for s in shards)
    assert index["num_bytes"] == sum(len(d.encode()) for d in DOCS)  # for bits-per-byte
    tok = CharTok()
    docs = []
    for s in shards:
        assert s.header["num_tokens"] == s.tokens.size <= 3000 + 200
        ends = s.doc_starts[1:] + [s.tokens.size]
        for a, b in zip(s.doc_starts, ends):
            ids = np.asarray(s.tokens[a:b])
            assert ids[-1] == tok.eos_id  # every document ends with EOS
            docs.append(bytes(ids[:-1].astype(np.uint8)).decode())
    assert docs == DOCS
    assert not list(shard_dir.glob("*.tmp"))


def test_uint32_shards(tmp_path):
    tok = CharTok(vocab_size=70_000, offset=65_600)
    write_shards(["hi there"], tok, tmp_path)
    (s,) = open_shards(tmp_path)
    assert s.tokens.dtype == np.uint32 and s.tokens[0] == ord("h") + 65_600


def test_bad_inputs_are_user_errors(tmp_path, shard_dir):
    with pytest.raises(UserError, match="no tokens"):
        write_shards(["", ""], CharTok(), tmp_path / "empty", append_eos=False)
    with pytest.raises(UserError, match="outside"):
        write_shards(["abc"], CharTok(vocab_size=50), tmp_path / "oov")
    with pytest.raises(UserError, match="not found"):
        open_shards(tmp_path / "missing")
    # corrupt header
    bad = tmp_path / "bad"
    write_shards(DOCS[:5], CharTok(), bad)
    (bad / "shard_00000.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt shard header"):
        open_shards(bad)
    # truncated token file
    trunc = tmp_path / "trunc"
    write_shards(DOCS[:5], CharTok(), trunc)
    b = trunc / "shard_00000.bin"
    b.write_bytes(b.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        open_shards(trunc)
    # empty shard
    empty = tmp_path / "zero"
    write_shards(DOCS[:5], CharTok(), empty)
    h = json.loads((empty / "shard_00000.json").read_text())
    h["num_tokens"] = 0
    (empty / "shard_00000.json").write_text(json.dumps(h))
    (empty / "shard_00000.bin").write_bytes(b"")
    with pytest.raises(UserError, match="empty shard"):
        open_shards(empty)
    with pytest.raises(UserError, match="less than one batch"):
        TokenWindowLoader(shard_dir, seq_len=4096, batch_size=8)


def test_windows_are_shifted_pairs(shard_dir):
    ld = TokenWindowLoader(shard_dir, seq_len=16, batch_size=4, shuffle=False)
    x, y = next(ld)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    first = torch.from_numpy(open_shards(shard_dir)[0].tokens[:17].astype(np.int64))
    assert torch.equal(x[0], first[:16]) and torch.equal(y[0], first[1:])


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_deterministic_given_seed(shard_dir):
    a = _take(TokenWindowLoader(shard_dir, 16, 4, seed=1), 5)
    b = _take(TokenWindowLoader(shard_dir, 16, 4, seed=1), 5)
    c = _take(TokenWindowLoader(shard_dir, 16, 4, seed=2), 5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_resume_mid_epoch_is_exact(shard_dir):
    ref = TokenWindowLoader(shard_dir, 16, 4, seed=3)
    n = len(ref)
    stop = n // 2 + 1
    _take(ref, stop)
    state = json.loads(json.dumps(ref.state_dict()))  # plain JSON-able ints
    assert all(isinstance(v, int) for v in state.values())
    expected = _take(ref, n)  # crosses into the next epoch
    resumed = TokenWindowLoader(shard_dir, 16, 4, seed=3)
    resumed.load_state_dict(state)
    got = _take(resumed, n)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(expected, got))
    assert resumed.state_dict() == ref.state_dict()
    with pytest.raises(UserError, match="seed"):
        TokenWindowLoader(shard_dir, 16, 4, seed=4).load_state_dict(state)


def test_ranks_are_disjoint_and_cover_the_single_process_batches(shard_dir):
    single = TokenWindowLoader(shard_dir, 16, 8, seed=5, world_size=1)
    ranks = [TokenWindowLoader(shard_dir, 16, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    seen = [set(), set()]
    single_seen = set()
    for _ in range(len(single)):
        w1 = set(single.batch_windows().tolist())
        single_seen |= w1
        parts = [set(r.batch_windows().tolist()) for r in ranks]
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == w1
        x1, _ = next(single)
        xr = [next(r)[0] for r in ranks]
        rows = {tuple(t.tolist()) for t in torch.cat(xr)}
        assert rows == {tuple(t.tolist()) for t in x1}
        for i in range(2):
            seen[i] |= parts[i]
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == single_seen and len(single_seen) == len(single) * 8


def test_real_tokenizer_shards(tmp_path, smollm2_tokenizer):
    texts = ["The river runs through the old town.", "床前明月光，疑是地上霜。"]
    index = write_shards(texts, smollm2_tokenizer, tmp_path)
    (s,) = open_shards(tmp_path)
    assert index["dtype"] == "uint16" and smollm2_tokenizer.vocab_size <= 65536
    a, b = s.doc_starts
    assert smollm2_tokenizer.decode(list(s.tokens[a:b - 1])) == texts[0]
    assert smollm2_tokenizer.decode(list(s.tokens[b:-1])) == texts[1]


def test_each_token_is_a_target_once_per_epoch(tmp_path):
    write_shards(DOCS[:20], CharTok(), tmp_path)
    (s,) = open_shards(tmp_path)
    ld = TokenWindowLoader(tmp_path, seq_len=10, batch_size=1, shuffle=False)
    ys = torch.cat([next(ld)[1][0] for _ in range(len(ld))])
    n = len(ld) * 10
    assert len(ld) == (s.tokens.size - 1) // 10
    assert torch.equal(ys, torch.from_numpy(s.tokens[1:n + 1].astype(np.int64)))
