"""Chat template: one renderer, ids + assistant-only loss mask, stored with the tokenizer."""
from __future__ import annotations

import pytest

from llmlab.errors import UserError
from llmlab.tokenizer.bpe import load_tokenizer
from llmlab.tokenizer.chat import CHATML, assistant_spans, render_chat
from llmlab.tokenizer.train_bpe import train_bpe

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "Call the weather tool for Paris."},
    {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 °C in Paris — 晴天 ☀️."},
]


def mask_runs(ids, mask):
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize("with_eot", [True, False])
def test_mask_spans_equal_assistant_texts(smollm2_tokenizer, with_eot):
    tok = smollm2_tokenizer
    ids, mask = tok.encode_chat(CONV, train_on_end_of_turn=with_eot)
    assert len(ids) == len(mask)
    replies = [m["content"] + ("<|im_end|>" if with_eot else "") for m in CONV if m["role"] == "assistant"]
    assert [tok.decode(r) for r in mask_runs(ids, mask)] == replies
    # span boundaries fall on token boundaries of the plain encoding too, so ids are unchanged
    assert ids == tok.encode(tok.apply_chat_template(CONV, add_generation_prompt=False))


def test_default_system_prompt_not_masked(smollm2_tokenizer):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    ids, mask = smollm2_tokenizer.encode_chat(conv)
    text = smollm2_tokenizer.decode(ids)
    assert "You are a helpful AI assistant named SmolLM" in text
    assert [smollm2_tokenizer.decode(r) for r in mask_runs(ids, mask)] == ["Hello!<|im_end|>"]


def test_reply_repeating_the_prompt_is_located_after_it():
    conv = [{"role": "user", "content": "echo"}, {"role": "assistant", "content": "echo"}]
    text, spans = assistant_spans(CHATML, conv)
    assert len(spans) == 1 and text[spans[0][0]:spans[0][1]] == "echo"
    assert spans[0][0] > text.index("echo")


def test_chat_template_saved_in_tokenizer_config(tmp_path):
    tok = train_bpe(["hello world " * 20], 300, ["<|im_start|>", "<|im_end|>"], chat_template=CHATML,
                    eos_token="<|im_end|>", bos_token="<|im_start|>")
    out = tok.save(tmp_path / "t")
    back = load_tokenizer(out)
    assert back.chat_template == CHATML and back.eos_token == "<|im_end|>"
    assert back.apply_chat_template(CONV[:2]) == render_chat(CHATML, CONV[:2], True)
    ids, mask = back.encode_chat(CONV)
    assert [back.decode(r) for r in mask_runs(ids, mask)] == \
        [m["content"] + "<|im_end|>" for m in CONV if m["role"] == "assistant"]


def test_bad_messages():
    with pytest.raises(UserError, match="unknown role"):
        render_chat(CHATML, [{"role": "wizard", "content": "x"}])
    with pytest.raises(UserError, match="message 0"):
        render_chat(CHATML, [{"content": "x"}])
    with pytest.raises(UserError, match="chat template"):
        render_chat("{{ raise_exception('no') }}", CONV)
