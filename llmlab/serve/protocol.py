"""OpenAI request validation -> SamplingParams, and OpenAI-format errors.

Errors look like OpenAI's: HTTP 4xx/5xx with
{"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}.
Beyond the OpenAI fields we accept vLLM's extras: top_k, min_p, repetition_penalty,
no_repeat_ngram_size, stop_token_ids, ignore_eos.
"""
from __future__ import annotations

from llmlab.infer.sampling import SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _num(body: dict, key: str, default, lo=None, hi=None, kind=float, lo_open=False):
    v = body.get(key, default)
    if v is None:
        v = default
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise APIError(400, f"'{key}' must be a{'n integer' if kind is int else ' number'}, got {v!r}", key)
    v = kind(v)
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and v > hi:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise APIError(400, f"'{key}' must be in {rng}, got {v}", key)
    return v


def sampling_params(body: dict, max_tokens: int, chat: bool) -> SamplingParams:
    """Validate the sampling fields of a (chat) completion request; max_tokens is the resolved cap."""
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    if chat:
        logprobs = (_num(body, "top_logprobs", 0, 0, 20, int) or 0) if body.get("logprobs") else None
    else:
        logprobs = _num(body, "logprobs", None, 0, 5, int)
    stop_ids = body.get("stop_token_ids") or ()
    if not isinstance(stop_ids, (list, tuple)) or not all(isinstance(t, int) for t in stop_ids):
        raise APIError(400, "'stop_token_ids' must be a list of integers", "stop_token_ids")
    seed = _num(body, "seed", None, kind=int)
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, 0, 2),
        top_p=_num(body, "top_p", 1.0, 0, 1, lo_open=True),
        top_k=_num(body, "top_k", 0, -1, None, int) if body.get("top_k", 0) != -1 else 0,
        min_p=_num(body, "min_p", 0.0, 0, 1),
        seed=seed,
        repetition_penalty=_num(body, "repetition_penalty", 1.0, 0, None, lo_open=True),
        presence_penalty=_num(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=_num(body, "frequency_penalty", 0.0, -2, 2),
        no_repeat_ngram_size=_num(body, "no_repeat_ngram_size", 0, 0, None, int),
        stop=tuple(stop), stop_token_ids=tuple(stop_ids), ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=logprobs, n=_num(body, "n", 1, 1, 16, int))


def check_model(body: dict, served: str) -> None:
    m = body.get("model")
    if m is None:
        raise APIError(400, "you must provide a 'model' parameter", "model")
    if m != served:
        raise APIError(404, f"The model '{m}' does not exist (this server serves '{served}')", "model",
                       "model_not_found")


def resolve_max_tokens(body: dict, keys: tuple[str, ...], prompt_len: int, ctx: int, default_cap: int,
                       lo: int) -> int:
    """vLLM's rule: prompt + max_tokens must fit the context; absent max_tokens means 'what fits',
    capped by the server's default."""
    if prompt_len > ctx or (prompt_len == ctx and lo > 0):
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, your prompt "
                            f"has {prompt_len} tokens. Please reduce the length of the prompt.", "messages"
                       if "max_completion_tokens" in keys else "prompt", "context_length_exceeded")
    for k in keys:
        if body.get(k) is not None:
            n = _num(body, k, None, lo, None, int)
            if prompt_len + n > ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                                    f"requested {prompt_len + n} tokens ({prompt_len} in the prompt, {n} "
                                    f"for the completion). Please reduce the length.", k, "context_length_exceeded")
            return n
    return min(default_cap, ctx - prompt_len)
