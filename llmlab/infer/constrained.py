"""Constrained decoding: only tokens that keep the output a prefix of the target language survive.

A constraint is a regular expression (JSON schema and JSON mode are compiled to one; JSON mode uses
the `regex` module's recursive groups for nesting). Over the tokenizer's vocabulary -- each token
decoded once to its text -- a token is allowed after the text so far iff `pattern.fullmatch(text +
token, partial=True)` succeeds, i.e. the result can still be completed to a match (the `regex`
module's partial matching is the automaton: no DFA is built). EOS is allowed only when the text
already matches in full.

`ConstrainedLogits` is a logits processor (processor(generated_ids, logits) -> logits). It tests
tokens from the most to the least likely and stops once the tested tokens hold 1 - 1e-6 of the
probability mass: untested tokens are masked too, which changes the distribution by < 1e-6, and
greedy decoding is exactly the argmax over the allowed tokens. So the cost is a few regex calls per
step when the model agrees with the constraint, the whole vocabulary when it does not.

Termination: once the token budget left is no more than the closing's length + 1, the processor
forces the shortest way to close the text that it finds greedily (preferring '"', '}', ']',
digits), so output under a JSON schema is complete and valid even when the budget runs out.
Tokens whose bytes are not whole UTF-8 characters are never allowed (rare characters may
therefore be unreachable inside strings).
"""
from __future__ import annotations

import json
import weakref

import regex
import torch

from llmlab.errors import UserError

_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_INT = r"-?(?:0|[1-9][0-9]{0,15})"
_NUMBER = _INT + r"(?:\.[0-9]{1,15})?(?:[eE][+-]?[0-9]{1,3})?"
JSON_ANY = (r"(?(DEFINE)(?P<val>(?&obj)|(?&arr)|" + _STRING + "|" + _NUMBER + r"|true|false|null)"
            r"(?P<obj>\{(?:" + _STRING + r": (?&val)(?:, " + _STRING + r": (?&val))*)?\})"
            r"(?P<arr>\[(?:(?&val)(?:, (?&val))*)?\]))(?&val)")
JSON_OBJECT = JSON_ANY.removesuffix("(?&val)") + "(?&obj)"  # OpenAI's json_object: an object at the top


def _lit(value) -> str:
    return regex.escape(json.dumps(value, ensure_ascii=False))


def schema_to_regex(schema: dict, depth: int = 0) -> str:
    """JSON schema (a practical subset) -> regex over json.dumps-style text (", " and ": " separators).
    Objects list every declared property in order (required or not); additionalProperties are
    never generated. Supported: type (string/integer/number/boolean/null/array/object, or a list),
    enum, const, anyOf/oneOf, properties, required, items, minItems/maxItems, minLength/maxLength,
    pattern (strings; the pattern must not contain anchors or quotes)."""
    if depth > 12:
        raise UserError("JSON schema nests too deeply (limit 12)")
    if not isinstance(schema, dict):
        raise UserError(f"JSON schema: expected an object, got {schema!r}")
    if "$ref" in schema:
        raise UserError("JSON schema: $ref is not supported; inline the definition")
    if "const" in schema:
        return _lit(schema["const"])
    if "enum" in schema:
        return "(?:" + "|".join(_lit(v) for v in schema["enum"]) + ")"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return "(?:" + "|".join(schema_to_regex(s, depth + 1) for s in schema[key]) + ")"
    t = schema.get("type")
    if isinstance(t, list):
        return "(?:" + "|".join(schema_to_regex({**schema, "type": x}, depth + 1) for x in t) + ")"
    if t == "string":
        if "pattern" in schema:
            p = schema["pattern"].removeprefix("^").removesuffix("$")
            if '"' in p or "^" in p or "$" in p:
                raise UserError("JSON schema: string patterns with quotes or inner anchors are not supported")
            return f'"(?:{p})"'
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        char = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
        return f'"{char}{{{lo},{"" if hi is None else int(hi)}}}"'
    if t == "integer":
        return _INT
    if t == "number":
        return _NUMBER
    if t == "boolean":
        return "(?:true|false)"
    if t == "null":
        return "null"
    if t == "array":
        item = schema_to_regex(schema.get("items", {}), depth + 1) if schema.get("items") else JSON_ANY_VALUE
        lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
        if hi is not None and int(hi) == 0:
            return r"\[\]"
        more = f"(?:, {item}){{{max(lo - 1, 0)},{'' if hi is None else int(hi) - 1}}}"
        body = f"{item}{more}"
        return rf"\[{body}\]" if lo > 0 else rf"\[(?:{body})?\]"
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return JSON_ANY_OBJECT
        parts = [f"{_lit(k)}: {schema_to_regex(v, depth + 1)}" for k, v in props.items()]
        return r"\{" + ", ".join(parts) + r"\}"
    if not schema or t is None:
        return JSON_ANY_VALUE
    raise UserError(f"JSON schema: unsupported type {t!r}")


