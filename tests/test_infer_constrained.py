"""Constrained decoding: schema -> regex against a JSON-schema validator, token masks by hand, and
100% schema-valid output from SmolLM2 under the constraint."""
import json
import random

import pytest
import torch

from llmlab.infer.constrained import JSON_ANY, Constraint, ConstrainedLogits, schema_to_regex

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}, "score": {"type": "number"},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}, "ok": {"type": "boolean"},
    "kind": {"anyOf": [{"type": "null"}, {"const": "x"}]}}, "required": ["name", "age"]}


class CharTok:
    """A toy tokenizer: one token per printable ASCII character, plus a few multi-char tokens and EOS."""

    def __init__(self):
        self.pieces = [chr(c) for c in range(32, 127)] + ['{"', '": ', ", ", "true", "ab", '"}', "\u00e9"]
        self.eos_id = len(self.pieces)
        self.vocab_size = len(self.pieces) + 1

    def decode_bytes(self, ids):
        return b"".join(b"" if i == self.eos_id else self.pieces[i].encode() for i in ids)

    def encode(self, text, allow_special=False):
        return [self.pieces.index(ch) for ch in text]


def _random_instance(rng):
    d = {"name": "".join(rng.choice("ab c\"\\é") for _ in range(rng.randint(0, 8))), "age": rng.randint(-50, 10**6),
         "score": rng.choice([0, 1.5, -2.25e3, 7]), "tags": rng.sample(["a", "b", "a"], rng.randint(0, 3)),
         "ok": rng.random() < 0.5, "kind": rng.choice([None, "x"])}
    return json.dumps(d, ensure_ascii=False)


def test_schema_regex_accepts_valid_and_rejects_invalid():
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    import regex
    pat = regex.compile(schema_to_regex(SCHEMA))
    val = jsonschema_rs.validator_for(SCHEMA)
    rng = random.Random(0)
    for _ in range(200):
        s = _random_instance(rng)
        assert pat.fullmatch(s) and val.is_valid(json.loads(s)), s
    for bad in ['{"name": 1, "age": 2}', '{"name": "x"}', '{"name": "x", "age": 1.5, "score": 1, "tags": [], "ok": true, '
                '"kind": null}', '{"name": "' + "a" * 21 + '", "age": 1, "score": 1, "tags": [], "ok": true, "kind": null}',
                '{"name": "x", "age": 1, "score": 1, "tags": ["c"], "ok": true, "kind": null}']:
        assert not pat.fullmatch(bad)


def test_json_mode_regex():
    import regex
    pat = regex.compile(JSON_ANY)
    for s in ['{"a": [1, {"b": true}, "x"]}', "[]", '"s"', "-3.5e2", '{"a": {"b": {"c": null}}}']:
        assert pat.fullmatch(s), s
    for s in ['{"a" 1}', "[1, 2]]", "{'a': 1}", "01"]:
        assert not pat.fullmatch(s), s
    assert pat.fullmatch('{"a": [1, {"b": tr', partial=True)


def test_mask_by_hand():
    tok = CharTok()
    c = Constraint.json_schema({"type": "object", "properties": {"ok": {"type": "boolean"}}}, tok)
    proc = ConstrainedLogits(c)
    logits = torch.zeros(tok.vocab_size)
    out = proc([], logits)  # uniform: every token gets tested
    allowed = {i for i in range(tok.vocab_size) if out[i] > float("-inf")}
    assert allowed == {tok.pieces.index("{"), tok.pieces.index('{"')}
    text_ids = tok.encode('{"ok": tru')
    allowed = {i for i in range(tok.vocab_size) if proc(text_ids, logits)[i] > float("-inf")}
    assert allowed == {tok.pieces.index("e")}
    done = tok.encode('{"ok": true}')
    assert {i for i in range(tok.vocab_size) if proc(done, logits)[i] > float("-inf")} == {tok.eos_id}
    assert c.closing('{"ok": ') == 'true}' or c.closing('{"ok": ') == 'false}'


def test_forced_closing_near_budget():
    tok = CharTok()
    c = Constraint.json_schema({"type": "object", "properties": {"s": {"type": "string"}}}, tok)
    proc = ConstrainedLogits(c, max_new_tokens=13, force_margin=4)
    early = tok.encode('{"s": "a')  # 8 tokens in, 5 left: not forced yet, the model's 'a' is allowed
    logits = torch.zeros(tok.vocab_size)
    logits[tok.pieces.index("a")] = 10.0
    assert int(proc(early, logits).argmax()) == tok.pieces.index("a") and not proc.forced
    ids = tok.encode('{"s": "aaa')  # 10 tokens in, 3 left = the closing '"}' (1 token) + EOS + 1: close now
    out = []
    for _ in range(3):
        nxt = int(proc(ids + out, logits).argmax())
        if nxt == tok.eos_id:
            break
        out.append(nxt)
    assert json.loads(proc.text_of(ids + out)) == {"s": "aaa"}


@pytest.mark.slow
def test_smollm2_output_is_always_schema_valid():
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    from llmlab.infer.constrained import generate_constrained
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer("smollm2")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "population": {"type": "integer"},
                                               "capital": {"type": "boolean"}}, "required": ["city"]}
    c = Constraint.json_schema(schema, tok)
    val = jsonschema_rs.validator_for(schema)
    for i, city in enumerate(["Paris", "a small village"]):
        msgs = [{"role": "user", "content": f"Describe {city} as JSON with city, population, capital."}]
        ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
        out = generate_constrained(model, tok, ids, c, max_new_tokens=40, temperature=0.7 * i, seed=i)
        assert val.is_valid(json.loads(out)), out
