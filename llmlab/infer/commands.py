"""CLI verbs: `llmlab generate` (one completion) and `llmlab chat` (terminal REPL)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from llmlab.command import Verb
from llmlab.errors import UserError


@dataclass
class GenerateConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    prompt: str = field(default="", metadata={"help": "prompt text (required)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt as a user turn with the chat template"})
    system: str = field(default="", metadata={"help": "system message when chat=true"})
    max_new_tokens: int = 128
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class ChatConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    system: str = field(default="", metadata={"help": "system message (empty: the template's default)"})
    prompt: str = field(default="", metadata={"help": "if set: answer this one message and exit (no REPL)"})
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"


def _params(cfg):
    from llmlab.infer.sampling import SamplingParams
    try:
        return SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def run_generate(cfg: GenerateConfig) -> int:
    from llmlab.infer.generate import stream_text
    from llmlab.infer.load import load_model_and_tokenizer

    if not cfg.prompt:
        raise UserError("prompt is empty: pass prompt=\"...\"")
    params = _params(cfg)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    if cfg.chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": cfg.prompt}]
        ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
    else:
        ids = tok.encode(cfg.prompt)
        sys.stdout.write(cfg.prompt)
    for piece in stream_text(model, tok, ids, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_chat(cfg: ChatConfig) -> int:
    from llmlab.infer.generate import stream_text
    from llmlab.infer.load import load_model_and_tokenizer

    params = _params(cfg)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    history = [{"role": "system", "content": cfg.system}] if cfg.system else []
    interactive = not cfg.prompt
    if interactive:
        print("chat with the model; /reset clears the history, /exit or Ctrl-D quits")
    while True:
        if interactive:
            try:
                user = input("you> ").strip()
            except EOFError:
                print()
                return 0
            if user in ("/exit", "/quit"):
                return 0
            if user == "/reset":
                history = history[:1] if cfg.system else []
                continue
            if not user:
                continue
        else:
            user = cfg.prompt
            print(f"you> {user}")
        history.append({"role": "user", "content": user})
        ids = tok.encode(tok.apply_chat_template(history, add_generation_prompt=True))
        sys.stdout.write("assistant> ")
        reply = []
        try:
            for piece in stream_text(model, tok, ids, params):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except UserError as e:  # context full: tell, drop the turn, keep the session
            history.pop()
            print(f"\n[{e}; use /reset]")
            if not interactive:
                raise
            continue
        print()
        history.append({"role": "assistant", "content": "".join(reply)})
        if not interactive:
            return 0


VERBS = {
    "generate": Verb(GenerateConfig, run_generate, "complete a prompt (greedy or sampled), streaming to stdout",
                     'llmlab generate model=smollm2 prompt="The capital of France is" max_new_tokens=20'),
    "chat": Verb(ChatConfig, run_chat, "chat with a model in the terminal using its chat template",
                 "llmlab chat model=smollm2 temperature=0.7 top_p=0.9"),
}
