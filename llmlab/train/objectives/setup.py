"""`llmlab train objective=... architecture=...`: the model, loaders and tokenizer files an
objective needs, and the one-line errors for combinations that cannot work.

New model: the objective's special tokens are appended to the data's vocabulary (special.allot)
and the model is built for the architecture: decoder (causal), prefix_decoder (the Transformer with
prefix_lm=true) or encoder_decoder (llmlab.model.encdec, sized like the decoder: the same width,
heads and MLP, `depth` layers in each stack). init_from: the model must already have the tokens
and an attention pattern the objective can use.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from llmlab.errors import UserError
from llmlab.train.objectives import NEEDS_PREFIX, OBJECTIVES, ObjectiveLoader, build_objective, special

NATURAL = {"causal_lm": "decoder", "fim": "decoder", "prefix_lm": "prefix_decoder", "mlm": "prefix_decoder",
           "span_corruption": "prefix_decoder", "ul2": "prefix_decoder"}
SEQ2SEQ_FFN = {"relu": "relu", "gelu": "gelu", "silu": "silu", "swiglu": "gated-silu", "geglu": "gated-gelu",
               "reglu": "gated-relu"}
PAD = "<pad>"  # encoder-decoder: padding and decoder start, as T5's id 0


DEFAULTS = dict(noise_density=0.15, mean_noise_span_length=3.0, num_sentinels=100, mlm_probability=0.15,
                ul2_mixture="ul2", fim_rate=0.5, fim_spm_rate=0.5)  # TrainConfig's objective fields


def _params(cfg) -> dict:
    return {k: getattr(cfg, k) for k in DEFAULTS}


def check_config(cfg) -> None:
    """Objective name, parameters and architecture: bad ones are a one-line UserError."""
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"objective '{cfg.objective}' unknown (use one of {', '.join(OBJECTIVES)})")
    build_objective(cfg.objective, **_params(cfg))  # validates the parameters
    if cfg.num_sentinels < 1:
        raise UserError(f"num_sentinels must be >= 1, got {cfg.num_sentinels}")
    arch = cfg.architecture or NATURAL[cfg.objective]
    if cfg.objective in NEEDS_PREFIX and arch == "decoder":
        raise UserError(f"objective={cfg.objective} needs bidirectional attention over its input, but "
                        "architecture=decoder is causal-only: use architecture=prefix_decoder"
                        + (" or encoder_decoder" if cfg.objective != "mlm" else ""))
    if arch == "encoder_decoder" and cfg.objective in ("mlm", "fim", "causal_lm"):
        raise UserError(f"objective={cfg.objective} has no input/target split for an encoder-decoder: "
                        "use span_corruption, ul2 or prefix_lm")


@dataclasses.dataclass
class Setup:
    """A new model built for an objective: `loader(window_loader, seed)` wraps (x, y) windows."""
    objective: object
    model: object
    ids: dict
    layout: str  # causal | prefix | seq2seq

    def loader(self, windows, seed: int = 0) -> ObjectiveLoader:
        c = self.model.config
        pad = self.ids.get(PAD, getattr(c, "pad_token_id", None) or 0)
        return ObjectiveLoader(windows, self.objective, self.ids, self.layout, pad, None,
                               getattr(c, "decoder_start_token_id", 0), seed)


def make(objective: str, model_config, vocab: int, architecture: str = "", eos=None, seed: int = 0,
         reserve_tokens: tuple[str, ...] = (), **params) -> Setup:
    """A model trained from scratch with `objective`: the decoder config `model_config` (a ModelConfig,
    its vocab_size ignored) with the objective's tokens appended to a `vocab`-id vocabulary, as the
    architecture (default: the objective's natural one). params: TrainConfig's objective fields.
    reserve_tokens: more special tokens to add (e.g. every objective's, so models trained with
    different objectives share one vocabulary and can all be scored on span infilling)."""
    import torch

    from llmlab.model import Transformer
    check_config(SimpleNamespace(objective=objective, architecture=architecture, **{**DEFAULTS, **params}))
    arch = architecture or NATURAL[objective]
    obj = build_objective(objective, vocab_size=vocab, **params)
    names = list(dict.fromkeys([*reserve_tokens, *obj.special_tokens, *([PAD] if arch == "encoder_decoder" else [])]))
    ids = special.allot(vocab, names)
    extra = {**model_config.extra, "special_tokens": ids, "objective": objective}
    torch.manual_seed(seed)
    if arch == "encoder_decoder":
        from llmlab.model.encdec import EncDecConfig, EncoderDecoder
        c = model_config
        if c.mlp not in SEQ2SEQ_FFN:
            raise UserError(f"encoder_decoder: no T5 feed-forward for mlp={c.mlp}")
        ec = EncDecConfig(vocab_size=vocab + len(names), d_model=c.hidden_size, d_kv=c.head_dim, d_ff=c.intermediate_size,
                          num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
                          feed_forward_proj=SEQ2SEQ_FFN[c.mlp], tie_word_embeddings=c.tie_word_embeddings,
                          pad_token_id=ids[PAD], decoder_start_token_id=ids[PAD], eos_token_id=eos,
                          n_positions=c.max_position_embeddings, extra=extra)
        return Setup(obj, EncoderDecoder(ec), ids, "seq2seq")
    mc = dataclasses.replace(model_config, vocab_size=vocab + len(names), prefix_lm=arch == "prefix_decoder",
                             extra=extra)
    return Setup(obj, Transformer(mc), ids, "prefix" if arch == "prefix_decoder" else "causal")


def _existing_model(cfg, model, tokenizer):
    """(objective, ids, layout) for init_from: checks the model can take this objective."""
    c = model.config
    seq2seq = getattr(model, "is_encoder_decoder", False)
    obj = build_objective(cfg.objective, vocab_size=c.vocab_size, **_params(cfg))
    if seq2seq and cfg.objective in ("mlm", "fim", "causal_lm"):
        raise UserError(f"objective={cfg.objective} cannot train an encoder-decoder (use span_corruption, ul2, prefix_lm)")
    if not seq2seq and cfg.objective in NEEDS_PREFIX and not c.prefix_lm:
        raise UserError(f"objective={cfg.objective} needs bidirectional attention, but {cfg.init_from} is a "
                        "causal-only decoder (prefix_lm=false)")
    names = list(obj.special_tokens)  # an encoder-decoder brings its own pad / decoder start id
    ids = special.find(names, c, tokenizer, cfg.objective) if names else {}
    layout = "seq2seq" if seq2seq else "prefix" if c.prefix_lm else "causal"
    return obj, ids, layout


def prepare(cfg, model, train_loader, val_loader, extra_files: dict, vocab: int, eos, tokenizer=None):
    """-> (model, train_loader, val_loader, extra_files, model_flops_per_token or None)."""
    if cfg.init_from:
        obj, ids, layout = _existing_model(cfg, model, tokenizer)
    else:
        st = make(cfg.objective, model.config, vocab, cfg.architecture, eos, cfg.seed, **_params(cfg))
        obj, model, ids, layout = st.objective, st.model, st.ids, st.layout
    pad = ids.get(PAD, getattr(model.config, "pad_token_id", None) or 0)
    start = getattr(model.config, "decoder_start_token_id", 0)
    mk = lambda base, seed: ObjectiveLoader(base, obj, ids, layout, pad, None, start, seed)  # noqa: E731
    train_loader = mk(train_loader, cfg.seed)
    val_loader = mk(val_loader, cfg.seed + 1) if val_loader is not None else None
    if ids and extra_files:
        extra_files = special.add_to_tokenizer_files(extra_files, ids)
    from llmlab.log import get_logger
    n = sum(p.numel() for p in model.parameters())
    get_logger("llmlab.train").info(f"objective {cfg.objective} on a {layout} model ({n / 1e6:.2f}M params, "
                                    f"{len(ids)} special tokens added to the vocabulary)" if not cfg.init_from else
                                    f"objective {cfg.objective} on {cfg.init_from} ({layout})")
    fpt = None
    if layout == "seq2seq":
        from llmlab.model.encdec import flops_per_token
        fpt = flops_per_token(model.config, cfg.max_length)
    return model, train_loader, val_loader, extra_files, fpt
