"""`checkpoint.atomic_dir`: an output directory replaces only an earlier output of the same kind; a user's
own folder or file at that path is refused (one-line UserError), never deleted, and nothing is left behind."""
import os
import stat

import pytest

from llmlab.checkpoint import atomic_dir, check_output_dir
from llmlab.errors import UserError


def _write(path, names):
    with atomic_dir(path) as tmp:
        for n in names:
            (tmp / n).write_text(n, encoding="utf-8")


def test_replaces_an_earlier_output_of_the_same_kind(tmp_path):
    out = tmp_path / "run"
    _write(out, ["config.json", "lora.safetensors"])
    _write(out, ["config.json"])  # a re-run without the optional file: the stale one goes
    assert sorted(os.listdir(out)) == ["config.json"]
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no temporary or old copy left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


@pytest.mark.parametrize("existing", [["thesis.tex"], ["notes.txt", "data/"], ["config.json", "checkpoints/"]])
def test_a_folder_of_other_files_is_refused_and_kept(tmp_path, existing):
    out = tmp_path / "mine"
    out.mkdir()
    for n in existing:
        (out / n.rstrip("/")).mkdir() if n.endswith("/") else (out / n).write_text("keep", encoding="utf-8")
    with pytest.raises(UserError, match="holds other files.*kept at"):
        _write(out, ["config.json", "model.safetensors"])
    assert sorted(os.listdir(out)) == sorted(n.rstrip("/") for n in existing)
    assert sorted(os.listdir(tmp_path)) == ["mine", "mine.new"]  # the finished output, beside; no temporary
    assert sorted(os.listdir(tmp_path / "mine.new")) == ["config.json", "model.safetensors"]
    with pytest.raises(UserError, match="holds other files"):
        check_output_dir(out)  # the verbs' early check says the same before any work


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    _write(tmp_path / "empty", ["config.json"])
    assert os.listdir(tmp_path / "empty") == ["config.json"]


def test_a_file_at_the_path_is_refused_before_any_work(tmp_path):
    f = tmp_path / "model"
    f.write_text("mine", encoding="utf-8")
    ran = []
    with pytest.raises(UserError, match="not a directory"):
        with atomic_dir(f):
            ran.append(1)
    assert not ran and f.read_text(encoding="utf-8") == "mine" and os.listdir(tmp_path) == ["model"]
    with pytest.raises(UserError, match="output_dir=.* not a directory"):
        check_output_dir(f)
    check_output_dir("")  # no output: nothing to check


def test_a_folder_that_changed_during_the_run_keeps_the_finished_output(tmp_path):
    """Refused only at the end (the user's files appeared while the run went on): the work is kept beside it."""
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"kept at .*run\.new"):
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("new", encoding="utf-8")
            out.mkdir()
            (out / "thesis.tex").write_text("mine", encoding="utf-8")
    assert os.listdir(out) == ["thesis.tex"]
    assert (tmp_path / "run.new" / "config.json").read_text(encoding="utf-8") == "new"
    assert sorted(os.listdir(tmp_path)) == ["run", "run.new"]  # no temporary copy left


def test_mm_train_refuses_a_foreign_output_dir_before_training(tmp_path, capsys):
    from llmlab.cli import main
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine", encoding="utf-8")
    assert main(["mm", "train", "configs/mm_clip_digits.yaml", f"output_dir={out}", "max_steps=1"]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert os.listdir(out) == ["thesis.tex"]


def test_mm_llava_refuses_a_foreign_output_dir_before_training(tmp_path, capsys):
    from llmlab.cli import main
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    assert main(["mm", "llava", "configs/mm_llava.yaml", f"output_dir={out}", "stage1_steps=1", "stage2_steps=1"]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert os.listdir(out) == ["data"]


@pytest.mark.parametrize("args", [["quantize", "model=smollm2", "format=gguf", "type=Q4_0", "output_dir={f}/x.gguf"],
                                  ["quantize", "model=smollm2", "format=hf", "method=rtn", "output_dir={f}/sub"],
                                  ["eval", "model=smollm2", "tasks=arithmetic", "limit=1", "output_dir={f}/sub"],
                                  ["eval", "model=smollm2", "tasks=arithmetic", "limit=1", "output_dir={f}"]])
def test_an_output_under_a_file_is_one_line_before_any_work(tmp_path, capsys, args):
    """A new user's session 14: an output path whose folder is a file was a FileExistsError traceback (exit 1),
    for eval only after the tasks had run."""
    from llmlab.cli import main
    f = tmp_path / "notes.txt"
    f.write_text("mine", encoding="utf-8")
    assert main([a.format(f=f) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmlab: error: ") and "not a directory" in err and err.count("\n") == 1, err
    assert f.read_text(encoding="utf-8") == "mine" and os.listdir(tmp_path) == ["notes.txt"]
    with pytest.raises(UserError, match=r"output_dir=.*notes\.txt is a file, not a directory"):
        check_output_dir(f / "run")


def test_atomic_file_publishes_only_on_a_clean_exit(tmp_path):
    from llmlab.checkpoint import atomic_file, atomic_write_text
    target = tmp_path / "sub" / "data.jsonl"
    atomic_write_text(target, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write("half of the new fil")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n"  # untouched, and no temp file left beside it
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.jsonl"]
    with atomic_file(target, "wb") as f:
        f.write("новый\n".encode())
    assert target.read_text(encoding="utf-8") == "новый\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # what a plain open() gives, not mkstemp's 0600
    with pytest.raises(ValueError):
        with atomic_file(target, "a"):
            pass


def test_a_killed_data_build_keeps_the_old_files(tmp_path, monkeypatch):
    """Ctrl-C in the middle of `llmlab data build` used to publish the partial train.jsonl."""
    from llmlab.data import pipeline
    out = tmp_path / "built"
    out.mkdir()
    (out / "train.jsonl").write_text('{"text": "old"}\n')

    def interrupted(*a, **k):
        yield "wiki_en", "A first document that is long enough to keep, with several words in it. " * 5
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "mix_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.build(pipeline.DataBuildConfig(out_dir=str(out), progress=False))
    assert (out / "train.jsonl").read_text() == '{"text": "old"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]
