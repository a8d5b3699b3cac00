"""LLaVA-style vision-language model (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5's
two-layer MLP projector): a frozen vision encoder's patch features -> MLP projector -> vectors in
the LM's embedding space, spliced into the chat where the user's message says `<image>`.

Training has two stages: (1) feature alignment, only the projector learns, on captions ("describe
the image" -> "a red triangle"); (2) visual instruction tuning on question/answer turns, the
projector plus (optionally) LoRA adapters on the LM's attention. The loss is next-token cross-entropy
on the assistant's answer tokens only; the LM is any llmlab Transformer (SmolLM2-135M-Instruct
from its GGUF by default), run here from input embeddings instead of token ids.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import UserError
from llmlab.model.attention import Attention

IMAGE_MARK = "<image>"
SYSTEM = "Answer in one word."


def check_rope_lm(lm) -> None:
    """The vision-language paths run the LM layer by layer: RoPE pre-norm LLaMA-family models only."""
    cfg = lm.config
    if cfg.position != "rope" or cfg.scale_embeddings or cfg.embedding_layernorm or cfg.norm_placement == "post" \
            or cfg.sliding_window is not None or cfg.sparse_stride is not None:
        raise UserError(f"vision-language models here run RoPE pre-norm LMs (LLaMA/SmolLM2); this one has "
                        f"position={cfg.position}, norm_placement={cfg.norm_placement}")


class _PrefixKV:
    """A KV "cache" that autograd can run through (no in-place writes). Empty, it records each
    layer's keys/values of a shared prefix (batch 1); filled, it puts them, expanded to the batch,
    before each layer's new keys/values, so gradients reach the prefix once, summed over the rows."""

    def __init__(self):
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if not self.length:
            self.kv.append((k, v))
            return k, v
        pk, pv = self.kv[layer]
        return (torch.cat([pk.expand(k.shape[0], -1, -1, -1), k], 2),
                torch.cat([pv.expand(v.shape[0], -1, -1, -1), v], 2))


def lm_hidden_from_embeds(lm, x: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """The LM's final-norm hidden states for input embeddings x (B, T, d), causal, positions 0..T-1
    (right padding only, so padded tails never reach real tokens). With `prefix` (1, P, d), the
    rows all start with those P embeddings: they run once (batch 1) and x's tokens sit at positions
    P..P+T-1 attending to them; the result is x's (B, T, d) only, equal to the full rows' last T."""
    check_rope_lm(lm)
    cache, P = None, 0
    if prefix is not None and prefix.shape[1]:
        cache, P = _PrefixKV(), prefix.shape[1]
        rope = lm.rope(torch.arange(P, device=x.device), x.dtype)
        for layer in lm.model.layers:
            prefix = layer(prefix, rope, cache, None)
        cache.length = P
    rope = lm.rope(torch.arange(P, P + x.shape[1], device=x.device), x.dtype)
    for layer in lm.model.layers:
        x = layer(x, rope, cache, None)
    return lm.model.norm(x)


class Projector(nn.Sequential):
    """LLaVA-1.5: Linear -> GELU -> Linear from vision width to LM width."""

    def __init__(self, vision_dim: int, lm_dim: int):
        super().__init__(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))


