"""OpenAI `image_url` content parts in /v1/chat/completions (base64 data URLs only: the server
fetches nothing). A vision-language model (llmlab.infer.vision: a `llmlab mm llava` run) answers
the last user turn about the image, greedily; a text-only model answers 400 naming itself, and so
do a non-image, a too-large image and a malformed data URL (limits: llmlab/multimodal/image_io.py).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from llmlab.errors import UserError
from llmlab.serve.protocol import APIError, ChatCompletionRequest, message_text, resolve_max_tokens, sampling_params

_ONE_AT_A_TIME = threading.Lock()  # the vision path runs its own forward passes, one request at a time


def check_images(st, body: ChatCompletionRequest, urls: list[tuple[str, str]]):
    """-> (image tensor, question, max tokens) or APIError 400 before any work is done."""
    vm = st.vision
    if vm is None:
        raise APIError(400, f"The model '{st.model_name}' is text-only and does not accept image_url content "
                            f"parts ({urls[0][0]}); send text, or serve a vision-language model "
                            "(a `llmlab mm llava` run dir)", "messages", "image_not_supported")
    if len(urls) > 1:
        raise APIError(400, f"The model '{st.model_name}' reads one image per request; got {len(urls)}",
                       "messages", "too_many_images")
    where, url = urls[0]
    if not url.startswith("data:"):
        raise APIError(400, f"{where}: image_url must be a base64 data URL (data:image/png;base64,...); this "
                            "server fetches no remote URLs", "messages", "invalid_image_url")
    if (body.n or 1) != 1 or body.tools or (body.response_format and body.response_format.type != "text"):
        raise APIError(400, "with an image: n=1, no tools and no response_format (answers are greedy text)",
                       "messages")
    try:
        image = vm.image(url, where)
    except UserError as e:
        raise APIError(400, str(e), "messages", "invalid_image") from None
    users = [m for m in body.messages if m.role == "user"]
    question = message_text(users[-1]).strip() if users else ""
    key = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    mt = resolve_max_tokens(requested, key, vm.prompt_tokens(question), st.ctx, st.max_tokens_default, 1)
    sampling_params(body, mt, chat=True)  # bad sampling values are still 400s (the answer is greedy)
    return image, question, mt


async def vision_chat(st, body: ChatCompletionRequest, urls: list[tuple[str, str]]):
    from fastapi.responses import StreamingResponse
    image, question, mt = check_images(st, body, urls)

    def run():
        with _ONE_AT_A_TIME:
            return st.vision.answer(image, question, mt)
    text = await asyncio.to_thread(run)
    n_prompt, n_out = st.vision.prompt_tokens(question), len(st.tokenizer.encode(text)) if text else 0
    finish = "length" if n_out >= mt else "stop"
    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "model": st.model_name, "created": int(time.time())}
    if not body.stream:
        return {**head, "object": "chat.completion", "usage": usage, "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}]}
    chunk = {**head, "object": "chat.completion.chunk"}
    events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                     "logprobs": None, "finish_reason": None}]},
              {**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}]
    if body.stream_options and body.stream_options.include_usage:
        events.append({**chunk, "choices": [], "usage": usage})

    async def sse():
        for e in events:
            yield f"data: {json.dumps(e)}\n\n"
        yield "data: [DONE]\n\n"
    return StreamingResponse(sse(), media_type="text/event-stream")
