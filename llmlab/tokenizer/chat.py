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
