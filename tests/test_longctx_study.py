"""benchmarks/longctx_study.sh, the one driver of the long-context studies: DRY_RUN=1 prints each run, so the
runs each study makes (and the links that let one split evaluate another's fine-tuned models) are checked
without training anything."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ("context=128 hidden_size=64 num_hidden_layers=2 num_attention_heads=2 passkey_fraction=0.5 "
         "copy_fraction=0.5 copy_period=random passkey_loss=answer ft_steps=300")


def study(tmp_path, *args, script="longctx_study.sh", **env):
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                       env={**os.environ, "DRY_RUN": "1", "PYTHON": "py", **env}, cwd=tmp_path)
    runs = [" ".join(line.split()) for line in p.stdout.splitlines() if line.startswith("py ")]
    return p, runs


def test_ftseeds_runs_each_arm_seed_and_split_on_the_same_keys(tmp_path):
    base = tmp_path / "pk"
    (base / "base").mkdir(parents=True)
    (base / "base" / "selected.json").write_text("{}")  # a trained base: not retrained
    p, runs = study(tmp_path, "ftseeds", str(tmp_path / "o"), "1 2", BASE=str(base), ARMS="narrow late",
                    SPLITS="val val2")
    assert p.returncode == 0, p.stderr
    common = f"py -m llmlab.cli longctx {MODEL} endpoint_share=0.4 per_cell=20 methods=[yarn] multiples=[1,4]"
    want = []
    for split, k in (("val", 2000), ("val2", 3000)):
        for s in (1, 2):
            for arm, opt in (("narrow", "yarn_beta_slow=12"),
                             ("late", "yarn_beta_slow=12 endpoint_share=0.6 endpoint_depth1=0.6667")):
                want.append(f"{common} {opt} seed={s} key_seed={k - s} output_dir={tmp_path}/o/{arm}-s{s}/{split}")
    assert runs == want
    d = tmp_path / "o" / "late-s2"
    assert os.readlink(d / "val2" / "ft-yarn") == "../val/ft-yarn" and not (d / "val" / "ft-yarn").exists()
    assert os.readlink(d / "val" / "base") == str(base / "base")
    bad, _ = study(tmp_path, "ftseeds", str(tmp_path / "o"), BASE=str(base), ARMS="nope")
    assert bad.returncode == 2 and "ARMS: unknown nope" in bad.stderr


def test_endpoints_trains_its_base_once_and_the_old_command_still_runs(tmp_path):
    p, runs = study(tmp_path, str(tmp_path / "e"), script="longctx_endpoints.sh", SHARE="0")
    assert p.returncode == 0, p.stderr
    assert runs[0].startswith(f"py benchmarks/passkey_recipe.py --out {tmp_path}/e/pk ") and runs[0].endswith(
        "--steps 16000 --endpoint-share 0 --stop-full 2")
    assert len(runs) == 5 and all(f"{MODEL} endpoint_share=0 output_dir={tmp_path}/e/lc" in r for r in runs[1:])
    assert os.readlink(tmp_path / "e" / "lc_100" / "ft-linear") == "../lc/ft-linear"


def test_s9_is_the_default_study(tmp_path):
    p, runs = study(tmp_path, str(tmp_path / "s9"))
    assert p.returncode == 0, p.stderr
    assert "--steps 24000 --decay-from 16000 --min-lr 0.1" in runs[0] and len(runs) == 7
    assert runs[-1].endswith(f"output_dir={tmp_path}/s9/lc_narrow_val methods=[yarn] yarn_beta_slow=12 key_seed=2000")
