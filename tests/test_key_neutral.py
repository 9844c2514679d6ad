"""caopd.key_neutral: which settings stay out of a stage's key, derived by hand per rule."""

from __future__ import annotations

import pytest

from caopd.key_neutral import KEY_NEUTRAL, at, key_params, off, unread_unless


def test_each_rule_by_hand():
    assert at(0)(0, {}) and not at(0)(16, {})
    assert at(None)(None, {}) and not at(None)({"lengths": [8]}, {})
    assert off(0, {}) and off(None, {}) and not off(50, {})
    lam = unread_unless("divergence", "kl_mix")
    assert lam(0.5, {"divergence": "reverse_kl"}) and not lam(0.5, {"divergence": "kl_mix"})


@pytest.mark.parametrize(
    ("block", "settings", "kept"),
    [
        ("distill", {"lr": 1e-3, "estimator": "full_vocab", "vopd_top_k": 0, "length_curriculum": None,
                     "divergence": "reverse_kl", "kl_mix_lambda": 0.5}, {"lr", "divergence"}),
        ("distill", {"estimator": "vopd", "vopd_top_k": 64, "divergence": "kl_mix", "kl_mix_lambda": 0.5},
         {"estimator", "vopd_top_k", "divergence", "kl_mix_lambda"}),
        ("evaluation", {"engine": "hf", "tensor_parallel_size": 4, "greedy": True}, {"greedy"}),
        ("evaluation", {"engine": "vllm", "tensor_parallel_size": 4, "greedy": True},
         {"engine", "tensor_parallel_size", "greedy"}),
        ("model.tiny.warmup", {"steps": 10, "induction_lr_warmup": 0}, {"steps"}),
        ("model.tiny.warmup", {"steps": 10, "induction_lr_warmup": 50}, {"steps", "induction_lr_warmup"}),
    ],
)
def test_key_params_keeps_what_changes_the_computation(block, settings, kept):
    assert set(key_params(block, settings)) == kept


def test_leave_out_and_unknown_blocks():
    assert key_params("distill", {"lr": 1, "processes": 8}, leave_out=("processes",)) == {"lr": 1}
    with pytest.raises(KeyError):
        key_params("rollouts", {})
    assert set(KEY_NEUTRAL) == {"distill", "evaluation", "model.tiny.warmup"}
