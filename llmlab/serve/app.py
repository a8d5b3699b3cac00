"""An OpenAI-compatible HTTP server (FastAPI) over the continuous-batching engine.

Endpoints: POST /v1/chat/completions, POST /v1/completions (echo + logprobs: lm-eval's
`local-completions` scores through it), GET /v1/models, GET /health, the web chat at /, and the
OpenAPI schema at /openapi.json (request bodies: llmlab/serve/protocol.py).
`stream: true` answers with server-sent events (`data: {chunk}` ... `data: [DONE]`).

Isolation: a request is validated completely before it is admitted; once admitted, every exit
path (done, error, client gone, exception) releases its slot and KV blocks (`_release`), and a
client that disconnects is noticed at once (a task waits for the ASGI disconnect message), not
at the next token. Every error, including an unexpected one, is answered as OpenAI error JSON.
docs/serve.md tabulates the limits and what exceeding each one returns.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from llmlab.errors import UserError
from llmlab.infer.engine import Output
from llmlab.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, chat_logprobs, check_model,
                                   cmpl_logprobs, prompts_to_ids, resolve_max_tokens, sampling_params,
                                   image_urls)
from llmlab.serve.retrieval import no_index_error
from llmlab.serve.tools import OutputFormat
from llmlab.serve.vision_chat import vision_chat
from llmlab.serve.http import JSONBodies, error_handlers, precise_openapi
from llmlab.serve.worker import EngineWorker, Overloaded, ShuttingDown

STATIC = Path(__file__).parent / "static"
_GONE = object()  # put in the event queue when the client disconnects


@dataclass
class ServerState:
    worker: EngineWorker
    tokenizer: object
    model_name: str
    max_tokens_default: int = 256
    retrieval: object = None  # llmlab.serve.retrieval.Retrieval when started with rag_index=PATH
    vision: object = None  # a vision-language model (llmlab.infer.vision): image_url parts go to it
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def ctx(self) -> int:
        return self.worker.engine.ctx


@dataclass
class Admitted:
    """The engine requests of one HTTP request: (request id, Output queue, n samples, choice offset)."""
    subs: list[tuple[str, asyncio.Queue, int, int]] = field(default_factory=list)


def create_app(worker: EngineWorker, tokenizer, model_name: str, max_tokens_default: int = 256,
               drain_timeout: float = 30.0, retrieval=None, vision=None) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        if retrieval is not None:
            retrieval.close()
        # uvicorn stopped accepting and waited for open responses: stop the engine
        await asyncio.to_thread(worker.shutdown, drain_timeout)

    st = ServerState(worker, tokenizer, model_name, max_tokens_default, retrieval, vision)
    app = FastAPI(title="llmlab", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="OpenAI-compatible API over llmlab's continuous-batching engine")
    error_handlers(app)
    app.add_middleware(JSONBodies)
    precise_openapi(app, model_name)

    @app.get("/health")
    async def health():
        h = _health(st)
        if st.retrieval is not None and isinstance(h, dict):
            h["rag"] = await st.retrieval.info()  # the web chat shows its "use documents" toggle
        return h

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": st.model_name, "object": "model", "created": st.created,
                                            "owned_by": "llmlab", "max_model_len": st.ctx}]}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _completions(st, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _chat(st, body, request)

    return app


def _health(st: ServerState):
    if not st.worker.accepting:
        return JSONResponse({"status": "shutting_down", "in_flight": st.worker.pending}, status_code=503)
    e = st.worker.engine
    return {"status": "ok", "model": st.model_name, "in_flight": st.worker.pending,
            "free_kv_blocks": e.num_free_blocks, "total_kv_blocks": e.cache.alloc.num_blocks}


# ------------------------------------------------------------------ admission and events
def _admit(st: ServerState, jobs: list[tuple[list[int], object, int | None]]) -> Admitted:
    """Submit every (ids, params, prompt_logprobs) of one HTTP request, all or none."""
    adm, base = Admitted(), 0
    try:
        for ids, params, plp in jobs:
            rid, q = st.worker.submit(ids, params, plp)
            adm.subs.append((rid, q, params.n, base))
            base += params.n
    except Overloaded as e:
        _release(st, adm)
        raise APIError(429, f"Server overloaded: {e}; retry later", None, "rate_limit_exceeded",
                       "rate_limit_error") from None
    except ShuttingDown as e:
        _release(st, adm)
        raise APIError(503, str(e), None, "service_unavailable", "server_error") from None
    return adm


def _release(st: ServerState, adm: Admitted) -> None:
    """Free the slots and KV blocks of every engine request of `adm` (idempotent)."""
    for rid, _, _, _ in adm.subs:
        st.worker.release(rid)


async def _watch_disconnect(request: Request, merged: asyncio.Queue) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            merged.put_nowait(_GONE)
            return


async def events(st: ServerState, request: Request, adm: Admitted):
    """Merge the Outputs of the engine requests of `adm` -> (choice offset, Output). Stops at once
    when the client leaves; raises APIError when a request failed; always releases `adm`."""
    remaining = {rid: n for rid, _, n, _ in adm.subs}
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(rid, q, base):
        while remaining[rid] > 0:
            item = await q.get()
            if isinstance(item, Exception) or item.finish_reason:
                remaining[rid] = 0 if isinstance(item, Exception) else remaining[rid] - 1
            await merged.put((base, item))

    tasks = [asyncio.create_task(pump(rid, q, base)) for rid, q, _, base in adm.subs]
    tasks.append(asyncio.create_task(_watch_disconnect(request, merged)))
    try:
        while any(v > 0 for v in remaining.values()) or not merged.empty():
            item = await merged.get()
            if item is _GONE:
                return
            if isinstance(item[1], Exception):
                e = item[1]
                if isinstance(e, ValueError):
                    raise APIError(400, str(e))
                raise APIError(500, str(e), None, None, "server_error")
            yield item
    finally:
        for t in tasks:
            t.cancel()
        _release(st, adm)


class ReleasingStream(StreamingResponse):
    """A streamed response that releases its engine requests however it ends, even when the
    client is gone before the body generator ever started (then its `finally` never runs)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


