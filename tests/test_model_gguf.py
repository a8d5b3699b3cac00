"""GGUF reading: our fast reader against the gguf package, and clear errors on bad files."""
from __future__ import annotations

import numpy as np
import pytest

from llmlab.errors import UserError
from llmlab.model.gguf_file import GGUFFile
from llmlab.model.load import load_model


def test_reader_matches_gguf_package(smollm2_path):
    import gguf

    ours = GGUFFile(smollm2_path)
    ref = gguf.GGUFReader(str(smollm2_path))
    assert set(ours.fields) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key in ("general.architecture", "llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.merges",
                "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.chat_template"):
        assert ours.get(key) == ref.fields[key].contents(), key
    by_name = {t.name: t for t in ref.tensors}
    seen_types = set()
    for info in ours.tensors:
        r = by_name[info.name]
        if r.tensor_type.name in seen_types and not info.name.startswith("blk.29"):
            continue
        seen_types.add(r.tensor_type.name)
        want = gguf.quants.dequantize(r.data, r.tensor_type).reshape(info.shape)
        assert np.array_equal(ours.tensor(info).numpy(), want), info.name
    assert {"Q4_1", "Q8_0", "F32"} <= seen_types


def _write_gguf(path, arch="llama", truncate=False):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate:
        path.write_bytes(path.read_bytes()[:-20])


def test_unsupported_architecture(tmp_path):
    _write_gguf(tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(UserError, match="unsupported GGUF architecture 'mamba'"):
        load_model(str(tmp_path / "m.gguf"))


def test_truncated_and_garbage_files(tmp_path):
    _write_gguf(tmp_path / "t.gguf", truncate=True)
    with pytest.raises(UserError, match="truncated"):
        GGUFFile(tmp_path / "t.gguf")
    (tmp_path / "g.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="not a GGUF file"):
        GGUFFile(tmp_path / "g.gguf")


def test_missing_model(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(UserError, match="GGUF file not found"):
        GGUFFile(tmp_path / "nope.gguf")
