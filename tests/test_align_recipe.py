"""The alignment results recipe as YAML (configs/align_results.yaml) and its verb's config handling."""
from __future__ import annotations

import pytest

from llmlab.align.recipe import RECIPE, SECTIONS, apply_overrides, load_hp
from llmlab.errors import UserError


def test_recipe_yaml_has_every_section_and_speedrun_overrides():
    hp = load_hp(RECIPE)
    assert set(SECTIONS) <= set(hp) and "sft" not in hp
    assert hp["common"]["n_train_layers"] == 4 and hp["grpo"]["learning_rate"] == pytest.approx(1e-4)
    sp = load_hp(RECIPE, "speedrun")
    assert sp["common"]["n_train_layers"] == 0 and sp["grpo"]["learning_rate"] == pytest.approx(1e-3)
    assert sp["pref_data"]["samples"] == 32 and sp["sft"]["epochs"] == 12
    assert sp["common"]["n_eval"] == hp["common"]["n_eval"]  # untouched keys stay


def test_overrides_are_typed_like_the_recipe_and_unknown_keys_fail():
    hp = apply_overrides(load_hp(RECIPE), ["grpo.learning_rate=3e-4", "pref_data.gold_fallback=true",
                                            "common.n_eval=8"])
    assert hp["grpo"]["learning_rate"] == pytest.approx(3e-4) and hp["pref_data"]["gold_fallback"] is True
    assert hp["common"]["n_eval"] == 8 and isinstance(hp["common"]["n_eval"], int)
    with pytest.raises(UserError, match="unknown key"):
        apply_overrides(hp, ["grpo.lr=1"])


def test_verb_rejects_bad_split_and_methods():
    from llmlab.cli import main
    assert main(["align", "results", str(RECIPE), "split=train"]) == 2
    assert main(["align", "results", str(RECIPE), "only=[sft]"]) == 2
