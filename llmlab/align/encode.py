"""Turning (prompt, completion) text into token ids, the same way in every alignment trainer.

Prompt and completion are tokenized separately (as TRL does) so the completion's tokens, and only
they, are scored; the completion ends with EOS so the policy learns to stop. With chat=True the
prompt is rendered as a user turn with the tokenizer's chat template.
"""
from __future__ import annotations

from llmlab.errors import UserError


def encode_prompt(tok, prompt: str, chat: bool = False) -> list[int]:
    if chat:
        if getattr(tok, "chat_template", None) is None:
            raise UserError("chat=true but the tokenizer has no chat template")
        return tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
    return tok.encode(prompt)


def encode_completion(tok, completion: str) -> list[int]:
    ids = tok.encode(completion)
    if not ids:
        raise UserError(f"empty completion after tokenization: {completion!r}")
    return ids + ([tok.eos_id] if tok.eos_id is not None else [])


def pad_id_of(tok) -> int:
    pad = getattr(tok, "pad_id", None)
    return pad if pad is not None else (tok.eos_id if tok.eos_id is not None else 0)


def truncate(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Keep the end of the prompt and the start of the completion within max_length tokens."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    completion = completion[:max(1, max_length // 2)] if len(completion) > max_length // 2 else completion
    keep = max_length - len(completion)
    if keep < 1:
        raise UserError(f"max_length {max_length} leaves no room for the prompt")
    return prompt[-keep:], completion
