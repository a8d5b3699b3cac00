"""Importing the reference libraries (timm, open_clip) for parity tests and the benchmark.

Both import torchvision at package import time, for data transforms and FrozenBatchNorm2d only.
The torchvision wheels on PyPI are CUDA builds whose C extension cannot load beside a CPU torch
(`operator torchvision::nms does not exist`), and no CPU torchvision ships there. When torchvision
is missing or broken, `import_references()` puts a placeholder `torchvision` in sys.modules whose
every attribute is an inert class: enough for those imports; no code we compare against touches it
(ViT forward, ClipLoss, SigLipLoss, open_clip's CLIP model). Test/benchmark use only.
"""
from __future__ import annotations

import importlib
import sys
import types


class _InertMeta(type):
    def __getattr__(cls, attr: str):  # enum-like members (InterpolationMode.NEAREST): a unique name
        if attr.startswith("__"):
            raise AttributeError(attr)
        return f"{cls.__name__}.{attr}"


class _Inert(metaclass=_InertMeta):
    def __init__(self, *a, **k):
        raise RuntimeError("torchvision placeholder: install a torchvision build that matches torch")


def _placeholder(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so `from torchvision.x.y import z` resolves through the finder below

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (_Inert,), {})
    mod.__getattr__ = __getattr__
    mod.__version__ = "0.0+placeholder"
    return mod


class _Finder:
    """Meta-path finder answering every `torchvision.*` import with a placeholder module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" and not fullname.startswith("torchvision."):
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return _placeholder(spec.name)

    def exec_module(self, module):
        pass


def _torchvision_works() -> bool:
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # ImportError, or RuntimeError from a CUDA build on CPU torch
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        return False


def import_references():
    """-> (timm, open_clip); ImportError (pytest: skip) when they are not installed."""
    if not _torchvision_works():
        sys.meta_path.insert(0, _Finder())
    timm = importlib.import_module("timm")
    open_clip = importlib.import_module("open_clip")
    return timm, open_clip


def open_clip_losses():
    """open_clip's loss.py alone (ClipLoss, SigLipLoss), loaded from its file without running the
    package's heavy __init__ (which imports its models, timm hooks and torchvision)."""
    import importlib.util
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    path = f"{list(spec.submodule_search_locations)[0]}/loss.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def open_clip_to_ours(sd: dict, depth: int) -> dict:
    """An open_clip `CLIP` state dict -> our CLIP's (built with `vision.pre_norm=True`): the parity
    test and `benchmarks/multimodal.py --same_init` (both sides start from the same weights)."""
    out = {"visual.cls_token": sd["visual.class_embedding"].view(1, 1, -1),
           "visual.pos_embed": sd["visual.positional_embedding"].unsqueeze(0),
           "visual.patch_embed.proj.weight": sd["visual.conv1.weight"],
           "visual_projection.weight": sd["visual.proj"].t(), "text_projection.weight": sd["text_projection"].t(),
           "text.token_embedding.weight": sd["token_embedding.weight"],
           "text.positional_embedding": sd["positional_embedding"], "logit_scale": sd["logit_scale"]}
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_": "attn.qkv.", "attn.out_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for ours, theirs in (("visual.", "visual."), ("text.", "")):
        for a, b in (("norm_pre", "ln_pre"), ("norm", "ln_post"), ("ln_final", "ln_final")):
            for p in ("weight", "bias"):
                if f"{theirs}{b}.{p}" in sd and (ours == "visual." or b == "ln_final"):
                    out[f"{ours}{a}.{p}"] = sd[f"{theirs}{b}.{p}"]
        for i in range(depth):
            for k, v in sd.items():
                pre = f"{theirs}transformer.resblocks.{i}."
                if k.startswith(pre) and (ours == "visual." or not k.startswith("visual.")):
                    rest = k[len(pre):]
                    for a, b in names.items():
                        rest = rest.replace(a, b)
                    out[f"{ours}blocks.{i}.{rest}"] = v
    return out
