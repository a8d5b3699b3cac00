"""Post-training quantization methods side by side on one held-out text: ours vs references.

    OMP_NUM_THREADS=1 python benchmarks/quant_methods.py [--quick] [--rows rtn4,gptq4,...] [--out FILE.json]
    OMP_NUM_THREADS=1 python benchmarks/quant_methods.py --gguf     # the GGUF export table instead

Every row starts from the same fp32 model (for SmolLM2: its packaged Q4_1/Q8_0 weights decoded
to fp32, the baseline), quantizes the projections of every block (the tied embedding / LM head
stays fp32) and scores the same held-out windows (`llmlab.quant.calibrate`: Wikipedia extracts in
the data pipeline's validation split); GPTQ, AWQ and SmoothQuant calibrate on windows from the
other documents. References where they run on CPU: optimum-quanto int8/int4 weight-only, torchao
int8 weight-only. Prints a markdown table, then as its last line one JSON object with the ratios
gptq_vs_rtn = (RTN int4 ppl - fp32 ppl) / (GPTQ's - fp32), awq_vs_rtn likewise (row awq4, AWQ's chosen
arm; with --calib-draws each calibrated row is the mean perplexity over its draws; int4 at
--group, default 128 as the goal says: SmolLM2's 576-wide rows then end in a ragged group of 64,
576 = 4 x 128 + 64; 1536-wide rows divide), and
int8_ppl = fp32 ppl / W8A8 SmoothQuant ppl (all higher is better).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from llmlab.quant import calibrate
from llmlab.quant.apply import quantize_model


def rows(group: int, bits: int = 4) -> list[tuple[str, str, dict]]:
    """(label, method, kwargs); the ratios use 'rtn4', 'gptq4', 'awq4', 'sq'. bits: the low-bit rows' width (keys keep the 4)."""
    low = [
        ("rtn8", "int8 RTN per-channel (W8)", "rtn", dict(bits=8, group=-1, sym=True)),
        ("rtn4", f"int4 RTN g{group} (W4)", "rtn", dict(bits=4, group=group, sym=False)),
        # GPTQ with the group ranges by clip search: fixed before measuring (docs/LOG.md, session 5)
        ("gptq4", f"int4 GPTQ g{group} act-order, clip search", "gptq", dict(bits=4, group=group, sym=False, clip=True)),
        ("gptq4plain", f"int4 GPTQ g{group} act-order (min/max groups)", "gptq", dict(bits=4, group=group, sym=False)),
        ("awq4", f"int4 AWQ g{group}", "awq", dict(bits=4, group=group, sym=False)),
        ("awq4m", f"int4 AWQ g{group}, attention/MLP-output objective", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module")),
        # settings compared on validation windows (--score val), docs/quant.md "Session 5"
        ("gptq4d", f"int4 GPTQ g{group} act-order, damp 0.1", "gptq", dict(bits=4, group=group, sym=False, percdamp=0.1)),
        ("awqgptq4", f"int4 AWQ scales + GPTQ g{group} act-order, clip search", "awq_gptq",
         dict(bits=4, group=group, sym=False, awq_objective="module", clip=True)),
        ("awq4mr", f"int4 AWQ g{group}, module objective, 2048 rows", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", max_rows=2048)),
        # AWQ settings compared on validation windows in session 7 (docs/LOG.md "seventh session")
        ("awq4m_noclip", f"int4 AWQ g{group}, module objective, no clip search", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", clip=False)),
        ("awq4m_a40", f"int4 AWQ g{group}, module objective, alpha grid 40", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", awq_grid=40)),
        ("awq4m_cf", f"int4 AWQ g{group}, module objective, clip ratios 1..0.525 step 0.025", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", awq_clip_steps=20)),
        # session 8: block i+1 calibrated on the full-precision blocks' outputs, as llm-awq / AutoAWQ
        ("awq4m_fp", f"int4 AWQ g{group}, module objective, full-precision block inputs", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", block_inputs="fp")),
        # session 9: AutoAWQ's default duo scaling, s = mean|x|^a / mean|w|^(1-a)
        ("awq4m_duo", f"int4 AWQ g{group}, module objective, duo scaling", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", awq_duo=True)),
        # session 11: 4x / 8x the calibration windows (8x: 256 x 256 = 65,536 tokens, AutoAWQ's 128 x 512);
        # `calib_x` is this script's: the row calibrates on the first calib_x * --calib-windows windows
        ("awq4m_c4", f"int4 AWQ g{group}, module objective, 4x calibration windows", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", calib_x=4)),
        ("awq4m_c8", f"int4 AWQ g{group}, module objective, 8x calibration windows", "awq",
         dict(bits=4, group=group, sym=False, awq_objective="module", calib_x=8)),
        # session 13: every per-Linear search and the clip search on all calibration tokens (through x^T x / n)
        ("awq4h", f"int4 AWQ g{group}, searches on all calibration tokens", "awq",
         dict(bits=4, group=group, sym=False, awq_rows="all")),
        # session 14: the chosen awq4 on 8x the calibration windows (65,536 tokens: AutoAWQ's 128 documents of
        # <= 512 tokens hold at most that many)
        ("awq4_c8", f"int4 AWQ g{group}, 8x calibration windows", "awq",
         dict(bits=4, group=group, sym=False, calib_x=8)),
        # the strided 512 search rows of awq4_c8 are every 128th token: half of them at window position 0;
        # the same rows drawn uniformly over token positions (calibrate.layerwise's sample="uniform")
        ("awq4_c8u", f"int4 AWQ g{group}, 8x calibration windows, uniform search rows", "awq",
         dict(bits=4, group=group, sym=False, calib_x=8, awq_sample="uniform")),
        ("awq4u", f"int4 AWQ g{group}, uniform search rows", "awq",
         dict(bits=4, group=group, sym=False, awq_sample="uniform")),
        # session 15: awq4 with alpha 0 only (s = 1): RTN + AWQ's clip search, the clip search's share
        ("awq4_a0", f"int4 AWQ g{group}, alpha 0 only (RTN + clip search)", "awq",
         dict(bits=4, group=group, sym=False, awq_grid=1)),
        # awq4h on 2x the calibration windows (16,384 tokens, every one in the searches through x^T x / n)
        ("awq4h_c2", f"int4 AWQ g{group}, searches on all tokens, 2x calibration windows", "awq",
         dict(bits=4, group=group, sym=False, awq_rows="all", calib_x=2)),
    ]
    if bits != 4:
        low = [(k, lab.replace("int4", f"int{bits}", 1).replace("(W4)", f"(W{bits})"), m, {**kw, "bits": bits} if kw.get("bits") == 4 else kw)
               for k, lab, m, kw in low]
    return low + [
        ("nf4", "NF4 (block 64, double quant)", "nf4", {}),
        ("w8a8", "W8A8 per-token (no smoothing)", "w8a8", {}),
        ("sq", "W8A8 SmoothQuant a=0.5", "smoothquant", dict(alpha=0.5)),
        ("int8", "LLM.int8() threshold 6", "llm_int8", dict(threshold=6.0)),
    ]


QUICK = {"rtn4", "gptq4", "awq4", "sq"}


def peers(base, ev, quick: bool) -> dict:
    out = {}
    try:
        from optimum.quanto import freeze, qint4, qint8, quantize
        for label, qt in (("quanto int8 weight-only", qint8), ("quanto int4 weight-only", qint4)):
            if quick and qt is qint8:
                continue
            m = copy.deepcopy(base)
            quantize(m, weights=qt, exclude=["lm_head"])
            freeze(m)
            out[label] = calibrate.perplexity(m, ev).perplexity
    except Exception as e:  # a reference that does not run here is reported, not fatal
        out["quanto error"] = repr(e)[:200]
    if not quick:
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
            m = copy.deepcopy(base)
            quantize_(m, Int8WeightOnlyConfig(), filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear)
                      and not fqn.endswith("lm_head"))
            out["torchao int8 weight-only"] = calibrate.perplexity(m, ev).perplexity
        except Exception as e:
            out["torchao error"] = repr(e)[:200]
    return out


def decode_tps(model, tok, n_new: int = 32, repeats: int = 3) -> float:
    """Greedy decode tokens/s through our generator (median of `repeats`)."""
    import statistics

    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    ids = tok.encode("The history of the city begins")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(1 for _ in generate_ids(model, ids, SamplingParams(max_new_tokens=n_new, ignore_eos=True)))
        times.append(n / (time.perf_counter() - t))
    return statistics.median(times)


def gguf_rows(a) -> None:
    """Export SmolLM2 as each GGUF type, reload it through our loader, score and time it."""
    import os
    import tempfile

    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.quant.gguf_export import write_gguf
    base, tok = load_model_and_tokenizer(a.model)
    ev = calibrate.token_windows(tok, texts(a, True), a.eval_windows, a.length)
    out = {}
    with tempfile.TemporaryDirectory() as td:
        for fmt in ("F32", "F16", "Q8_0", "Q4_1", "Q4_0"):
            path = os.path.join(td, f"m.{fmt}.gguf")
            info = write_gguf(base, tok, path, fmt)
            m, _ = load_model_and_tokenizer(path)
            ppl = calibrate.perplexity(m, ev).perplexity
            out[fmt] = {"ppl": ppl, "MB": info["bytes"] / 1e6, "decode_tok_s": decode_tps(m, tok),
                        "blocks_in_kernel": len(getattr(m, "quantized", {}))}
            print(fmt, out[fmt], flush=True)
            os.unlink(path)
            del m
    fp = out["F32"]["ppl"]
    print("\n| GGUF type | held-out ppl | delta vs fp32 | file MB | decode tok/s |\n|---|---|---|---|---|")
    for fmt, r in out.items():
        print(f"| {fmt} | {r['ppl']:.3f} | {r['ppl'] - fp:+.3f} ({100 * (r['ppl'] - fp) / fp:+.1f}%) | "
              f"{r['MB']:.1f} | {r['decode_tok_s']:.1f} |")
    print(json.dumps({"benchmark": "quant_gguf", "ours": out}))


def weights_file(a, key: str, calib_x: int = 1, draw: int | None = None):
    """Where --save-dir / --load-dir keep a weight-only row's quantized projections (calib_x: the
    row's multiple of --calib-windows; draw: its calibration draw, default --calib-draw)."""
    from pathlib import Path
    c = a.calib_windows * calib_x
    draw = a.calib_draw if draw is None else draw
    d = f".d{draw}" if draw else ""  # draw 0: the name every earlier row was saved under
    d += ".calval" if getattr(a, "calib_on_val", False) else ""  # the diagnostic's rows never load as a draw's
    return Path(a.load_dir or a.save_dir or ".") / f"{a.model.replace('/', '_')}.{key}.g{a.group}.b{a.bits}.c{c}x{a.length}{d}.safetensors"


_GRID = (".codes", ".scale", ".zero")


def save_row(m, path, lins: list[str], info: dict, grids: dict | None = None) -> None:
    """The quantized projections (the rest of the model is the fp32 base), RTN's / GPTQ's codes and
    (scale, zero) where given (for the block kernel, `benchmarks/quant_decode.py`) and the row's
    info, so a row chosen on validation windows is scored on the evaluation windows without
    quantizing it again (quantization never sees either set of windows)."""
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    mods = dict(m.named_modules())
    tensors = {n: mods[n].weight.detach().contiguous() for n in lins}
    meta = {"info": json.dumps(info)}
    if grids:
        g0 = next(iter(grids.values()))
        meta["grid"] = json.dumps({"group": g0.group, "bits": g0.bits, "sym": g0.sym})
        for n, g in grids.items():
            tensors.update({n + sfx: t.contiguous() for sfx, t in zip(_GRID, (g.codes, g.scale, g.zero))})
    save_file(tensors, str(path), metadata=meta)


def load_row(m, path, lins: list[str]) -> tuple[dict, dict]:
    """-> (the row's info, its grids by Linear name: empty for a file saved without them, as every
    file saved before session 10 was; its weights load all the same). A file that is not such a
    row, or a row of another model, stops the script with one line naming the file."""
    from safetensors import safe_open
    from llmlab.quant.ptq import GroupGrid
    mods = dict(m.named_modules())
    grids = {}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "info" not in meta:
            raise SystemExit(f"{path}: not a row saved by quant_methods.py --save-dir (no 'info' metadata)")
        if {k for k in f.keys() if not k.endswith(_GRID)} != set(lins):
            raise SystemExit(f"{path}: its tensors are not this model's projections")
        for n in lins:
            t = f.get_tensor(n)
            if t.shape != mods[n].weight.shape:
                raise SystemExit(f"{path}: {n} is {tuple(t.shape)}, this model's is {tuple(mods[n].weight.shape)}")
            mods[n].weight.data.copy_(t)
        info = json.loads(meta["info"])
        if "grid" in meta:
            kw = json.loads(meta["grid"])
            grids = {n: GroupGrid(*(f.get_tensor(n + sfx) for sfx in _GRID), **kw) for n in lins if n + ".codes" in f.keys()}
    print(f"loaded the quantized projections from {path}" + (f" with {len(grids)} grids" if grids else ""), flush=True)
    return info, grids


def texts(a, heldout: bool) -> list[str]:
    """Held-out / calibration documents: the Wikipedia extracts split as the data pipeline splits
    them, or with --data-dir the wiki_en documents of a `llmlab data build` output's val.jsonl /
    train.jsonl (for a model pretrained on that output: text it never saw / text it trained on)."""
    if a.data_dir:
        return calibrate.split_texts(a.data_dir, "val" if heldout else "train")
    return calibrate.wiki_split(heldout)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--group", type=int, default=128, help="int4 group size (a group that does not divide "
                    "a row leaves a shorter last group: SmolLM2's 576 = 4 x 128 + 64)")
    ap.add_argument("--bits", type=int, default=4, help="bit width of the low-bit RTN/GPTQ/AWQ rows (e.g. 3 where "
                    "int4 costs a model nothing)")
    ap.add_argument("--out", default="")
    ap.add_argument("--rows", default="", help="comma-separated row keys (rtn8,rtn4,gptq4,awq4,awq4m,gptq4d,"
                    "awq4mr,awqgptq4,gptq4plain,awq4m_noclip,awq4m_a40,awq4m_cf,awq4m_fp,awq4m_duo,awq4m_c4,awq4m_c8,awq4h,awq4_c8,awq4_c8u,awq4u,awq4_a0,awq4h_c2,nf4,w8a8,sq,int8); "
                    "default all (--quick: rtn4,gptq4,awq4,sq)")
    ap.add_argument("--calib-draw", type=int, default=0, help="which calibration windows: draw d takes the d-th "
                    "block of --calib-windows windows in the seeded document order (0, the default: the windows of "
                    "sessions 4-11); validation and evaluation windows stay the same for every draw")
    ap.add_argument("--calib-draws", default="", help="comma-separated draws (e.g. 0,1,2): every calibrated row "
                    "(GPTQ, AWQ) is quantized on each and reported as the mean perplexity over them (per draw in "
                    "the JSON's per_draw); rows without calibration are scored once; overrides --calib-draw")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--data-dir", default="", help="held-out/calibration text from this `llmlab data build` output "
                    "(val.jsonl / train.jsonl, wiki_en documents) instead of the default Wikipedia split")
    ap.add_argument("--score", choices=("eval", "val"), default="eval", help="val: score every row on validation "
                    "windows (non-held-out documents disjoint from the calibration windows' documents) instead of "
                    "the held-out evaluation windows: for choosing settings")
    ap.add_argument("--calib-on-val", action="store_true", help="DIAGNOSTIC, never a reported figure (needs --score "
                    "val): every calibrated row calibrates on the validation windows it is scored on, repeated to "
                    "the row's number of calibration windows: the best any calibration text could do")
    ap.add_argument("--save-dir", default="", help="save each weight-only row's quantized projections here")
    ap.add_argument("--load-dir", default="", help="rows saved here by --save-dir (same model, group, bits, "
                    "calibration) are loaded instead of quantized again")
    ap.add_argument("--gguf", action="store_true", help="instead: the GGUF export table (size, ppl, decode tok/s)")
    a = ap.parse_args()
    a.draws = [int(d) for d in a.calib_draws.split(",")] if a.calib_draws else [a.calib_draw]
    if min(a.draws) < 0 or len(set(a.draws)) != len(a.draws):
        raise SystemExit(f"--calib-draws: distinct draws >= 0, got {a.calib_draws}")
    if a.calib_on_val and (a.score != "val" or a.draws != [0]):
        raise SystemExit("--calib-on-val: only with --score val and one draw (0): the evaluation windows are never calibrated on")
    return a


def on_scored(ev: torch.Tensor, n: int) -> torch.Tensor:
    """--calib-on-val's calibration: the scored windows repeated to n windows (the batches and strided search
    rows keep n windows' geometry; mean|x| and x^T x / n are the scored windows' own)."""
    return ev.repeat(-(-n // ev.shape[0]), 1)[:n]


# the row each ratio reads: awq_vs_rtn reads AWQ's chosen arm, awq4 (the per-Linear objective, chosen
# over awq4m by mean validation perplexity over 3 calibration draws in session 12, docs/LOG.md)
RATIO_KEYS = {"gptq4": "gptq_vs_rtn", "awq4": "awq_vs_rtn"}


def ratios(ours: dict, fp: float, group: int, bits: int) -> dict:
    """RTN's int4 perplexity increase over each calibrated row's (its mean over draws): RATIO_KEYS'
    rows under their goal names, the others as '<key>_vs_rtn'; int8_ppl = fp32 / SmoothQuant."""
    ratio = {}
    for key, _, method, _ in rows(group, bits):
        if key in ours and "rtn4" in ours and method in ("gptq", "awq", "awq_gptq"):
            # a row at or below fp32 has no increase to divide by: null, not a huge number
            d = ours[key] - fp
            ratio[RATIO_KEYS.get(key, f"{key}_vs_rtn")] = (ours["rtn4"] - fp) / d if d > 0 else None
    if "sq" in ours:
        ratio["int8_ppl"] = fp / ours["sq"]
    return ratio


def score_row(a, base, row, cals: dict, ev, lins: list[str], stats, alone: bool) -> tuple[list[float], dict, float]:
    """One row quantized (or loaded from --load-dir) and scored: -> (its perplexity on each draw it
    calibrates on: every --calib-draws draw for GPTQ/AWQ, the first otherwise; its info; seconds)."""
    key, label, method, kw = row
    kw = dict(kw)
    x = kw.pop("calib_x", 1)
    draws = a.draws if method in ("gptq", "awq", "awq_gptq") else a.draws[:1]
    # GPTQ/AWQ calibrate block by block (sequentially) on the draw's windows; SmoothQuant uses the fp32 ranges
    ragged = {"ragged_groups": True} if method in ("rtn", "gptq", "awq", "awq_gptq") else {}
    ppls, secs = [], 0.0
    for d in draws:
        # one row, one draw and no peers: quantize the base model itself (one model in memory instead of two)
        m = base if alone and len(draws) == 1 else copy.deepcopy(base)
        t = time.perf_counter()
        saved = weights_file(a, key, x, d)
        if a.load_dir and saved.exists():
            info, _ = load_row(m, saved, lins)
        else:
            grids: dict = {}
            info = quantize_model(m, method, calib=cals[d][:a.n_cal * x], stats=stats if method == "smoothquant" else None,
                                  **kw, **ragged, grids=grids)
            if a.save_dir and method in ("rtn", "nf4", "gptq", "awq", "awq_gptq"):
                save_row(m, saved, lins, info, grids)
        secs += time.perf_counter() - t
        ppls.append(calibrate.perplexity(m, ev).perplexity)
        if len(draws) > 1:
            print(f"{label} draw {d}: ppl {ppls[-1]:.4f}", flush=True)
        del m
    return ppls, info, secs


def main() -> None:
    a = parse_args()
    torch.set_num_threads(1)
    if a.gguf:
        return gguf_rows(a)
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    base, tok = load_model_and_tokenizer(a.model)
    base.__dict__.pop("quantized", None)  # the packaged blocks: every row here runs fp32 matmuls
    # --quick: a smoke test of the key rows in ~1 min of one idle core; its ratios (256 tokens) are not the table's
    n_ev, a.n_cal = (2, 2) if a.quick else (a.eval_windows, a.calib_windows)
    n_cal = a.n_cal
    if a.quick:
        a.length = min(a.length, 128)
    keys = set(a.rows.split(",")) if a.rows else QUICK if a.quick else {r[0] for r in rows(a.group, a.bits)}
    # a row with calib_x calibrates on the first calib_x * n_cal windows of the same seeded document
    # order (its first n_cal windows are the other rows' `cal`); validation windows stay disjoint from all
    cx = max([kw.get("calib_x", 1) for k, _, _, kw in rows(a.group, a.bits) if k in keys] + [1])
    # draw d: the d-th block of n_cal * cx windows in that order (0: the windows of every earlier session)
    cals = {d: calibrate.calibration_draw(tok, texts(a, False), n_cal * cx, a.length, d, seed=1) for d in a.draws}
    if a.score == "val":  # the same windows for every draw (they come from the far end of the order)
        ev = calibrate.validation_windows(tok, texts(a, False), n_ev, a.length, n_cal * cx * (max(a.draws) + 1), a.length, seed=1)
    else:
        ev = calibrate.token_windows(tok, texts(a, True), n_ev, a.length)
    cals = {0: on_scored(ev, n_cal * cx)} if a.calib_on_val else cals
    t0 = time.perf_counter()
    fp = calibrate.perplexity(base, ev).perplexity
    lins = list(calibrate.quantizable_linears(base))
    stats = calibrate.collect(base, cals[a.draws[0]][:n_cal], lins, set()) if "sq" in keys else None  # SmoothQuant's
    print(f"fp32 ppl {fp:.4f} ({n_ev} x {a.length} {'VALIDATION' if a.score == 'val' else 'held-out'} tokens; calibration {n_cal} x {a.length}"
          f"{' = THE SCORED WINDOWS (--calib-on-val, a diagnostic)' if a.calib_on_val else ''}"
          f", draws {a.draws}; {time.perf_counter() - t0:.0f}s)", flush=True)
    ours, per_draw = {"fp32": fp}, {}
    order = a.rows.split(",") if a.rows else [r[0] for r in rows(a.group, a.bits)]  # --rows' order
    todo = sorted((r for r in rows(a.group, a.bits) if r[0] in keys), key=lambda r: order.index(r[0]))
    table = [("fp32 (decoded packaged weights)" if a.model == "smollm2" else "fp32", fp, 0.0, 4 * sum(p.numel() for p in base.parameters()), 0.0)]
    for row in todo:
        ppls, info, secs = score_row(a, base, row, cals, ev, lins, stats, len(todo) == 1 and a.no_peers)
        key, label, x = row[0], row[1], row[3].get("calib_x", 1)
        ppl = ours[key] = sum(ppls) / len(ppls)
        if len(ppls) > 1:
            per_draw[key], label = ppls, f"{label}, mean of {len(ppls)} draws"
        table.append((label, ppl, ppl - fp, info["stored_bytes"], secs))
        print(f"{label}: ppl {ppl:.4f} (+{ppl - fp:.4f}), {info['stored_bytes'] / 1e6:.1f} MB, {secs:.0f}s"
              + (f" (calibration {n_cal * x} x {a.length})" if x != 1 else ""), flush=True)
    peer = {} if a.no_peers else peers(base, ev, a.quick)
    print("\n| method | held-out ppl | delta vs fp32 | stored MB | quantize s |\n|---|---|---|---|---|")
    for label, ppl, d, nb, secs in table:
        print(f"| {label} | {ppl:.3f} | {d:+.3f} ({100 * d / fp:+.1f}%) | {nb / 1e6:.1f} | {secs:.0f} |")
    for label, ppl in peer.items():
        print(f"| {label} | {ppl if isinstance(ppl, str) else f'{ppl:.3f} | {ppl - fp:+.3f} ({100 * (ppl - fp) / fp:+.1f}%)'} | | |")
    res = {"benchmark": "quant_methods", "ours": ours, "peer": peer, "ratio": ratios(ours, fp, a.group, a.bits),
           "per_draw": per_draw,
           "conditions": {"scored_on": a.score, "model": a.model, "data_dir": a.data_dir, "eval_tokens": n_ev * a.length,
                          "calib_tokens": n_cal * a.length, "calib_draws": a.draws,
                          "calib_on_val": a.calib_on_val, "group": a.group, "bits": a.bits,
                          "threads": 1}}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
