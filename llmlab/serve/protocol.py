"""The OpenAI request bodies as pydantic models (they are the server's OpenAPI schema), their
translation to SamplingParams, and OpenAI-format errors.

Errors look like OpenAI's: HTTP 4xx/5xx with
{"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}.
Beyond the OpenAI fields we accept vLLM's extras: top_k, min_p, repetition_penalty,
no_repeat_ngram_size, stop_token_ids, ignore_eos. Numeric bounds are SamplingParams' own
(llmlab/infer/sampling.py): declared once, checked here by pydantic and again by SamplingParams.
Unknown fields are accepted and ignored (as vLLM and the OpenAI clients expect).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from llmlab.infer.sampling import SamplingError, SamplingParams, bounds
from llmlab.tokenizer.chat import ROLES

MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_MESSAGES = 1024  # messages in one chat request
INT32_MAX = 2 ** 31 - 1


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bound(name: str, **kw):
    """A pydantic Field with SamplingParams' bounds for `name`, as JSON Schema minimum/maximum."""
    lo, hi, lo_open = bounds(name)
    if lo is not None:
        kw["gt" if lo_open else "ge"] = lo
    if hi is not None:
        kw["le"] = hi
    return Field(None, **kw)


Number = StrictFloat  # strict: a JSON number (ints too), never a string or a bool
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
Role = Literal[ROLES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Strict):
    url: StrictStr  # a base64 data URL (data:image/png;base64,...): this server fetches nothing
    detail: StrictStr | None = None  # accepted, ignored (the encoder has one input size)


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(_Strict):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]  # errors name the bad part


class ChatMessage(_Strict):
    role: Role
    content: Union[StrictStr, list[ContentPart], None] = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: StrictStr | None = None  # a tool turn: which call it answers


# ------------------------------------------------------------------ structured output and tools
class JSONSchemaFormat(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    schema_: dict | None = Field(None, alias="schema", description="a JSON Schema (the subset of "
                                 "llmlab.infer.constrained.schema_to_regex); output is constrained to it")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    """{"type": "text"} (default), {"type": "json_object"} (any JSON object) or
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}: the output is
    constrained token by token (llmlab.infer.constrained), so it always parses (and validates)."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionDef(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: StrictStr | None = None
    parameters: dict | None = Field(None, description="JSON Schema of the arguments object")
    strict: StrictBool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: StrictBool | None = None


class _Sampling(_Strict):
    """Fields shared by both endpoints."""
    model: StrictStr
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt | None = _bound("n")
    temperature: Number | None = _bound("temperature")
    top_p: Number | None = _bound("top_p")
    top_k: StrictInt | None = Field(None, ge=-1, le=INT32_MAX, description="-1 or 0: off (vLLM's convention)")
    min_p: Number | None = _bound("min_p")
    seed: StrictInt | None = _bound("seed")
    repetition_penalty: Number | None = _bound("repetition_penalty")
    presence_penalty: Number | None = _bound("presence_penalty")
    frequency_penalty: Number | None = _bound("frequency_penalty")
    no_repeat_ngram_size: StrictInt | None = _bound("no_repeat_ngram_size")
    stop: Union[NonEmpty, Annotated[list[NonEmpty], Field(max_length=4)], None] = None
    stop_token_ids: list[StrictInt] | None = Field(None, max_length=64)
    ignore_eos: StrictBool | None = None
    user: StrictStr | None = None


class RagOptions(BaseModel):
    """llmlab extension: answer from the server's RAG index (`llmlab serve rag_index=PATH`)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    k: StrictInt | None = Field(None, ge=1, le=20, description="chunks to retrieve (default: the server's rag_k)")
    mode: Literal["hybrid", "dense", "bm25", "fts"] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = _bound("logprobs")
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: StrictBool | None = None  # accepted; at most one call is generated per turn
    rag: Union[StrictBool, RagOptions, None] = Field(None, description="llmlab extension: retrieve from the "
                                                     "server's RAG index; sources come back on the message")


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
    max_tokens: StrictInt | None = Field(None, ge=0, le=INT32_MAX)
    echo: StrictBool | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=5)


