"""CLI verbs: `llmlab generate` (one completion: sampled, greedy or beam search) and `llmlab chat`
(terminal REPL on the continuous-batching engine, the same one `llmlab serve` runs)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require
from llmlab.infer.sampling import SamplingParams

VERBS: dict[str, Verb] = {}


def _sampling(**defaults):
    """The sampling section: SamplingParams itself (validated once, in its __post_init__). Its keys
    are also accepted flat, as before: `temperature=0.7` is `sampling.temperature=0.7`."""
    from llmlab.infer.sampling import SamplingParams
    return field(default_factory=lambda: SamplingParams(seed=0, **defaults),
                 metadata={"help": "sampling settings (llmlab.infer.sampling.SamplingParams); keys may be given flat"})


@dataclass
class GenerateConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    prompt: str = field(default="", metadata={"help": "prompt text (required)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt as a user turn with the chat template"})
    system: str = field(default="", metadata={"help": "system message when chat=true"})
    sampling: SamplingParams = _sampling()
    num_beams: int = field(default=1, metadata={"help": "> 1: beam search (ignores sampling settings)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score = logprob / length**length_penalty"})
    early_stopping: str = field(default="false", metadata={"help": "beam search: true, false or never"})
    num_return_sequences: int = field(default=1, metadata={"help": "beam search: print the n best"})
    speculative: str = field(default="", metadata={"help": "speculative decoding through the engine: 'ngram' "
                                                           "(prompt lookup) or a draft model with the same tokenizer"})
    num_speculative_tokens: int = field(default=4, metadata={"help": "tokens drafted per step"})
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class ChatConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    system: str = field(default="", metadata={"help": "system message (empty: the template's default)"})
    prompt: str = field(default="", metadata={"help": "if set: answer this one message and exit (no REPL)"})
    image: str = field(default="", metadata={"help": "a picture to ask about (file or data:image/...;base64 URL); "
                                                     "model= must then be a vision-language dir (`llmlab mm llava`)"})
    sampling: SamplingParams = _sampling(max_new_tokens=256)
    device: str = "auto"
    dtype: str = "auto"


def _params(cfg):
    """The request's settings; n and logprobs belong to the server (one completion is printed)."""
    p = cfg.sampling
    if p.n != 1 or p.logprobs is not None:
        raise UserError("n and logprobs are server settings (llmlab serve); the CLI prints one completion")
    return p


def _beam(cfg, model, tok, ids) -> int:
    from llmlab.infer.beam import beam_search
    es = {"true": True, "false": False, "never": "never"}.get(str(cfg.early_stopping).lower())
    if es is None:
        raise UserError(f"early_stopping: expected true, false or never, got '{cfg.early_stopping}'")
    if not 1 <= cfg.num_return_sequences <= cfg.num_beams:
        raise UserError(f"num_return_sequences must be in [1, num_beams={cfg.num_beams}], got {cfg.num_return_sequences}")
    if len(ids) + cfg.sampling.max_new_tokens > model.config.max_position_embeddings:
        raise UserError(f"prompt ({len(ids)} tokens) + max_new_tokens ({cfg.sampling.max_new_tokens}) exceed the context "
                        f"window ({model.config.max_position_embeddings})")
    hyps = beam_search(model, ids, cfg.num_beams, cfg.sampling.max_new_tokens, cfg.length_penalty, es,
                       cfg.num_return_sequences, {tok.eos_id} if tok.eos_id is not None else set())
    for i, h in enumerate(hyps):
        prefix = f"[{i}] score={h.score:.4f} " if len(hyps) > 1 else ""
        print(prefix + (cfg.prompt if not cfg.chat else "") + tok.decode(h.tokens))
    return 0


