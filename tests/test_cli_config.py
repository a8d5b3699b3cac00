"""The CLI and typed configs: overrides, YAML, and one-line errors with exit code 2."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from llmlab.cli import all_verbs, main
from llmlab.config import load_config
from llmlab.errors import UserError


@dataclass
class Inner:
    depth: int = 2


@dataclass
class Cfg:
    learning_rate: float = 1e-3
    max_length: int = 128
    bf16: bool = False
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    warmup: Optional[int] = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 3.0e-4\nmax_length: 64\ninner:\n  depth: 4\n")
    cfg = load_config(Cfg, [str(y), "max_length=256", "bf16=true", "tags=a,b", "inner.depth=6", "warmup=none"])
    assert cfg == Cfg(learning_rate=3e-4, max_length=256, bf16=True, tags=["a", "b"], inner=Inner(6))


@pytest.mark.parametrize("args, msg", [
    (["nosuch=1"], "unknown config key 'nosuch'"),
    (["max_length=1.5"], "config key 'max_length': expected an integer"),
    (["bf16=maybe"], "config key 'bf16': expected true/false"),
    (["mode=c"], "config key 'mode': 'c' is not one of"),
    (["inner.width=3"], "unknown config key 'inner.width'"),
    (["missing.yaml"], "config file not found: missing.yaml"),
    (["noequals", "x"], "config file not found: noequals"),
    (["a=1", "oops"], "expected key=value, got 'oops'"),
])
def test_config_errors_name_the_key(args, msg):
    with pytest.raises(UserError, match=msg):
        load_config(Cfg, args)


def test_a_directory_where_the_yaml_goes_says_model_equals(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path} is a directory, not a config YAML; .* write model={tmp_path}"):
        load_config(Cfg, [str(tmp_path)])


def test_bad_yaml(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(Cfg, [str(y)])


def test_every_verb_has_help_and_example(capsys):
    verbs = all_verbs()
    assert {"generate", "chat"} <= set(verbs)
    for name, verb in verbs.items():
        assert verb.example.startswith("llmlab "), name
        assert verb.summary and "\n" not in verb.summary and "Example" not in verb.summary, name
        assert main(name.split() + ["--help"]) == 0
        out = capsys.readouterr().out
        assert f"usage: llmlab {name}" in out and "example:" in out


def test_verb_help_comes_from_the_docstring():
    from llmlab.verb import verb

    table = {}

    @verb(table, "demo run", Cfg)
    def run_demo(cfg):
        """do a thing in a long summary
        that goes on

        Example: llmlab demo run a=1
          (or: llmlab demo run b=2)

        Details for readers of the code, not shown.
        """

    v = table["demo run"]
    assert (v.config, v.run) == (Cfg, run_demo)
    assert v.summary == "do a thing in a long summary that goes on"
    assert v.example == "llmlab demo run a=1\n  (or: llmlab demo run b=2)"


def test_cli_errors_are_one_line_exit_2():
    """Run the real entry point: bad input gives one stderr line, exit 2, no traceback."""
    for args in (["chat", "nosuch=1"], ["chat", "missing.yaml"], ["chat", "max_new_tokens=abc"],
                 ["generate", "model=/no/such/model", "prompt=hi"], ["frobnicate"]):
        r = subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("llmlab: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_prompt_longer_than_context_is_a_clear_error(smollm2, smollm2_tokenizer):
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams

    ids = [100] * (smollm2.config.max_position_embeddings + 1)
    with pytest.raises(UserError, match="context window is 8192"):
        next(generate_ids(smollm2, ids, SamplingParams(max_new_tokens=4)))


def test_chat_answers(capsys, smollm2):
    """`make run`'s job: SmolLM2 answers a canned prompt through the chat verb."""
    rc = main(["chat", "prompt=What is the capital of France?", "max_new_tokens=16"])
    assert rc == 0
    assert "Paris" in capsys.readouterr().out


def test_explicit_value_equal_to_default_is_not_derived():
    """`learning_rate=1e-3` on the CLI is the user's choice even though 1e-3 is also the default."""
    from llmlab.config import is_explicit, load_config
    from llmlab.train.commands import TrainCommandConfig, _preset_shape
    from llmlab.train.sizing import PRESETS
    default_lr = TrainCommandConfig().learning_rate
    assert PRESETS["cpu"]["learning_rate"] != default_lr
    cfg = load_config(TrainCommandConfig, ["preset=cpu", f"learning_rate={default_lr}", "max_length=128"])
    assert is_explicit(cfg, "learning_rate") and not is_explicit(cfg, "max_steps")
    _preset_shape(cfg)
    assert cfg.learning_rate == default_lr  # explicit, though equal to the default
    assert cfg.max_length == 128  # explicit
    assert cfg.max_steps == PRESETS["cpu"]["max_steps"]  # the preset's (left at the default)
    cfg = load_config(TrainCommandConfig, ["preset=cpu"])
    _preset_shape(cfg)
    assert cfg.learning_rate == PRESETS["cpu"]["learning_rate"]