# ------------------------------------------------------------------ /v1/completions
async def _completions(st: ServerState, body: CompletionRequest, request: Request):
    check_model(body.model, st.model_name)
    tok = st.tokenizer
    prompts = prompts_to_ids(body.prompt, tok, st.worker.engine.model.config.vocab_size)
    echo = bool(body.echo)
    jobs = []
    for ids in prompts:  # validate all before submitting any
        mt = resolve_max_tokens(body.max_tokens, "max_tokens", len(ids), st.ctx, 16, 0)  # OpenAI's default: 16
        params = sampling_params(body, mt, chat=False)
        jobs.append((ids, params, params.logprobs if (echo and params.logprobs is not None) else None))
    adm = _admit(st, jobs)
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    starts = {base: ids for (ids, _, _), (_, _, _, base) in zip(jobs, adm.subs)}
    want_lp = jobs[0][1].logprobs is not None
    head = {"id": cid, "object": "text_completion", "model": st.model_name}

    if body.stream:
        async def sse():
            sent_echo = set()
            try:
                async for base, o in events(st, request, adm):
                    i = base + o.index
                    text = o.text
                    if echo and i not in sent_echo:
                        sent_echo.add(i)
                        text = tok.decode(starts[base]) + text
                    lp = cmpl_logprobs([o], tok) if want_lp else None
                    yield _sse({**head, "created": int(time.time()),
                                "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": o.finish_reason}]})
            except APIError as e:
                yield _sse(e.body())
            yield "data: [DONE]\n\n"
        return ReleasingStream(sse(), lambda: _release(st, adm))

    try:
        acc: dict[int, dict] = {}
        async for base, o in events(st, request, adm):
            a = acc.setdefault(base + o.index, {"outs": [], "finish": None, "plp": None})
            a["outs"].append(o)
            a["plp"] = o.prompt_logprobs if o.prompt_logprobs is not None else a["plp"]
            a["finish"] = o.finish_reason or a["finish"]
    finally:
        _release(st, adm)
    choices, usage_c = [], 0
    for (ids, params, _), (_, _, n, base) in zip(jobs, adm.subs):
        prefix = tok.decode(ids) if echo else ""
        for j in range(n):
            a = acc.get(base + j, {"outs": [], "finish": None, "plp": None})
            usage_c += sum(o.token_id is not None for o in a["outs"])
            lp = cmpl_logprobs(a["outs"], tok, a["plp"] if echo else None, prefix) if want_lp else None
            choices.append({"index": base + j, "text": prefix + "".join(o.text for o in a["outs"]),
                            "logprobs": lp, "finish_reason": a["finish"]})
    usage_p = sum(len(ids) for ids, _, _ in jobs)
    return {**head, "created": int(time.time()), "choices": choices,
            "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c}}


# ------------------------------------------------------------------ /v1/chat/completions
async def _rag(st: ServerState, body: ChatCompletionRequest, conv: list[dict]):
    """-> Augmented (llmlab/serve/retrieval.py) when the request retrieves, else None."""
    if st.retrieval is None:
        if body.rag:
            raise no_index_error()
        return None
    opts = st.retrieval.options(body.rag)
    return None if opts is None else await st.retrieval.augment(conv, *opts)


def _chat_prompt(st: ServerState, body: ChatCompletionRequest, fmt: OutputFormat, conv=None) -> list[int]:
    conv = conv if conv is not None else fmt.conversation(body.messages)
    try:
        return st.tokenizer.encode(st.tokenizer.apply_chat_template(conv, add_generation_prompt=True))
    except UserError as e:  # the model's chat template refused the conversation
        raise APIError(400, str(e), "messages") from None


async def _chat(st: ServerState, body: ChatCompletionRequest, request: Request):
    check_model(body.model, st.model_name)
    if urls := image_urls(body.messages):  # llmlab/serve/vision_chat.py
        return await vision_chat(st, body, urls)
    fmt = OutputFormat(body, st.tokenizer)  # response_format / tools (llmlab/serve/tools.py)
    conv = fmt.conversation(body.messages)
    rag = await _rag(st, body, conv)  # retrieval-augmented (opt-in; llmlab/serve/retrieval.py)
    ids = _chat_prompt(st, body, fmt, rag.conv if rag else conv)
    key = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    mt = resolve_max_tokens(requested, key, len(ids), st.ctx, st.max_tokens_default, 1)
    params = sampling_params(body, mt, chat=True)
    params.extra["logits_processor"] = fmt.processor(mt, params.greedy)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    adm = _admit(st, [(ids, params, None)])
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "model": st.model_name}
    if body.stream:
        return ReleasingStream(_chat_sse(st, request, adm, head, params, len(ids), include_usage, fmt, rag),
                               lambda: _release(st, adm))
    acc: dict[int, list[Output]] = {i: [] for i in range(params.n)}
    try:
        async for _, o in events(st, request, adm):
            acc[o.index].append(o)
    finally:
        _release(st, adm)
    choices, ntok = [], 0
    for i, outs in acc.items():
        ntok += sum(o.token_id is not None for o in outs)
        message, finish = fmt.message("".join(o.text for o in outs), outs[-1].finish_reason if outs else None)
        if rag is not None:
            message["sources"] = st.retrieval.sources(message.get("content"), rag)
        choices.append({"index": i, "message": message,
                        "logprobs": ({"content": chat_logprobs(outs, st.tokenizer)}
                                     if params.logprobs is not None else None),
                        "finish_reason": finish})
    return {**head, "object": "chat.completion", "created": int(time.time()), "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok, "total_tokens": len(ids) + ntok}}


async def _chat_sse(st: ServerState, request: Request, adm: Admitted, head: dict, params, n_prompt: int,
                    include_usage: bool, fmt: OutputFormat, rag=None):
    started, ntok = set(), 0
    held: dict[int, str] = {}  # an answer that starts a tool call is held back until it is complete
    spoke: set[int] = set()  # choices that already streamed content (then it is no call)
    chunk = {**head, "object": "chat.completion.chunk"}
    answers: dict[int, str] = {}  # with rag: each choice's text, for its sources' `cited` flags
    try:
        async for _, o in events(st, request, adm):
            delta = {}
            if o.index not in started:
                started.add(o.index)
                delta["role"] = "assistant"
            text, finish = o.text, o.finish_reason
            if o.index in held or (o.index not in spoke and fmt.starts_call(text)):
                held[o.index] = held.get(o.index, "") + text
                text = ""
                if finish:
                    message, finish = fmt.message(held.pop(o.index), finish)
                    if "tool_calls" in message:
                        delta["tool_calls"] = [{"index": 0, **message["tool_calls"][0]}]
                    else:
                        text = message["content"]
            if text.strip():
                spoke.add(o.index)
            if text or "role" in delta:
                delta["content"] = text
            ntok += o.token_id is not None
            if rag is not None:
                answers[o.index] = answers.get(o.index, "") + o.text
                if finish:
                    delta["sources"] = st.retrieval.sources(answers[o.index], rag)
            choice = {"index": o.index, "delta": delta, "logprobs": None, "finish_reason": finish}
            if params.logprobs is not None and o.token_id is not None:
                choice["logprobs"] = {"content": chat_logprobs([o], st.tokenizer)}
            if o.index in held and not delta and choice["logprobs"] is None:
                continue  # a tool call being held back: nothing to send yet
            yield _sse({**chunk, "created": int(time.time()), "choices": [choice]})
        if include_usage:
            yield _sse({**chunk, "created": int(time.time()), "choices": [],
                        "usage": {"prompt_tokens": n_prompt, "completion_tokens": ntok,
                                  "total_tokens": n_prompt + ntok}})
    except APIError as e:
        yield _sse(e.body())
    yield "data: [DONE]\n\n"
