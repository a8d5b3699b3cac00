"""CLI verb `llmlab quantize`: GGUF export, or a post-training method applied and saved."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require

VERBS: dict[str, Verb] = {}


@dataclass
class QuantizeConfig:
    RENAMED: ClassVar[dict[str, str]] = {"output": "output_dir"}  # output= until the next release (llmlab.config)
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    output_dir: str = field(default="", metadata={"help": "the .gguf file (format=gguf) or model dir (format=hf)"})
    format: str = field(default="gguf", metadata={"help": "gguf (block formats) or hf (method applied, fp32 "
                                                           "weights holding the dequantized values)"})
    type: str = field(default="Q8_0", metadata={"help": "GGUF tensor type: F32 F16 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K"})
    method: str = field(default="rtn", metadata={"help": "format=hf: rtn nf4 gptq awq awq_gptq (AWQ's scales, then GPTQ)"})
    bits: int = field(default=4, metadata={"help": "format=hf: weight bits (2, 3, 4, 8)"})
    group_size: int = field(default=64, metadata={"help": "format=hf: weights per scale (-1: per channel)"})
    sym: bool = field(default=False, metadata={"help": "format=hf: symmetric absmax grid instead of zero-point"})
    act_order: bool = field(default=True, metadata={"help": "GPTQ: columns by decreasing Hessian diagonal"})
    percdamp: float = field(default=0.01, metadata={"help": "GPTQ: dampening, a fraction of mean(diag H)"})
    clip: bool | None = field(default=None, metadata={"help": "group ranges by output-error clip search; default: on "
                                                               "for AWQ (as the paper), off for GPTQ (needs act_order)"})
    awq_grid: int = field(default=20, metadata={"help": "AWQ: alpha grid points (alpha = i / awq_grid)"})
    awq_clip_steps: int = field(default=10, metadata={"help": "AWQ: clip ratios 1 - i * awq_clip_shrink / steps, "
                                                              "i < steps (llm-awq: 10)"})
    awq_clip_shrink: float = field(default=0.5, metadata={"help": "AWQ: the largest clip shrink (llm-awq: 0.5)"})
    awq_duo: bool = field(default=False, metadata={"help": "AWQ: AutoAWQ's duo scaling, s = mean|x|^a / "
                                                           "mean|w|^(1-a) (per-group normalised |w|)"})
    awq_rows: str = field(default="sample", metadata={"help": "AWQ: per-Linear and clip searches on 512 sampled "
                                                              "calibration rows (sample) or on every token (all)"})
    awq_sample: str = field(default="strided", metadata={"help": "AWQ: the 512 search rows are every (tokens // 512)-th "
                                                                "token (strided) or seeded random tokens (uniform)"})
    awq_objective: str = field(default="linear", metadata={"help": "AWQ: score scales on each Linear's output "
                                                                   "(linear) or on the attention / MLP output (module)"})
    block_inputs: str = field(default="quantized", metadata={"help": "GPTQ/AWQ: block i+1 is calibrated on the "
                                                                      "outputs of the quantized blocks (quantized) or "
                                                                      "of the full-precision ones (fp, as llm-awq)"})
    ragged_groups: bool = field(default=False, metadata={"help": "format=hf: a group_size that does not divide a "
                                                                 "row leaves a shorter last group (576 = 4 x 128 + 64)"})
    calibration: str = field(default="wiki", metadata={"help": "'wiki' (Wikipedia extracts outside the held-out "
                                                                "split) or a UTF-8 text file"})
    num_calibration_samples: int = field(default=32, metadata={"help": "calibration windows"})
    calibration_length: int = field(default=256, metadata={"help": "tokens per calibration window (at most the "
                                                                   "model's context: the speedrun model's is 128)"})
    eval_windows: int = field(default=0, metadata={"help": "if > 0: held-out perplexity before and after on this "
                                                            "many 256-token windows (the model's context if shorter)"})
    name: str = field(default="", metadata={"help": "general.name in the GGUF metadata"})


def _calibration(cfg: QuantizeConfig, tok):
    from llmlab.quant import calibrate
    if cfg.calibration == "wiki":
        return calibrate.token_windows(tok, calibrate.wiki_split(False), cfg.num_calibration_samples,
                                       cfg.calibration_length, seed=1)
    return calibrate.text_windows(tok, cfg.calibration, cfg.num_calibration_samples, cfg.calibration_length)


def _check(cfg: QuantizeConfig) -> None:
    """Every check that needs no model, before it is loaded (bad input: one line, exit code 2)."""
    from pathlib import Path

    from llmlab.checkpoint import check_output_dir, check_output_parent
    from llmlab.quant.apply import CHOICES, check_choices, check_numbers
    from llmlab.quant.gguf_export import FORMATS
    from llmlab.quant.ptq import check_bits
    require(cfg.output_dir, "output_dir= is required (a .gguf file for format=gguf, a directory for format=hf)")
    if cfg.format not in ("gguf", "hf"):
        raise UserError(f"unknown format '{cfg.format}' (gguf or hf)")
    require(cfg.eval_windows >= 0, f"eval_windows must be >= 0, got {cfg.eval_windows}")
    if cfg.format == "gguf":
        cfg.type = cfg.type.upper()  # as llama.cpp's quantize: q4_0 is Q4_0
        if cfg.type not in FORMATS:
            raise UserError(f"unknown GGUF type '{cfg.type}' (one of: {', '.join(FORMATS)})")
        if Path(cfg.output_dir).suffix != ".gguf":
            raise UserError(f"output_dir must end in .gguf for format=gguf, got {cfg.output_dir}")
        require(not Path(cfg.output_dir).is_dir(), f"output_dir={cfg.output_dir} is a directory")
        check_output_parent(cfg.output_dir, "output_dir")
        return
    if cfg.method not in ("rtn", "nf4", "gptq", "awq", "awq_gptq"):
        raise UserError(f"method '{cfg.method}' cannot be saved as weights (rtn, nf4, gptq, awq, awq_gptq); the activation "
                        "methods are measured by benchmarks/quant_methods.py")
    check_output_dir(cfg.output_dir, "output_dir")
    if cfg.method in ("rtn", "gptq", "awq", "awq_gptq"):
        check_bits(cfg.bits)
    check_choices(**{key: getattr(cfg, key) for key in CHOICES})
    check_numbers(cfg.percdamp, cfg.awq_grid, cfg.awq_clip_steps, cfg.awq_clip_shrink)
    if cfg.method in ("gptq", "awq", "awq_gptq"):
        require(cfg.num_calibration_samples >= 1 and cfg.calibration_length >= 2, "need num_calibration_samples >= 1 "
                f"and calibration_length >= 2, got {cfg.num_calibration_samples} and {cfg.calibration_length}")
        if cfg.calibration != "wiki" and not Path(cfg.calibration).is_file():
            raise UserError(f"calibration file not found: {cfg.calibration}")


@verb(VERBS, "quantize", QuantizeConfig)
def run_quantize(cfg: QuantizeConfig) -> int:
    """post-training quantization: GGUF export, RTN/NF4/GPTQ/AWQ

    Example: llmlab quantize model=smollm2 format=gguf type=Q4_0 output_dir=runs/smollm2.Q4_0.gguf
    """
    from pathlib import Path

    import torch

    from llmlab.quant import calibrate

    _check(cfg)
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    torch.set_grad_enabled(False)
    model, tok = load_model_and_tokenizer(cfg.model, device="cpu", dtype="float32")
    calibrated = cfg.format == "hf" and cfg.method in ("gptq", "awq", "awq_gptq")
    if calibrated:
        calibrate.check_window(model, cfg.calibration_length, "calibration_length")
    ev = None
    if cfg.eval_windows > 0:
        n = min(256, getattr(model.config, "max_position_embeddings", 256))
        ev = calibrate.token_windows(tok, calibrate.wiki_split(True), cfg.eval_windows, n)
        print(f"held-out perplexity before ({cfg.eval_windows} x {n} tokens): {calibrate.perplexity(model, ev).perplexity:.4f}")
    if cfg.format == "gguf":
        from llmlab.quant.gguf_export import write_gguf
        out = Path(cfg.output_dir)
        info = write_gguf(model, tok, out, cfg.type, cfg.name or Path(cfg.model).stem)
        print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB; tensor types: {info['types']})")
        if ev is not None:
            from llmlab.model.load import load_model
            back, _ = load_model(str(out))
            print(f"held-out perplexity after: {calibrate.perplexity(back, ev).perplexity:.4f}")
        return 0
    from llmlab.quant.apply import quantize_model
    calib = _calibration(cfg, tok) if calibrated else None
    info = quantize_model(model, cfg.method, cfg.bits, cfg.group_size, cfg.sym, calib, act_order=cfg.act_order,
                          awq_objective=cfg.awq_objective, ragged_groups=cfg.ragged_groups,
                          percdamp=cfg.percdamp, clip=cfg.clip, awq_grid=cfg.awq_grid,
                          awq_clip_steps=cfg.awq_clip_steps, awq_clip_shrink=cfg.awq_clip_shrink,
                          awq_duo=cfg.awq_duo, block_inputs=cfg.block_inputs, awq_rows=cfg.awq_rows,
                          awq_sample=cfg.awq_sample)
    from llmlab.model.hf import save_hf_dir
    save_hf_dir(model, cfg.output_dir, extra_files=tok.hf_files())
    print(f"wrote {cfg.output_dir} ({cfg.method} int{cfg.bits} g{cfg.group_size}: {info['stored_bytes'] / 1e6:.1f} MB "
          "as codes + scales; the directory holds the dequantized fp32 weights)")
    if ev is not None:
        print(f"held-out perplexity after: {calibrate.perplexity(model, ev).perplexity:.4f}")
    return 0
