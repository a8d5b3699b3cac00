"""The one chat-template renderer: HF-compatible Jinja (`tokenizer_config.json` `chat_template`).

SFT masking, inference and evaluation all render conversations through `render_chat`.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmlab.errors import UserError

# ChatML, used when a tokenizer has no template of its own
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

ROLES = ("system", "user", "assistant", "tool")


def _raise(msg: str):
    raise TemplateError(msg)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = False,
                **extra) -> str:
    """Render `messages` ([{'role', 'content'}...]) with a Jinja chat template."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"message {i}: expected a mapping with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise UserError(f"message {i}: unknown role '{m['role']}' (use one of {', '.join(ROLES)})")
    try:
        return _compile(template or CHATML).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   **extra)
    except TemplateError as e:
        raise UserError(f"chat template: {e}") from None


def assistant_spans(template: str | None, messages: list[dict], end_of_turn: str | None = None,
                    **extra) -> tuple[str, list[tuple[int, int]]]:
    """Render once and find each assistant reply in the text: -> (text, [(start, end) char spans]).

    Reply i starts after the rendering of messages[:i] with the generation prompt (templates are
    prefix-stable: a conversation's rendering starts with the rendering of its first turns), at the
    first occurrence of its content. With `end_of_turn` (e.g. '<|im_end|>'), the span also covers
    that marker when it directly follows the reply, so the model learns to stop.
    """
    text = render_chat(template, messages, False, **extra)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render_chat(template, messages[:i], True, **extra)
        if not text.startswith(prefix):
            raise UserError(f"chat template is not prefix-stable at message {i}: cannot locate the assistant "
                            "reply for the loss mask")
        start = text.find(m["content"], len(prefix))
        if start < 0:
            raise UserError(f"message {i}: the chat template does not render the assistant content verbatim")
        end = start + len(m["content"])
        if end_of_turn and text.startswith(end_of_turn, end):
            end += len(end_of_turn)
        spans.append((start, end))
    return text, spans


def encode_chat(tokenizer, messages: list[dict], train_on_end_of_turn: bool = True,
                **extra) -> tuple[list[int], list[int]]:
    """-> (ids, loss_mask): mask 1 on assistant tokens only (SFT trains on replies, not prompts).

    The rendered text is encoded piece by piece at span boundaries, so every span boundary is a
    token boundary and the mask is exact. Special tokens in the template become their ids.
    """
    eot = tokenizer.eos_token if train_on_end_of_turn else None
    extra.setdefault("bos_token", tokenizer.bos_token or "")
    extra.setdefault("eos_token", tokenizer.eos_token or "")
    text, spans = assistant_spans(tokenizer.chat_template, messages, eot, **extra)
    ids: list[int] = []
    mask: list[int] = []
    pos = 0
    for start, end in spans + [(len(text), len(text))]:
        for piece, flag in ((text[pos:start], 0), (text[start:end], 1)):
            if piece:
                part = tokenizer.encode(piece)
                ids.extend(part)
                mask.extend([flag] * len(part))
        pos = end
    return ids, mask


END_OF_TURN = "<|im_end|>"


def end_of_turn(tok) -> str | None:
    """The token that closes an assistant turn: ChatML's <|im_end|> when the template uses it and
    the vocabulary has it as a special token (SmolLM2's eos already is; the speedrun's eos is
    <|endoftext|>), else the tokenizer's eos."""
    template = tok.chat_template or CHATML
    if END_OF_TURN in template and END_OF_TURN in getattr(tok, "special", {}):
        return END_OF_TURN
    return tok.eos_token
