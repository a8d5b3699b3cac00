"""A saved `llmlab mm llava` run as a vision chat model: what `llmlab chat model=<run> image=...`
and `llmlab serve model=<run>` (OpenAI image_url parts) use, through llmlab.infer.vision."""
from __future__ import annotations

import torch

from llmlab.multimodal.image_io import load_image


class LlavaChat:
    def __init__(self, run_dir: str):
        from llmlab.multimodal.llava_train import load_llava
        self.model, self.size = load_llava(run_dir)
        self.lm, self.tokenizer = self.model.lm, self.model.tok

    def image(self, src, name: str = "image") -> torch.Tensor:
        """-> (C, H, W) at the encoder's size; UserError for a non-image / too large / bad data URL."""
        return load_image(src, self.size, self.model.vision.config.in_chans, name)

    def answer(self, image: torch.Tensor, question: str, max_new_tokens: int) -> str:
        """Greedy answer (LLaVA's chat prompt: system + <image> + question)."""
        return self.model.answer(image.unsqueeze(0), [question], max_new_tokens)[0]

    def prompt_tokens(self, question: str) -> int:
        """Positions the prompt takes: chat prefix + one per image patch + the question's turn."""
        n_patches = (self.size // self.model.vision.config.patch_size) ** 2
        return len(self.model._before) + n_patches + len(self.model._prompt_ids(question))