# bounded-depth generic values for schema parts that allow anything (no recursion inside schemas)
_SCALAR = "(?:" + _STRING + "|" + _NUMBER + "|true|false|null)"
_FLAT_ARR = r"\[(?:" + _SCALAR + "(?:, " + _SCALAR + r")*)?\]"
_FLAT_OBJ = r"\{(?:" + _STRING + ": " + _SCALAR + "(?:, " + _STRING + ": " + _SCALAR + r")*)?\}"
JSON_ANY_VALUE = "(?:" + _SCALAR + "|" + _FLAT_ARR + "|" + _FLAT_OBJ + ")"
JSON_ANY_OBJECT = _FLAT_OBJ


_TEXTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vocab_texts(tokenizer) -> list[str | None]:
    """Each token's text (None: a special token or not whole UTF-8), computed once per tokenizer
    (the server builds a constraint per request)."""
    try:
        return _TEXTS[tokenizer]
    except (KeyError, TypeError):
        pass
    special = getattr(tokenizer, "special", None)
    specials = set(special.values()) if isinstance(special, dict) else set()
    texts: list[str | None] = []
    for i in range(tokenizer.vocab_size):
        try:
            t = tokenizer.decode_bytes([i]).decode("utf-8") if i not in specials else None
        except (UnicodeDecodeError, KeyError, IndexError, TypeError):
            t = None
        texts.append(t or None)
    try:
        _TEXTS[tokenizer] = texts
    except TypeError:  # not weak-referenceable: no cache
        pass
    return texts


