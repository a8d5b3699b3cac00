"""The CLI under careless input, driven by hypothesis: every verb gets random `key=value`
overrides and malformed config files; the verbs that read models, tokenizers and data get
malformed model dirs, GGUF files, tokenizer files and JSONL. Invariant: either the config is
accepted, or one line `llmlab: error: ...` on stderr and exit code 2 — never a traceback.

Runs in-process (`llmlab.cli.main`), so each example costs milliseconds; for the override fuzz
each verb's `run` is replaced by a stub (a valid config must not start a training run), the
malformed-file fuzz runs the real verbs (they fail while loading)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmlab.cli import all_verbs, main
from llmlab.verb import Verb

VERBS = all_verbs()
EXAMPLES = int(os.environ.get("LLMLAB_CLI_FUZZ_EXAMPLES", "60"))
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _keys(cls, prefix="") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out += _keys(tp, prefix + f.name + ".") + [k for k in _keys(tp)]  # nested and flat spellings
        else:
            out.append(prefix + f.name)
    return out


_values = st.one_of(st.text(max_size=12), st.sampled_from(["", "-1", "0", "1e309", "nan", "inf", "true", "None", "[",
                                                          "[1,", "[]", "{}", "{a: 1}", "1_000", "0x10", "-0", "1.5",
                                                          "'", "\x00", "é", "[[1]]", "null", "~"]),
                    st.integers(-10 ** 20, 10 ** 20).map(str), st.floats(allow_nan=True).map(repr))


def _override(keys):
    return st.tuples(st.sampled_from(keys + ["", "nope", "a.b.c", "=", "x y"]), _values).map(lambda kv: f"{kv[0]}={kv[1]}")


def _check(argv: list[str], capsys) -> int:
    rc = main(argv)  # any exception other than UserError escapes and fails the example
    err = capsys.readouterr().err
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        lines = _error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("llmlab: error: "), (argv, err)
        assert "Traceback" not in err
    return rc


def _error_lines(err: str) -> list[str]:
    """stderr without log lines ("12:00:01 INFO loaded ...") and progress bars ("reading:  40%|...")."""
    return [ln for ln in err.strip().replace("\r", "\n").splitlines()
            if ln.strip() and not re.match(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) |[\w ]+: +\d+%\|", ln)]


def _log_here(monkeypatch) -> None:
    """llmlab's console log on the current (captured) stderr: a verb's own
    handler keeps the stream it was made with, which an earlier test's capture has closed."""
    import sys
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("llmlab")
    monkeypatch.setattr(logger, "handlers", [h])
    monkeypatch.setattr(logger, "propagate", False)


