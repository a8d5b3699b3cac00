"""`llmlab tokenizer train|encode|decode|eval` end to end on small inputs."""
from __future__ import annotations

import json

from llmlab.cli import main
from llmlab.tokenizer.bpe import load_tokenizer


def test_train_encode_decode(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("hello world, hello tokenizer 123\n你好世界 你好\n" * 50, encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", f"files={src}", "vocab_size=300", f"output_dir={out}", "progress=false"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 256 < info["vocab_size"] <= 300 and (out / "tokenizer_config.json").is_file()  # stops when pairs run out
    tok = load_tokenizer(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert main(["tokenizer", "encode", f"tokenizer={out}", "text=hello 你好<|im_end|>"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == tok.encode("hello 你好<|im_end|>") and ids[-1] == tok.eos_id
    assert main(["tokenizer", "decode", f"tokenizer={out}", "ids=" + ",".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "hello 你好<|im_end|>\n"


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["tokenizer", "train", f"files={tmp_path / 'nope.txt'}", "vocab_size=300"]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert main(["tokenizer", "train", "vocab_size=100", "max_bytes=1000", "progress=false"]) == 2
    assert "vocab_size=100" in capsys.readouterr().err
    assert main(["tokenizer", "train", "eos_token=<eos>", "max_bytes=1000"]) == 2
    assert "eos_token" in capsys.readouterr().err
    assert main(["tokenizer", "encode", f"tokenizer={tmp_path / 'missing'}", "text=x"]) == 2
    assert main(["tokenizer", "decode", "tokenizer=smollm2", "ids=999999"]) == 2


def test_eval_reports_both_languages(capsys):
    assert main(["tokenizer", "eval", "vocab_size=400", "max_bytes=100000", "compare_smollm2=false"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    for name in ("ours", "hf_bpe"):
        assert set(res[name]) == {"en", "zh"}
        assert res[name]["en"]["bytes_per_token"] > 1.5
    assert abs(res["ours"]["zh"]["bytes_per_token"] / res["hf_bpe"]["zh"]["bytes_per_token"] - 1) < 0.02


def test_own_files_bom_crlf_and_latin1(tmp_path, capsys):
    """A user's files: a UTF-8 BOM is not text (train never counts it, encode never emits it), CRLF
    ends are line ends, and a Latin-1 file is one line naming the file and its first bad line."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"\xef\xbb\xbfhello world\r\n" + b"hello there world\r\n" * 30)
    b.write_bytes(b"caf\xc3\xa9 ok\n" * 30)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", f"files={a},{b}", "vocab_size=300", f"output_dir={out}", "progress=false"]) == 0
    capsys.readouterr()
    assert not [t for t in json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] if "ï»¿" in t]
    assert main(["tokenizer", "encode", f"tokenizer={out}", f"input_file={a}"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    tok = load_tokenizer(out)
    assert len(rows) == 31 and tok.decode(rows[0]) == "hello world"
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"plain line\ncaf\xe9 au lait\n")
    for args in (["train", f"files={a},{latin}", f"output_dir={tmp_path / 't2'}", "progress=false"],
                 ["encode", f"tokenizer={out}", f"input_file={latin}"]):
        assert main(["tokenizer", *args]) == 2
        err = capsys.readouterr().err
        assert f"{latin}:2: not UTF-8 text (byte 0xe9 at column 4)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t2").exists()
