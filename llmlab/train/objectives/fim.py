"""objective=fim: fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to
Fill in the Middle"; the token names of StarCoder/SantaCoder). With probability fim_rate a window is
cut at two uniform points into prefix / middle / suffix and rearranged, then trained as plain
causal LM on every token:

    PSM  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM  <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle      (the paper's SPM variant)

SPM is chosen with probability fim_spm_rate among FIM rows. At inference the model gets a
prompt ending in <fim_middle> and writes the middle. Windows kept as they are stay causal LM.
"""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.train.objectives.base import Example

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"


def fim_rearrange(tokens, cut1: int, cut2: int, ids: dict[str, int], spm: bool) -> list[int]:
    """prefix = tokens[:cut1], middle = tokens[cut1:cut2], suffix = tokens[cut2:] -> the FIM row."""
    pre, mid, suf = list(tokens[:cut1]), list(tokens[cut1:cut2]), list(tokens[cut2:])
    p, m, s = ids[FIM_PREFIX], ids[FIM_MIDDLE], ids[FIM_SUFFIX]
    if spm:
        return [p, s] + suf + [m] + pre + mid
    return [p] + pre + [s] + suf + [m] + mid


class FillInTheMiddle:
    name = "fim"
    special_tokens = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]

    def __init__(self, fim_rate: float = 0.5, fim_spm_rate: float = 0.5):
        for name, v in (("fim_rate", fim_rate), ("fim_spm_rate", fim_spm_rate)):
            if not 0.0 <= v <= 1.0:
                raise UserError(f"{name} must be in [0, 1], got {v}")
        self.fim_rate, self.fim_spm_rate = fim_rate, fim_spm_rate

    def example(self, tokens, rng, ids, eos_id=None) -> Example:
        tokens = list(tokens)
        if rng.random() >= self.fim_rate:
            return Example([], tokens)
        body = tokens[:len(tokens) - 3]  # room for the three sentinel tokens
        cut1, cut2 = sorted(int(c) for c in rng.integers(0, len(body) + 1, 2))
        return Example([], fim_rearrange(body, cut1, cut2, ids, spm=rng.random() < self.fim_spm_rate))
