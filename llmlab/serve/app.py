"""An OpenAI-compatible HTTP server (FastAPI) over the continuous-batching engine.

Endpoints: POST /v1/chat/completions, POST /v1/completions (echo + logprobs: lm-eval's
`local-completions` scores through it), GET /v1/models, GET /health, and the web chat at /.
`stream: true` answers with server-sent events (`data: {chunk}` ... `data: [DONE]`).
A client that disconnects is cancelled at the next token boundary and its KV blocks are freed.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from llmlab.infer.engine import Output
from llmlab.serve.protocol import APIError, check_model, resolve_max_tokens, sampling_params
from llmlab.serve.worker import EngineWorker, Overloaded, ShuttingDown

STATIC = Path(__file__).parent / "static"


def create_app(worker: EngineWorker, tokenizer, model_name: str, max_tokens_default: int = 256,
               drain_timeout: float = 30.0):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn stopped accepting (SIGINT/SIGTERM) and waited for open responses: stop the engine
        await asyncio.to_thread(worker.shutdown, drain_timeout)

    app = FastAPI(title="llmlab", docs_url=None, redoc_url=None, lifespan=lifespan)
    ctx = worker.engine.ctx
    created = int(time.time())

    def err(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def read_json(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"We could not parse the JSON body of your request ({e})") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def submit(ids, params, plp=None):
        try:
            return worker.submit(ids, params, plp)
        except Overloaded as e:
            raise APIError(429, f"Server overloaded: {e}; retry later", None, "rate_limit_exceeded",
                           "rate_limit_error") from None
        except ShuttingDown as e:
            raise APIError(503, str(e), None, "service_unavailable", "server_error") from None

    async def events(request: Request, subs: list[tuple[str, asyncio.Queue, int]]):
        """Merge the Outputs of several engine requests; cancel them all if the client leaves.
        Yields (choice offset, Output)."""
        remaining = {rid: n for rid, _, n in subs}
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(rid, q, base):
            while remaining.get(rid, 0) > 0:
                item = await q.get()
                if isinstance(item, Exception):
                    remaining[rid] = 0
                    await merged.put((base, item))
                    return
                if item.finish_reason:
                    remaining[rid] -= 1
                await merged.put((base, item))

        tasks = [asyncio.create_task(pump(rid, q, base)) for (rid, q, _), base in
                 zip(subs, _offsets([n for _, _, n in subs]))]
        try:
            while any(v > 0 for v in remaining.values()) or not merged.empty():
                try:
                    item = await asyncio.wait_for(merged.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if isinstance(item[1], Exception):
                    raise APIError(400 if isinstance(item[1], ValueError) else 500, str(item[1]))
                yield item
        finally:
            for t in tasks:
                t.cancel()
            for rid, _, _ in subs:  # finished ones are a no-op; live ones are freed (disconnect)
                if remaining.get(rid, 0) > 0:
                    worker.cancel(rid)
                else:
                    worker.done(rid)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return err(e)

    @app.get("/health")
    async def health():
        if not worker.accepting:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        e = worker.engine
        return {"status": "ok", "model": model_name, "in_flight": worker.pending,
                "free_kv_blocks": e.num_free_blocks, "total_kv_blocks": e.cache.alloc.num_blocks}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "llmlab", "max_model_len": ctx}]}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    # ------------------------------------------------------------------ /v1/completions
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        check_model(body, model_name)
        prompts = _prompts(body.get("prompt"), tokenizer)
        echo = bool(body.get("echo", False))
        subs, per_prompt = [], []
        for ids in prompts:
            mt = resolve_max_tokens(body, ("max_tokens",), len(ids), ctx, 16, 0)  # OpenAI's default: 16
            params = sampling_params(body, mt, chat=False)
            per_prompt.append((ids, params))
        for ids, params in per_prompt:  # validate all before submitting any
            plp = params.logprobs if (echo and params.logprobs is not None) else None
            rid, q = submit(ids, params, plp)
            subs.append((rid, q, params.n))
        cid, model = f"cmpl-{uuid.uuid4().hex[:24]}", model_name
        n_choices = sum(n for _, _, n in subs)
        starts = {base: ids for (ids, _), base in zip(per_prompt, _offsets([n for _, _, n in subs]))}
        want_lp = per_prompt[0][1].logprobs is not None

        if body.get("stream"):
            async def sse():
                sent_echo = set()
                try:
                    async with aclosing(events(request, subs)) as evs:  # closed at once on disconnect
                        async for base, o in evs:
                            i = base + o.index
                            text = o.text
                            if echo and i not in sent_echo:
                                sent_echo.add(i)
                                text = tokenizer.decode(starts[base]) + text
                            lp = _cmpl_logprobs([o], tokenizer) if want_lp else None
                            chunk = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                                     "choices": [{"index": i, "text": text, "logprobs": lp,
                                                  "finish_reason": o.finish_reason}]}
                            yield f"data: {json.dumps(chunk)}\n\n"
                except APIError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")

        acc = {i: {"outs": [], "finish": None, "plp": None} for i in range(n_choices)}
        async for base, o in events(request, subs):
            a = acc[base + o.index]
            a["outs"].append(o)
            if o.prompt_logprobs is not None:
                a["plp"] = o.prompt_logprobs
            if o.finish_reason:
                a["finish"] = o.finish_reason
        choices, usage_c = [], 0
        for base, ids in starts.items():
            n = next(n for (_, _, n), b in zip(subs, _offsets([n for _, _, n in subs])) if b == base)
            for j in range(n):
                a = acc[base + j]
                text = "".join(o.text for o in a["outs"])
                usage_c += sum(o.token_id is not None for o in a["outs"])
                lp = None
                if want_lp:
                    lp = _cmpl_logprobs(a["outs"], tokenizer, a["plp"] if echo else None, tokenizer.decode(ids) if echo else "")
                choices.append({"index": base + j, "text": (tokenizer.decode(ids) if echo else "") + text,
                                "logprobs": lp, "finish_reason": a["finish"]})
        usage_p = sum(len(ids) for ids, _ in per_prompt)
        return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c,
                                              "total_tokens": usage_p + usage_c}}

    # ------------------------------------------------------------------ /v1/chat/completions
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        check_model(body, model_name)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
        conv = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):  # [{"type": "text", "text": ...}, ...]
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            if not isinstance(c, str):
                raise APIError(400, "each message needs a string 'content'", "messages")
            conv.append({"role": m["role"], "content": c})
        ids = tokenizer.encode(tokenizer.apply_chat_template(conv, add_generation_prompt=True))
        mt = resolve_max_tokens(body, ("max_completion_tokens", "max_tokens"), len(ids), ctx, max_tokens_default, 1)
        params = sampling_params(body, mt, chat=True)
        rid, q = submit(ids, params)
        subs = [(rid, q, params.n)]
        cid, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", model_name
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        if body.get("stream"):
            async def sse():
                started, ntok = set(), 0
                try:
                    async with aclosing(events(request, subs)) as evs:  # closed at once on disconnect
                        async for _, o in evs:
                            delta = {}
                            if o.index not in started:
                                started.add(o.index)
                                delta["role"] = "assistant"
                            if o.text or "role" in delta:
                                delta["content"] = o.text
                            ntok += o.token_id is not None
                            choice = {"index": o.index, "delta": delta, "logprobs": None, "finish_reason": o.finish_reason}
                            if params.logprobs is not None and o.token_id is not None:
                                choice["logprobs"] = {"content": _chat_logprobs([o], tokenizer)}
                            yield "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk",
                                                         "created": int(time.time()), "model": model,
                                                         "choices": [choice]}) + "\n\n"
                    if include_usage:
                        yield "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk",
                                                     "created": int(time.time()), "model": model, "choices": [],
                                                     "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok,
                                                               "total_tokens": len(ids) + ntok}}) + "\n\n"
                except APIError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")

        acc = {i: [] for i in range(params.n)}
        async for _, o in events(request, subs):
            acc[o.index].append(o)
        choices, ntok = [], 0
        for i, outs in acc.items():
            ntok += sum(o.token_id is not None for o in outs)
            choices.append({"index": i, "message": {"role": "assistant", "content": "".join(o.text for o in outs)},
                            "logprobs": ({"content": _chat_logprobs(outs, tokenizer)}
                                         if params.logprobs is not None else None),
                            "finish_reason": outs[-1].finish_reason if outs else None})
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok,
                                              "total_tokens": len(ids) + ntok}}

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}", None,
                                     "not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request, exc):
        return JSONResponse(APIError(405, f"method {request.method} not allowed on {request.url.path}").body(),
                            status_code=405)

    return app


def _offsets(ns: list[int]) -> list[int]:
    out, s = [], 0
    for n in ns:
        out.append(s)
        s += n
    return out


def _prompts(prompt, tokenizer) -> list[list[int]]:
    """OpenAI accepts a string, a list of strings, a list of token ids, or a list of id lists."""
    bad = APIError(400, "'prompt' must be a non-empty string, list of strings, list of token ids, "
                        "or list of token-id lists", "prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = tokenizer.encode(p)
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(t < 0 or t >= tokenizer.vocab_size for t in p):
                raise APIError(400, f"token ids must be in [0, {tokenizer.vocab_size})", "prompt")
            ids = p
        else:
            raise bad
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt")
        out.append(ids)
    if len(out) > 64:
        raise APIError(400, f"at most 64 prompts per request, got {len(out)}", "prompt")
    return out


def _tok_str(tokenizer, t: int) -> str:
    return tokenizer.decode_bytes([t]).decode("utf-8", errors="replace")


def _cmpl_logprobs(outs: list[Output], tokenizer, prompt_lp=None, echo_text: str = "") -> dict:
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


def _chat_logprobs(outs: list[Output], tokenizer) -> list[dict]:
    res = []
    for o in outs:
        if o.token_id is None or o.logprob is None:
            continue
        b = tokenizer.decode_bytes([o.token_id])
        res.append({"token": b.decode("utf-8", errors="replace"), "logprob": o.logprob, "bytes": list(b),
                    "top_logprobs": [{"token": _tok_str(tokenizer, a), "logprob": v,
                                      "bytes": list(tokenizer.decode_bytes([a]))} for a, v in (o.top_logprobs or [])]})
    return res
