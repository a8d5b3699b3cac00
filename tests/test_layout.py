"""The layout rule of docs/GUIDE (short files): no module over 400 lines and no function over 100
lines, unless a comment at its top says why ("# over 400 lines: ..." / "# over 100 lines: ...")."""
from __future__ import annotations

import ast
from pathlib import Path

import llmlab

PACKAGE = Path(llmlab.__file__).parent


def long_places(root: Path, module_max: int = 400, function_max: int = 100) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines()
        if len(lines) > module_max and not any(f"over {module_max} lines" in line for line in lines[:30]):
            out.append(f"{path.relative_to(root)}: {len(lines)} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                head = lines[node.lineno - 1:node.body[0].lineno + 1]
                if length > function_max and not any(f"over {function_max} lines" in line for line in head):
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_long_module_or_function_without_a_reason():
    assert long_places(PACKAGE) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(101))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_places(tmp_path) == ["m.py:1 f: 102 lines"]
    (tmp_path / "m.py").write_text(f"def f():\n    # over 100 lines: a table\n{body}\n")
    assert long_places(tmp_path) == []
    (tmp_path / "m.py").write_text("\n" * 401)
    assert long_places(tmp_path) == ["m.py: 401 lines"]


# The pipeline order of docs/architecture.md: a stage imports only from itself, earlier stages and the
# shared plumbing. A later stage reaches an earlier one's hook table by registering into it
# (infer.vision.VISION_MODELS, serve.retrieval.RAG_BACKENDS), never the other way round.
PLUMBING = {"__init__", "cli", "config", "errors", "device", "log", "checkpoint", "verb", "kernels"}
STAGES = ["data", "tokenizer", "embed", "model", "train", "calc", "distributed", "infer", "eval", "quant",
          "finetune", "align", "serve", "compress", "rag", "prompt", "agent", "multimodal", "speedrun", "ablate"]
# the one import into a later stage: the tokenizer reads GGUF files with the model stage's container parser
EXCEPTIONS = {("tokenizer", "llmlab.model.gguf_file")}


def backward_imports(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        stage = parts[0] if len(parts) > 1 else parts[0][:-3]
        if stage in PLUMBING:
            continue
        if stage not in STAGES:
            out.append(f"{stage}: a new stage; add it to STAGES (and the picture in docs/architecture.md)")
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                target = name.split(".")[1] if name.startswith("llmlab.") else None
                if target in STAGES and STAGES.index(target) > STAGES.index(stage) \
                        and (stage, name) not in EXCEPTIONS:
                    out.append(f"{path.relative_to(root)} imports {name} (a later stage)")
    return sorted(set(out))


def test_imports_flow_forward():
    assert backward_imports(PACKAGE) == []


def test_the_check_finds_a_backward_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.py").write_text("def f():\n    from llmlab.align.grpo import GRPOConfig\n")
    assert backward_imports(tmp_path) == ["data/x.py imports llmlab.align.grpo (a later stage)"]