def test_generate_hints_chat_when_a_chat_model_ends_raw_text_at_once(monkeypatch, capsys):
    """A chat-tuned model often emits EOS at once on a raw prompt; the user sees a hint, not just the prompt."""
    import llmlab.infer.generate as gen
    monkeypatch.setattr(gen, "stream_text", lambda *a, **k: iter(()))
    assert main(["generate", "model=smollm2", "prompt=What is 7 + 5?", "max_new_tokens=2"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("What is 7 + 5?") and "try chat=true" in out.err
    assert main(["generate", "model=smollm2", "prompt=What is 7 + 5?", "max_new_tokens=2", "chat=true"]) == 0
    assert "try chat=true" not in capsys.readouterr().err


def test_a_shipped_config_is_found_from_another_directory(tmp_path, monkeypatch):
    """`llmlab mm train configs/mm_clip_digits.yaml` run outside the checkout reads the checkout's file;
    a path that exists where the user is wins, and an unknown configs/ name is still an error."""
    from pathlib import Path

    from llmlab.config import load_yaml
    shipped = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "mm_clip_digits.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_yaml("configs/mm_clip_digits.yaml") == shipped
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mm_clip_digits.yaml").write_text("max_steps: 7\n", encoding="utf-8")
    assert load_yaml("configs/mm_clip_digits.yaml") == {"max_steps": 7}
    with pytest.raises(UserError, match="config file not found: configs/nosuch.yaml"):
        load_yaml("configs/nosuch.yaml")


def test_a_file_in_the_way_of_an_output_is_one_line_exit_2(tmp_path, capsys):
    """A new user's session 14: `tokenizer train output_dir=<a file>/x` ended in a FileExistsError traceback."""
    from llmlab.cli import main
    text, f = tmp_path / "a.txt", tmp_path / "notes.txt"
    text.write_text("hello world, hello there\n" * 20, encoding="utf-8")
    f.write_text("mine", encoding="utf-8")
    assert main(["tokenizer", "train", f"files={text}", "vocab_size=300", f"output_dir={f}/tok"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("llmlab: error: cannot use ") and "notes.txt" in err[-1], err
    assert f.read_text(encoding="utf-8") == "mine"


def test_a_permission_error_on_a_path_is_one_line_exit_2(monkeypatch, capsys):
    """A path the user may not write (root ignores chmod, so the verb raises it here): one line naming the path,
    exit 2; an error that names no path is not the user's to fix and keeps its traceback."""
    import llmlab.cli as cli

    def denied(cfg):
        raise PermissionError(13, "Permission denied", "/srv/readonly/out")

    verb = cli.all_verbs()["tokenizer train"]
    monkeypatch.setattr(verb, "run", denied)
    monkeypatch.setattr(cli, "all_verbs", lambda: {"tokenizer train": verb})
    assert cli.main(["tokenizer", "train"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["llmlab: error: cannot use /srv/readonly/out: permission denied (Permission denied)"], err

    def anonymous(cfg):
        raise PermissionError("no path")

    monkeypatch.setattr(verb, "run", anonymous)
    with pytest.raises(PermissionError):
        cli.main(["tokenizer", "train"])


def test_quantize_output_is_output_dir_and_output_a_deprecated_alias(tmp_path, capsys):
    """`output_dir=` is quantize's key, as prune's and distill's; `output=` (its old name) still works
    for one release, with one warning line, on the command line and in a YAML; both at once is an error;
    `--help` shows output_dir (and the old name as deprecated)."""
    from llmlab.quant.commands import QuantizeConfig
    assert load_config(QuantizeConfig, ["output_dir=a.gguf"]).output_dir == "a.gguf"
    assert capsys.readouterr().err == ""
    assert load_config(QuantizeConfig, ["output=a.gguf", "type=Q4_0"]).output_dir == "a.gguf"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: config key 'output' is deprecated" in err and "'output_dir'" in err
    y = tmp_path / "q.yaml"
    y.write_text("output: b.gguf\n")
    assert load_config(QuantizeConfig, [str(y)]).output_dir == "b.gguf"
    assert load_config(QuantizeConfig, [str(y), "output_dir=c.gguf"]).output_dir == "c.gguf"  # the line wins
    assert capsys.readouterr().err.count("deprecated") == 2
    with pytest.raises(UserError, match="give only output_dir"):
        load_config(QuantizeConfig, ["output=a.gguf", "output_dir=b.gguf"])
    assert main(["quantize", "output=x"]) == 2  # through the CLI: the warning, then the check names the new key
    err = capsys.readouterr().err
    assert "deprecated" in err and "output_dir must end in .gguf" in err, err
    assert main(["quantize", "--help"]) == 0
    out = capsys.readouterr().out
    assert "\n  output_dir: str" in out and "\n  output: str" not in out and "output: deprecated old name of output_dir" in out
    with pytest.raises(UserError, match="unknown config key 'output'"):  # prune never had it
        load_config(all_verbs()["prune"].config, ["output=x"])
