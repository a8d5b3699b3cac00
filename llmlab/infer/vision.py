"""Vision-language models for `llmlab chat` and `llmlab serve`, by the `kind` in a model dir's
config.json. Later stages register their loaders here (llmlab.multimodal.commands fills
VISION_MODELS with kind="llava"), so inference and serving can answer about images without
importing a later stage.

A loader takes the model dir and returns an object with:
  lm, tokenizer           the language model and its tokenizer (text-only turns run on the engine)
  image(src, name)        a file path / bytes / data:image/...;base64 URL -> the encoder's input
                          tensor; UserError (one line) for a non-image, a too-large one, a bad URL
  answer(image, question, max_new_tokens) -> str   greedy answer about that image
"""
from __future__ import annotations

import json
from pathlib import Path

VISION_MODELS: dict = {}  # config.json "kind" -> loader(model_dir)


def vision_kind(model: str) -> str | None:
    """The registered kind of a model dir, or None (a text-only model: packaged name, .gguf, HF dir).
    A run dir of a kind that does not generate text (a `llmlab mm train` encoder: kind "contrastive")
    is refused in one line (UserError) instead of failing later as an unknown model_type."""
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return None
    try:
        kind = json.loads(cfg.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    if kind is not None and kind not in VISION_MODELS:
        from llmlab.errors import UserError
        what = (f"an image-text encoder from `llmlab mm train`: score it with `llmlab mm eval run_dir={model}`"
                if kind == "contrastive" else "no chat loader is registered for it")
        raise UserError(f"model '{model}' is a run of kind '{kind}' ({what}), not a model that writes text; "
                        "chat and serve take a language model or a `llmlab mm llava` output_dir")
    return kind


def load_vision_model(model: str):
    """The vision-language model in `model`, or None when it is a text-only model."""
    kind = vision_kind(model)
    return VISION_MODELS[kind](model) if kind else None