class Llava(nn.Module):
    def __init__(self, vision, lm, tokenizer, feature_layer: int = -1):
        super().__init__()
        check_rope_lm(lm)
        self.vision, self.lm, self.tok = vision, lm, tokenizer
        self.feature_layer = feature_layer  # -1: the encoder's final-LN patches; -2: LLaVA-1.5's penultimate layer
        self.projector = Projector(vision.config.embed_dim, lm.config.hidden_size)
        for p in self.vision.parameters():
            p.requires_grad_(False)
        before, after = self.tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{IMAGE_MARK}\nQ"}]).split(IMAGE_MARK)
        self._before = self.tok.encode(before)
        self._after_tail = after.split("Q", 1)[1]  # "<|im_end|>\n<|im_start|>assistant\n"
        self.end_id = self.tok.encode("<|im_end|>")
        # a later turn of a multi-turn row (packed training): the text between an answer's <|im_end|> and
        # the next question, from the same template ("\n<|im_start|>user\n" with SmolLM2's)
        two = self.tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": f"{IMAGE_MARK}\nQ1"},
                                            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}])
        between = two.split("A1", 1)[1].split("Q2", 1)[0]
        if not between.startswith("<|im_end|>"):
            raise UserError("the LM's chat template does not end an assistant turn with <|im_end|>")
        self._next_turn = between[len("<|im_end|>"):]
        # every row starts with the same chat prefix (system turn, user header): run it once per batch
        # (exact; about a quarter of a training step's tokens with SmolLM2's template). Off for
        # attention variants whose KV path differs (MLA, flash).
        self.share_prefix = all(type(b.self_attn) is Attention and b.self_attn.impl in ("sdpa", "eager")
                                for b in lm.model.layers)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N patches, LM width). The encoder gets gradients only once
        `llmlab mm llava train_vision=true` unfreezes it (stage 2)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())):
            feats = self.vision.forward_features(images, self.feature_layer)[:, 1:]
        return self.projector(feats)

    def _prompt_ids(self, question: str) -> list[int]:
        return self.tok.encode(f"\n{question}{self._after_tail}")

    def _row_ids(self, questions: list[str], answers: list[str] | None) -> tuple[list[int], list[int], int]:
        """The text tokens after the image for one row, their targets (-100 outside answers) and the
        last answer's length (with its end token; 0 without answers). Several questions make one
        multi-turn conversation (LLaVA-1.5's packing): every answer is a target."""
        ids, tgt, a = [], [], []
        for t, q in enumerate(questions):
            p = self._prompt_ids(q) if t == 0 else self.tok.encode(f"{self._next_turn}{q}{self._after_tail}")
            ids, tgt = ids + p, tgt + [-100] * len(p)
            if answers is not None:
                a = self.tok.encode(answers[t]) + self.end_id
                ids, tgt = ids + a, tgt + a
        return ids, tgt, len(a)

    def _batch(self, images, questions, answers=None):
        """Input embeddings (B, T, d), labels (B, T) (-100 outside answers) and prompt lengths. A row's
        question may be a list (with a list of answers): one conversation of several turns about its image,
        the image encoded once, every answer labelled; its prompt length ends before the last answer."""
        img = self.image_tokens(images)
        emb = self.lm.model.embed_tokens
        rows, labels, plen = [], [], []
        pre = emb(torch.tensor(self._before))
        for i, q in enumerate(questions):
            qs = [q] if isinstance(q, str) else list(q)
            ans = None if answers is None else [answers[i]] if isinstance(answers[i], str) else list(answers[i])
            if (ans is None and len(qs) > 1) or (ans is not None and len(ans) != len(qs)):
                raise ValueError(f"a row of {len(qs)} questions needs as many answers (got {ans})")
            ids, tgt, last = self._row_ids(qs, ans)
            x = torch.cat([pre, img[i], emb(torch.tensor(ids, dtype=torch.long))])
            # position t predicts token t+1: each answer token is labelled at the position before it
            lab = torch.tensor(([-100] * (len(x) - len(tgt)) + tgt)[1:] + [-100], dtype=torch.long)
            rows.append(x)
            labels.append(lab)
            plen.append(len(x) - last)  # the prompt ends where the last answer begins
        T = max(len(r) for r in rows)
        x = torch.stack([F.pad(r, (0, 0, 0, T - len(r))) for r in rows])
        y = torch.stack([F.pad(lab, (0, T - len(lab)), value=-100) for lab in labels])
        return x, y, plen

    def loss(self, images, questions, answers) -> torch.Tensor:
        x, y, _ = self._batch(images, questions, answers)
        h, P = self._hidden(x)
        keep = y[:, P:] != -100  # the LM head (49k x 576) only where a label is
        return F.cross_entropy(self.lm.lm_head(h[keep]).float(), y[:, P:][keep])

    def _hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Hidden states of x's columns from P on, and P: the shared prefix's length (0 when off)."""
        P = len(self._before) if self.share_prefix else 0
        return lm_hidden_from_embeds(self.lm, x[:, P:], x[:1, :P] if P else None), P

    @torch.no_grad()
    def answer(self, images, questions, max_new_tokens: int = 4) -> list[str]:
        """Greedy answers (open-ended: any token may come out), stopping at <|im_end|>."""
        from llmlab.infer.generate import generate_with_forward
        from llmlab.infer.sampling import SamplingParams

        x, _, plen = self._batch(images, questions)
        emb = self.lm.model.embed_tokens

        def forward(fed: list[int] | None) -> torch.Tensor:  # no KV cache: the whole sequence each step
            nonlocal x
            if fed is not None:  # each row's new token at its own next position (prompt lengths differ)
                x = F.pad(x, (0, 0, 0, 1))
                for i, t in enumerate(fed):
                    x[i, plen[i]] = emb.weight[t]
                    plen[i] += 1
            h, P = self._hidden(x)
            return self.lm.lm_head(h[torch.arange(len(plen)), torch.tensor(plen) - 1 - P])

        out = generate_with_forward(forward, [[] for _ in questions], SamplingParams(max_new_tokens, 0.0),
                                    stop_ids=self.end_id)
        return [self.tok.decode(o).strip() for o in out]