@pytest.fixture
def stub_runs(monkeypatch):
    """Replace every verb's run with a no-op: only parsing and validation are fuzzed here."""
    import llmlab.cli as cli
    stubbed = {n: Verb(v.config, lambda cfg: 0, v.summary, v.example) for n, v in VERBS.items()}
    monkeypatch.setattr(cli, "all_verbs", lambda: stubbed)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_random_overrides_never_traceback(verb, stub_runs, capsys, tmp_path_factory):
    keys = _keys(VERBS[verb].config)
    yaml_dir = tmp_path_factory.mktemp("yaml")

    @settings(max_examples=max(EXAMPLES // 6, 5), **SETTINGS)
    @given(overrides=st.lists(_override(keys), max_size=4),
           config=st.none() | st.binary(max_size=60) | st.sampled_from([b"a: [", b"- 1\n- 2", b"key: 1\n", b"\xff\xfe",
                                                                         b"model: {x: 1}", b"!!python/object:os.system"]))
    def run(overrides, config):
        argv = verb.split()
        if config is not None:
            p = yaml_dir / "c.yaml"
            p.write_bytes(config)
            argv.append(str(p))
        _check(argv + overrides, capsys)
    run()


# ------------------------------------------------------------------ malformed files, real verbs
def _malformed_model(root, kind: str, junk: bytes):
    d = root / f"m_{kind}"
    d.mkdir(exist_ok=True)
    if kind == "gguf":
        (d / "x.gguf").write_bytes(b"GGUF" + junk)
        return d / "x.gguf"
    if kind == "gguf_empty":
        (d / "x.gguf").write_bytes(b"")
        return d / "x.gguf"
    if kind == "txt":
        (d / "x.bin").write_bytes(junk)
        return d / "x.bin"
    if kind == "missing":
        return d / "does-not-exist"
    (d / "config.json").write_bytes(junk if kind == "config_junk" else json.dumps(
        {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
         "vocab_size": 10, "intermediate_size": 16} if kind != "config_shape" else [1, 2]).encode())
    if kind == "weights_junk":
        (d / "model.safetensors").write_bytes(junk)
    if kind == "tokenizer_junk":
        (d / "tokenizer.json").write_bytes(junk)
    return d


MODEL_KINDS = ["gguf", "gguf_empty", "txt", "missing", "config_junk", "config_shape", "weights_junk", "empty_dir",
               "tokenizer_junk"]


@settings(max_examples=EXAMPLES // 2, **SETTINGS)
@given(kind=st.sampled_from(MODEL_KINDS), junk=st.binary(max_size=200),
       verb=st.sampled_from([["generate", "prompt=hi"], ["chat", "prompt=hi"], ["peft", "params"], ["serve", "port=1"]]))
def test_malformed_models_are_one_line_errors(tmp_path_factory, capsys, kind, junk, verb):
    path = _malformed_model(tmp_path_factory.mktemp("m"), kind, junk)
    assert _check(verb + [f"model={path}"], capsys) == 2


@settings(max_examples=EXAMPLES // 3, **SETTINGS)
@given(junk=st.binary(max_size=200) | st.text(max_size=80).map(str.encode),
       verb=st.sampled_from([["tokenizer", "encode", "text=hello"], ["tokenizer", "decode", "ids=[1,2]"]]))
def test_malformed_tokenizer_files_are_one_line_errors(tmp_path_factory, capsys, junk, verb):
    d = tmp_path_factory.mktemp("tok")
    (d / "tokenizer.json").write_bytes(junk)
    assert _check(verb + [f"tokenizer={d}"], capsys) == 2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_serve_model import save_tiny_dir
    return save_tiny_dir(tmp_path_factory.mktemp("tiny") / "m")


@settings(max_examples=max(EXAMPLES // 20, 3), **SETTINGS)
@given(lines=st.lists(st.text(max_size=40).map(str.encode) | st.binary(max_size=40)
                      | st.sampled_from([b"{", b"[]", b'{"prompt": 1}', b"null", b'{"x": "y"}', b'{"prompt": "a", "chosen": 3}',
                                         b'{"prompt": "caf\xe9"}', b"\xef\xbb\xbf{}"]), min_size=1, max_size=4))
def test_malformed_jsonl_is_a_one_line_error(tmp_path_factory, capsys, tiny_dir, lines):
    d = tmp_path_factory.mktemp("jsonl")
    (d / "data.jsonl").write_bytes(b"\n".join(lines + [b"{not json"]))  # always malformed somewhere
    assert _check(["dpo", f"data={d / 'data.jsonl'}", f"model={tiny_dir}", "max_steps=1"], capsys) == 2


# every verb that reads JSONL, given a file whose second line is not UTF-8 (Latin-1 "café", a stray 0xff)
NON_UTF8 = (b'{"prompt": "hi", "chosen": "a", "rejected": "b", "completion": "c", "text": "t", "query": "q", '
            b'"answer": "x"}\n{"prompt": "caf\xe9", "chosen": "\xff"}\n')
JSONL_VERBS = {
    "dpo": ["dpo", "data={f}", "model={m}", "max_steps=1"],
    "reward": ["reward", "data={f}", "model={m}"],
    "sft": ["sft", "datasets=[{f}]", "model={m}", "max_steps=1", "max_length=128"],
    "sft_replay": ["sft", "datasets=[{d}/ok.jsonl]", "replay_data={f}", "replay_ratio=0.5", "model={m}", "max_steps=1",
                   "max_length=128"],
    "peft": ["peft", "lora", "datasets=[{f}]", "model={m}", "max_steps=1", "max_length=128"],
    "eval_task": ["eval", "tasks=[{f}]", "model={m}", "limit=2"],
    "rag_corpus": ["rag", "index", "paths=[{f}]", "index={d}/ix"],
    "data_tokenize": ["data", "tokenize", "data_dir={d}", "tokenizer={m}", "out_dir={d}/shards"],
    "tokenizer_train": ["tokenizer", "train", "files=[{f}]", "vocab_size=300", "output_dir={d}/tok"],
    "tokenizer_encode": ["tokenizer", "encode", "input_file={f}", "tokenizer={m}"],
    "embed_train": ["embed", "train", "files=[{f}]", "output_dir={d}/emb"],
}


@pytest.mark.parametrize("case", sorted(JSONL_VERBS))
def test_non_utf8_jsonl_is_a_one_line_error(case, tmp_path, capsys, tiny_dir, monkeypatch):
    _log_here(monkeypatch)
    (tmp_path / "train.jsonl").write_bytes(NON_UTF8)
    (tmp_path / "val.jsonl").write_text('{"text": "ok"}\n')  # data tokenize checks that both splits exist first
    (tmp_path / "ok.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}) + "\n")
    argv = [a.format(f=tmp_path / "train.jsonl", d=tmp_path, m=tiny_dir) for a in JSONL_VERBS[case]]
    rc = main(argv)
    err = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and err[0].startswith("llmlab: error: "), (argv, rc, err)
    assert "utf-8" in err[0].lower() and "Traceback" not in err[0], err  # it says what is wrong with the file