def validation_error(errors: list[dict]) -> APIError:
    """pydantic/FastAPI validation errors -> one OpenAI 400 naming the first bad field."""
    e = errors[0] if errors else {}
    loc = _field_loc(e)
    if loc and loc[-1] == "content" and len(errors) > 1:  # a list of parts: name the bad part, not the str arm
        deeper = [x for x in errors if len(_field_loc(x)) > len(loc)]
        e, loc = (deeper[0], _field_loc(deeper[0])) if deeper else (e, loc)
    if e.get("type") == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request ({e.get('msg', '')})")
    if not loc:
        return APIError(400, f"the request body must be a JSON object ({e.get('msg', 'invalid')})")
    where = ".".join(loc)
    got = repr(e.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    msg = e.get("msg", "invalid value")
    if loc[-1] == "content" and e.get("type") == "string_type":
        msg = 'must be a string or a list of parts ({"type": "text", ...}, {"type": "image_url", ...})'
    elif loc[-1] == "image_url" and e.get("type") == "model_type":
        msg = 'must be an object {"url": "data:image/png;base64,..."} (OpenAI\'s form)'
    return APIError(400, f"'{where}': {msg} (got {got})", loc[0])


def _field_loc(e: dict) -> list[str]:
    """An error's location as field names and indexes (consecutive repeats from union tags dropped)."""
    out = []
    for x in e.get("loc", ()):
        if x != "body" and _is_field(x) and (not out or out[-1] != str(x)):
            out.append(str(x))
    return out


def _is_field(part) -> bool:
    """Drop pydantic's union-member tags ('str', 'list[constrained-str]', ...) from an error location."""
    return isinstance(part, int) or (str(part).isidentifier() and part not in ("str", "int", "float", "bool"))


def check_model(model: str, served: str) -> None:
    if model != served:
        raise APIError(404, f"The model '{model}' does not exist (this server serves '{served}')", "model",
                       "model_not_found")


def message_text(m: ChatMessage) -> str:
    if isinstance(m.content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.text for p in m.content if p.type == "text")
    return m.content or ""


def image_urls(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """(where, url) of every image_url content part, e.g. ('messages[0].content[1]', 'data:...')."""
    return [(f"messages[{i}].content[{j}]", p.image_url.url) for i, m in enumerate(messages)
            if isinstance(m.content, list) for j, p in enumerate(m.content) if p.type == "image_url"]


def sampling_params(req: _Sampling, max_tokens: int, chat: bool) -> SamplingParams:
    """A validated request -> SamplingParams (bounds checked once more there; errors name the field)."""
    stop = req.stop if req.stop is not None else ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    if chat:
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    names = {"max_new_tokens": "max_tokens", "logprobs": "top_logprobs" if chat else "logprobs"}
    try:
        return SamplingParams(
            max_new_tokens=max_tokens, logprobs=logprobs, stop=stop, n=_default(req.n, 1),
            temperature=_default(req.temperature, 1.0), top_p=_default(req.top_p, 1.0),
            top_k=max(0, _default(req.top_k, 0)), min_p=_default(req.min_p, 0.0), seed=req.seed,
            repetition_penalty=_default(req.repetition_penalty, 1.0),
            presence_penalty=_default(req.presence_penalty, 0.0),
            frequency_penalty=_default(req.frequency_penalty, 0.0),
            no_repeat_ngram_size=_default(req.no_repeat_ngram_size, 0),
            stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=bool(req.ignore_eos))
    except SamplingError as e:
        raise APIError(400, str(e), names.get(e.field, e.field)) from None


def _default(v, d):
    return d if v is None else v


def resolve_max_tokens(requested: int | None, key: str, prompt_len: int, ctx: int, default_cap: int,
                       lo: int) -> int:
    """vLLM's rule: prompt + max_tokens must fit the context; absent max_tokens means 'what fits',
    capped by the server's default."""
    if prompt_len > ctx or (prompt_len == ctx and lo > 0):
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, your prompt "
                            f"has {prompt_len} tokens. Please reduce the length of the prompt.",
                       "messages" if key == "max_completion_tokens" else "prompt", "context_length_exceeded")
    if requested is None:
        return min(default_cap, ctx - prompt_len)
    if prompt_len + requested > ctx:
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
                            f"for the completion). Please reduce the length.", key, "context_length_exceeded")
    return requested


def prompts_to_ids(prompt, tokenizer, vocab_size: int) -> list[list[int]]:
    """OpenAI accepts a string, a list of strings, a list of token ids, or a list of id lists."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "'prompt' must not be empty", "prompt")
    if all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if len(prompt) > MAX_PROMPTS:
        raise APIError(400, f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}", "prompt")
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = tokenizer.encode(p)
        else:
            if any(t < 0 or t >= vocab_size for t in p):
                raise APIError(400, f"token ids must be in [0, {vocab_size})", "prompt")
            ids = list(p)
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt")
        out.append(ids)
    return out


# ------------------------------------------------------------------ logprobs objects of the responses
def _tok_str(tokenizer, t: int) -> str:
    return tokenizer.decode_bytes([t]).decode("utf-8", errors="replace")


def cmpl_logprobs(outs: list, tokenizer, prompt_lp=None, echo_text: str = "") -> dict:
    """The legacy completions logprobs object; with echo the prompt tokens come first (the first
    has logprob null). A stop token is listed too (lm-eval slices off the last token)."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = 0
    for t, lp, top in (prompt_lp or []):
        s = _tok_str(tokenizer, t)
        tokens.append(s), lps.append(lp), offsets.append(pos)
        tops.append({_tok_str(tokenizer, a): v for a, v in top} if lp is not None else None)
        pos += len(s)
    pos = len(echo_text) if prompt_lp else 0
    for o in outs:
        if o.logprob is None:
            continue
        tid = o.token_id if o.token_id is not None else o.stop_token_id
        s = _tok_str(tokenizer, tid)
        tokens.append(s), lps.append(o.logprob), offsets.append(pos)
        tops.append({_tok_str(tokenizer, a): v for a, v in (o.top_logprobs or [])})
        pos += len(s) if o.token_id is not None else 0
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(outs: list, tokenizer) -> list[dict]:
    res = []
    for o in outs:
        if o.token_id is None or o.logprob is None:
            continue
        b = tokenizer.decode_bytes([o.token_id])
        res.append({"token": b.decode("utf-8", errors="replace"), "logprob": o.logprob, "bytes": list(b),
                    "top_logprobs": [{"token": _tok_str(tokenizer, a), "logprob": v,
                                      "bytes": list(tokenizer.decode_bytes([a]))} for a, v in (o.top_logprobs or [])]})
    return res
