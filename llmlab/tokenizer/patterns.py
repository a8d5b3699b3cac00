"""Pre-tokenization regexes (split text into chunks before BPE merges)."""

# GPT-2 (Radford et al. 2019)
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4 / cl100k_base: case-insensitive contractions, numbers in runs of at most 3 digits
GPT4 = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
        r"""|\s*[\r\n]|\s+(?!\S)|\s+""")

# GPT-2 after splitting every digit off on its own (HF `Digits(individual_digits=True)` then
# ByteLevel), written as one regex: a whitespace run before a digit ends its chunk, so it is kept
# whole rather than leaving its last space to the next chunk as plain GPT-2 would.
GPT2_DIGITS = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""

# GGUF `tokenizer.ggml.pre` names -> pattern
GGUF_PRE = {"default": GPT2, "gpt2": GPT2, "gpt-2": GPT2, "smollm": GPT2_DIGITS, "llama-bpe": GPT4,
            "llama3": GPT4}