class Constraint:
    """A compiled pattern plus each vocabulary token's text."""

    def __init__(self, pattern: str, tokenizer):
        try:
            self.pattern = regex.compile(pattern)
        except regex.error as e:
            raise UserError(f"constraint: invalid regular expression ({e})") from None
        self.tok = tokenizer
        self.eos = tokenizer.eos_id
        self.texts = vocab_texts(tokenizer)

    @classmethod
    def json_schema(cls, schema: dict, tokenizer) -> "Constraint":
        return cls(schema_to_regex(schema), tokenizer)

    @classmethod
    def json_mode(cls, tokenizer, top_object: bool = False) -> "Constraint":
        return cls(JSON_OBJECT if top_object else JSON_ANY, tokenizer)

    def viable(self, text: str) -> bool:
        return self.pattern.fullmatch(text, partial=True) is not None

    def complete(self, text: str) -> bool:
        return self.pattern.fullmatch(text) is not None

    def allowed(self, text: str, token_id: int) -> bool:
        if token_id == self.eos:
            return self.complete(text)
        t = self.texts[token_id] if token_id < len(self.texts) else None
        return t is not None and self.viable(text + t)

    def closing(self, text: str, limit: int = 400) -> str | None:
        """A short completion of `text` to a full match, found greedily (closers first), or None."""
        prefs = '"}]0 1,:' + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ23456789.-_tfn[{"
        out = ""
        for _ in range(limit):
            if self.complete(text + out):
                return out
            for ch in prefs:
                if self.viable(text + out + ch):
                    out += ch
                    break
            else:
                return None
        return None


class ConstrainedLogits:
    """Logits processor: disallowed tokens get -inf. `force_margin` tokens before the budget ends it
    forces the closing of the text (tracked from the ids it has seen). mass=0 stops at the most
    likely allowed token: exact for greedy decoding, and much cheaper when the model's distribution
    is flat (the server uses it for greedy requests)."""

    def __init__(self, constraint: Constraint, max_new_tokens: int | None = None, mass: float = 1 - 1e-6,
                 force_margin: int = 48):
        self.c, self.max_new_tokens, self.mass, self.force_margin = constraint, max_new_tokens, mass, force_margin
        self.forced: list[int] = []
        self.steps = 0

    def text_of(self, ids: list[int]) -> str:
        return "".join(self.c.texts[i] or "" for i in ids)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        text = self.text_of(generated)
        self.steps = len(generated)
        out = torch.full_like(logits, float("-inf"))
        left = None if self.max_new_tokens is None else self.max_new_tokens - len(generated)
        if left is not None and not self.forced and left <= self.force_margin and not self.c.complete(text):
            tail = self.c.closing(text)
            if tail is not None:
                tail_ids = self.c.tok.encode(tail, allow_special=False)
                if left <= len(tail_ids) + 1:  # just enough budget left to close: close now
                    self.forced, self._forced_at = tail_ids, len(generated)
        if self.forced:
            k = len(generated) - self._forced_at
            nxt = self.forced[k] if k < len(self.forced) else self.c.eos
            out[nxt] = 0.0
            return out
        order = torch.argsort(logits, descending=True)
        probs = torch.softmax(logits.float(), -1)[order].tolist()
        seen, any_ok, eos, texts = 0.0, False, self.c.eos, self.c.texts
        first_ok: dict[str, bool] = {}  # a token whose first character leaves the language is out
        for tid, pr in zip(order.tolist(), probs):
            t = texts[tid] if tid < len(texts) else None
            if tid == eos:
                ok = self.c.complete(text)
            elif t is None:
                ok = False
            else:
                ok = first_ok.get(t[0])
                if ok is None:
                    ok = first_ok[t[0]] = self.c.viable(text + t[0])
                ok = ok and (len(t) == 1 or self.c.viable(text + t))
            if ok:
                out[tid] = logits[tid]
                any_ok = True
            seen += pr
            if seen >= self.mass and any_ok:
                break
        if not any_ok:  # the model put all its mass on invalid tokens: allow the closing path
            tail = self.c.closing(text)
            if tail:
                out[self.c.tok.encode(tail, allow_special=False)[0]] = 0.0
            elif self.c.eos is not None:
                out[self.c.eos] = 0.0
        return out


def generate_constrained(model, tokenizer, prompt_ids: list[int], constraint: Constraint, max_new_tokens: int = 256,
                         temperature: float = 0.0, seed: int = 0) -> str:
    """Batch-1 constrained decoding through the one loop (`llmlab.infer.generate.generate_ids`) with
    the processor as its logits hook; the engine takes the same processor per request
    (`Engine.add_request(..., logits_processor=ConstrainedLogits(...))`)."""
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    ctx = model.config.max_position_embeddings
    if len(prompt_ids) + max_new_tokens > ctx:
        raise UserError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceed the context ({ctx})")
    proc = ConstrainedLogits(constraint, max_new_tokens)
    params = SamplingParams(max_new_tokens, temperature, seed=seed)
    stop = {constraint.eos} if constraint.eos is not None else set()
    return proc.text_of(list(generate_ids(model, prompt_ids, params, stop, logits_processor=proc)))