@verb(VERBS, "generate", GenerateConfig)
def run_generate(cfg: GenerateConfig) -> int:
    """complete a prompt (greedy, sampled or beam search), streaming to stdout

    Example: llmlab generate model=smollm2 prompt="The capital of France is" max_new_tokens=20
    """
    from llmlab.infer.generate import stream_text
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer

    require(cfg.prompt, "prompt is empty: pass prompt=\"...\"")
    if cfg.num_beams < 1:
        raise UserError(f"num_beams must be >= 1, got {cfg.num_beams}")
    if cfg.speculative and cfg.num_beams > 1:
        raise UserError("speculative decoding with beam search is not supported: use num_beams=1 or speculative=''")
    params = _params(cfg)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    if cfg.chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": cfg.prompt}]
        ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
    else:
        ids = tok.encode(cfg.prompt)
    if cfg.num_beams > 1:
        return _beam(cfg, model, tok, ids)
    if not cfg.chat:
        sys.stdout.write(cfg.prompt)
    engine = None
    if cfg.speculative:  # one user through the engine (no row padding), speculation measured, not forced
        from llmlab.infer.engine import EngineConfig
        engine = EngineConfig(max_num_seqs=1, num_blocks=-(-model.config.max_position_embeddings // 16) + 1,
                              row_pad=1, speculative=cfg.speculative,
                              num_speculative_tokens=cfg.num_speculative_tokens).build(model, tok)
    wrote = False
    for piece in (_engine_stream(engine, ids, params) if engine else stream_text(model, tok, ids, params)):
        sys.stdout.write(piece)
        sys.stdout.flush()
        wrote = wrote or bool(piece)
    sys.stdout.write("\n")
    if not wrote and not cfg.chat and tok.chat_template:  # a chat model ends raw text at once: say why, not nothing
        print("(the model ended the text at once; it has a chat template: try chat=true)", file=sys.stderr)
    if engine is not None:
        sp = engine.spec_summary()
        print(f"[speculative {cfg.speculative}: {sp['mean_accepted']:.2f} drafted tokens accepted per step "
              f"({sp['acceptance_rate']:.0%} of drafts) over {sp['verify_steps']} steps]", file=sys.stderr)
    return 0


def _engine_stream(engine, ids, params):
    """Yield text pieces of one request through the engine (the path `llmlab serve` uses)."""
    try:
        rid = engine.add_request(ids, params)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        while engine.has_work():
            for o in engine.step():
                if o.request_id == rid and o.text:
                    yield o.text
    finally:
        engine.cancel(rid)  # Ctrl-C mid-reply frees the blocks


def _read_turn(history: list, system: str):
    """Prompt until the user types a message; -> the message, or None to quit (Ctrl-D, /exit).
    Ctrl-C at the prompt clears the line and says how to quit (as Python's own REPL does)."""
    while True:
        try:
            user = input("you> ").strip()
        except EOFError:
            print()
            return None
        except KeyboardInterrupt:
            print("\n(Ctrl-C stops a reply; /exit or Ctrl-D quits)")
            continue
        if user in ("/exit", "/quit"):
            return None
        if user == "/reset":
            del history[1 if system else 0:]
            continue
        if user:
            return user


def _reply(engine, tok, history: list, params) -> str | None:
    """Stream one assistant turn; Ctrl-C stops it (the part shown is kept). -> the reply, or None
    when the conversation no longer fits the context (the turn is dropped)."""
    ids = tok.encode(tok.apply_chat_template(history, add_generation_prompt=True))
    sys.stdout.write("assistant> ")
    reply = []
    try:
        for piece in _engine_stream(engine, ids, params):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:  # stop this reply, keep the session (the engine freed its blocks)
        print(" [stopped]")
        return "".join(reply)
    print()
    return "".join(reply)


def image_chat(vm, image: str, prompt: str, max_new_tokens: int) -> int:
    """Questions about one picture, answered greedily by the vision-language model `vm`
    (llmlab.infer.vision), each on its own: LLaVA-style models here are trained on single
    question/answer turns. `prompt`: ask once and return; empty: a REPL (/exit or Ctrl-D quits).
    `llmlab chat image=...` and `llmlab mm chat` both run this."""
    img = vm.image(image, "image")
    if prompt:
        print(f"you> {prompt}\nassistant> {vm.answer(img, prompt, max_new_tokens)}", flush=True)
        return 0
    size = getattr(vm, "size", None)
    print(f"ask about {image}" + (f" (the model sees it at {size}x{size})" if size else "")
          + "; /exit or Ctrl-D quits")
    while (q := _read_turn([], "")) is not None:
        print(f"assistant> {vm.answer(img, q, max_new_tokens)}", flush=True)
    return 0


@verb(VERBS, "chat", ChatConfig)
def run_chat(cfg: ChatConfig) -> int:
    """chat with a model in the terminal using its chat template

    Example: llmlab chat model=smollm2 temperature=0.7 top_p=0.9
      (a picture: llmlab chat model=runs/mm_llava image=shape.png; an easy-vqa test picture:
       image=$(python -c "import easy_vqa; print(easy_vqa.get_test_image_paths()[0])"))
    """
    from llmlab.infer.engine import Engine
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.infer.vision import load_vision_model, vision_kind

    params = _params(cfg)
    if cfg.image and not vision_kind(cfg.model):
        raise UserError(f"model '{cfg.model}' is text-only: image= needs a vision-language model dir "
                        "(a `llmlab mm llava` output_dir)")
    vm = load_vision_model(cfg.model)
    if vm is not None and cfg.image:
        return image_chat(vm, cfg.image, cfg.prompt, cfg.sampling.max_new_tokens)
    model, tok = (vm.lm, vm.tokenizer) if vm is not None else load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    # one user: no batch to be invariant to, so no row padding (row_pad=1 is the fastest at batch 1)
    engine = Engine(model, tok, max_num_seqs=1, num_blocks=-(-model.config.max_position_embeddings // 16) + 1,
                    row_pad=1)
    history = [{"role": "system", "content": cfg.system}] if cfg.system else []
    interactive = not cfg.prompt
    if interactive:
        print("chat with the model; /reset clears the history, Ctrl-C stops a reply, /exit or Ctrl-D quits")
    while True:
        user = _read_turn(history, cfg.system) if interactive else cfg.prompt
        if user is None:
            return 0
        if not interactive:
            print(f"you> {user}")
        history.append({"role": "user", "content": user})
        try:
            reply = _reply(engine, tok, history, params)
        except UserError as e:  # context full: tell, drop the turn, keep the session
            history.pop()
            print(f"\n[{e}; use /reset]")
            if not interactive:
                raise
            continue
        history.append({"role": "assistant", "content": reply})
        if not interactive:
            return 0
