"""Pretraining objectives, one module each (docs/train.md "Objectives"):

causal_lm (GPT), prefix_lm (T5 §3.3, GLM, U-PaLM), mlm (BERT), span_corruption (T5), ul2 (UL2's
mixture of denoisers), fim (fill-in-the-middle, Bavarian et al. 2022).

API (also what the ablation and long-context tools call):

    obj = build_objective("span_corruption", noise_density=0.15, mean_noise_span_length=3.0)
    ids = special.allot(data_vocab, obj.special_tokens)          # new model: ids after the data's
    loader = ObjectiveLoader(window_loader, obj, ids, layout)     # layout: causal | prefix | seq2seq
    for inputs, labels in loader: loss = model_loss(model, inputs, labels)

`obj.example(tokens, rng, ids, eos_id) -> Example(inputs, targets[, labels])` is the pure
per-window transform; `decoder_batch` / `seq2seq_batch` turn examples into tensors.
"""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.train.objectives.base import IGNORE, Example, ModelInputs, ObjectiveLoader, decoder_batch, seq2seq_batch

OBJECTIVES = ("causal_lm", "prefix_lm", "mlm", "span_corruption", "ul2", "fim")
# what each objective needs of the attention: full visibility over the inputs (prefix), or none
NEEDS_PREFIX = {"prefix_lm", "mlm"}
DENOISING = {"span_corruption", "ul2"}


def build_objective(name: str, **params):
    """An objective by name; params are the TrainConfig fields it reads (others are ignored)."""
    p = params
    if name == "causal_lm":
        from llmlab.train.objectives.causal_lm import CausalLM
        return CausalLM()
    if name == "prefix_lm":
        from llmlab.train.objectives.prefix_lm import PrefixLM
        return PrefixLM()
    if name == "mlm":
        from llmlab.train.objectives.mlm import MaskedLM
        return MaskedLM(p.get("mlm_probability", 0.15), p.get("vocab_size", 0))
    if name == "span_corruption":
        from llmlab.train.objectives.span_corruption import SpanCorruption
        return SpanCorruption(p.get("noise_density", 0.15), p.get("mean_noise_span_length", 3.0),
                              p.get("num_sentinels", 100))
    if name == "ul2":
        from llmlab.train.objectives.ul2 import MixtureOfDenoisers
        return MixtureOfDenoisers(p.get("ul2_mixture", "ul2"), p.get("num_sentinels", 100))
    if name == "fim":
        from llmlab.train.objectives.fim import FillInTheMiddle
        return FillInTheMiddle(p.get("fim_rate", 0.5), p.get("fim_spm_rate", 0.5))
    raise UserError(f"objective '{name}' unknown (use one of {', '.join(OBJECTIVES)})")


def model_loss(model, inputs, labels):
    """Mean cross-entropy of a model on one objective batch (labels -100 ignored)."""
    import torch.nn.functional as F
    logits = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


__all__ = ["OBJECTIVES", "NEEDS_PREFIX", "DENOISING", "IGNORE", "Example", "ModelInputs", "ObjectiveLoader",
           "build_objective", "decoder_batch", "seq2seq_batch", "model_loss"]
