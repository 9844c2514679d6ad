"""Config validation: schema defaults, unknown keys and bad values rejected at load, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caopd.config import ConfigError, deep_merge, load_file, resolve

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "config" / "config.yaml"


def _raw() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def test_default_config_resolves_three_variants():
    resolved = load_file(DEFAULT)
    assert set(resolved["variants"]) >= {"base", "sdft", "caopd"}
    assert resolved["variants"]["base"]["distill"]["rounds"] == 0
    assert resolved["variants"]["sdft"]["rewrite"]["calibration"] is False
    assert resolved["variants"]["caopd"]["rewrite"]["calibration"] is True


def test_schema_fills_defaults():
    resolved = resolve({"variants": {"v": {}}})
    cfg = resolved["variants"]["v"]
    assert cfg["rollouts"]["k"] == 8
    assert cfg["distill"]["ema_weight"] == 0.01
    assert cfg["distill"]["skip_first_tokens"] == 3
    assert cfg["rewrite"]["max_teacher_prompt_length"] >= cfg["rewrite"]["max_prompt_length"]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"distill": {"lrr": 0.1}}, "'distill.lrr'"),
        ({"rolouts": {}}, "'rolouts'"),
        ({"model": {"tiny": {"hidden": 3}}}, "'model.tiny.hidden'"),
    ],
)
def test_unknown_key_is_named(patch, needle):
    with pytest.raises(ConfigError, match="unknown key") as err:
        resolve(deep_merge(_raw(), patch))
    assert needle in str(err.value)


def test_unknown_key_inside_a_variant_is_named():
    raw = _raw()
    raw["variants"]["caopd"] = {"rewrite": {"calibraton": True}}
    with pytest.raises(ConfigError) as err:
        resolve(raw)
    assert "variant 'caopd'" in str(err.value) and "'rewrite.calibraton'" in str(err.value)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"rollouts": {"k": 0}}, "rollouts.k"),
        ({"rollouts": {"top_p": 1.5}}, "rollouts.top_p"),
        ({"distill": {"divergence": "kl"}}, "distill.divergence"),
        ({"distill": {"jsd_beta": 1.0}}, "distill.jsd_beta"),
        ({"rewrite": {"teacher_mode": "oracle"}}, "rewrite.teacher_mode"),
    ],
)
def test_out_of_range_value_is_named(patch, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        resolve(deep_merge(_raw(), patch))


def test_bad_combinations_say_what_to_change():
    with pytest.raises(ConfigError, match="num_heads"):
        resolve(deep_merge(_raw(), {"model": {"tiny": {"hidden_size": 130}}}))
    with pytest.raises(ConfigError, match="greedy"):
        resolve(deep_merge(_raw(), {"evaluation": {"n_samples": 4}}))
    with pytest.raises(ConfigError, match="max_completion_length"):
        resolve(deep_merge(_raw(), {"rollouts": {"max_new_tokens": 100}}))
    with pytest.raises(ConfigError, match="task.paths.eval"):
        resolve(deep_merge(_raw(), {"task": {"name": "science"}}))
    with pytest.raises(ConfigError, match="evaluation.split"):
        resolve(deep_merge(_raw(), {"evaluation": {"split": "val"}, "task": {"sizes": {"val": 0}}}))
    with pytest.raises(ConfigError, match="evaluation.split"):
        resolve(deep_merge(_raw(), {"evaluation": {"split": "train"}}))


def test_variant_named_like_a_rule_is_rejected():
    raw = _raw()
    raw["variants"]["distill"] = {}
    with pytest.raises(ConfigError, match="rule name"):
        resolve(raw)


def test_variants_override_only_what_they_name():
    resolved = load_file(DEFAULT)
    sdft, caopd = resolved["variants"]["sdft"], resolved["variants"]["caopd"]
    assert {k: v for k, v in sdft.items() if k != "rewrite"} == {k: v for k, v in caopd.items() if k != "rewrite"}
