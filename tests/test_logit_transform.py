"""The distill loss applies each model family's final logit transform, or refuses the family.

For tiny random models of several ``transformers`` families the loss built by
:class:`~caopd.training.objective.StudentObjective` from hidden states and LM heads must equal the
divergence of the models' OWN logits (``model(ids).logits``), value and gradients with respect to
every student parameter. Tolerance: float32 on both sides, ``rtol = 1e-4``, ``atol = 1e-6``
(the two paths sum in different orders).
"""

from __future__ import annotations

import copy

import pytest
import torch

from caopd.training.objective import StudentObjective
from caopd.training.divergence import DivergenceSpec, token_divergence
from caopd.training.logit_transform import (
    IDENTITY,
    LogitTransform,
    UnsupportedModelFamily,
    logit_transform_for,
)
from caopd.training.prefix import PlainInputs, gather_positions

TINY = dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)

#: family -> (extra config fields, the transform the loss must read from them)
FAMILIES = {
    "qwen2": ({}, IDENTITY),
    "qwen3": ({}, IDENTITY),
    "llama": ({}, IDENTITY),
    "olmo": ({}, IDENTITY),
    "gemma2": ({"final_logit_softcapping": 2.0}, LogitTransform(softcap=2.0)),
    "cohere": ({"logit_scale": 0.25}, LogitTransform(scale=0.25)),
    "granite": ({"logits_scaling": 4.0}, LogitTransform(scale=0.25)),
}


def tiny_model(family: str, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra, _ = FAMILIES[family]
    config = AutoConfig.for_model(family, **TINY, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # larger weights than the init: logits wide enough to be capped
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(4.0)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transform_is_read_from_the_config(family: str) -> None:
    model = tiny_model(family, seed=0)
    assert logit_transform_for(model.config) == FAMILIES[family][1]


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_equals_divergence_of_the_models_own_logits(family: str, kind: str) -> None:
    student = tiny_model(family, seed=0)
    teacher = copy.deepcopy(student)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    ids = torch.randint(3, TINY["vocab_size"], (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.numel())
    weights = torch.rand(ids.numel(), generator=gen)
    weights[[0, 5, 9]] = 0.0

    with torch.no_grad():
        t_out = teacher.base_model(input_ids=ids, attention_mask=mask)
        t_hidden = gather_positions(t_out.last_hidden_state, positions)
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits.reshape(-1, TINY["vocab_size"])
    s_logits = student(input_ids=ids, attention_mask=mask).logits.reshape(-1, TINY["vocab_size"])
    want = (weights * token_divergence(s_logits, t_logits, kind, 0.3)).sum()
    params = [p for p in student.parameters() if p.requires_grad]
    want_grads = torch.autograd.grad(want, params, allow_unused=True)

    head = teacher.get_output_embeddings()
    got, _ = StudentObjective(student, DivergenceSpec(kind, 0.3), chunk_size=4)(
        PlainInputs(ids, mask, positions), t_hidden, head.weight, head.bias, weights
    )
    got_grads = torch.autograd.grad(got, params, allow_unused=True)

    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for param_got, param_want in zip(got_grads, want_grads):
        if param_want is None:
            assert param_got is None or not param_got.any()
        else:
            torch.testing.assert_close(param_got, param_want, rtol=1e-4, atol=1e-6)


def test_transforms_matter_for_the_transforming_families() -> None:
    """Without the transform the loss would differ: the test above could not pass by accident."""
    for family in ("gemma2", "cohere", "granite"):
        model = tiny_model(family, seed=0)
        ids = torch.randint(3, TINY["vocab_size"], (1, 6))
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids).last_hidden_state
            raw = model.get_output_embeddings()(hidden)
            logits = model(input_ids=ids).logits
        assert not torch.allclose(raw, logits, rtol=1e-3, atol=1e-3), family
        torch.testing.assert_close(logit_transform_for(model.config).apply(raw), logits)


def test_an_unknown_family_is_refused_by_name() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "nanochat", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    with pytest.raises(UnsupportedModelFamily, match="'nanochat'"):
        logit_transform_for(config)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelFamily, match="'nanochat'.*supported families"):
        StudentObjective(model, DivergenceSpec("forward_kl", 0.5), chunk_size=4)


def test_transform_derivative_matches_autograd() -> None:
    y = torch.linspace(-6.0, 6.0, 25, dtype=torch.float64, requires_grad=True)
    for transform in (LogitTransform(softcap=2.0), LogitTransform(scale=0.3, softcap=1.5),
                      LogitTransform(scale=0.25)):
        (want,) = torch.autograd.grad(transform.apply(y).sum(), [y])
        z = transform.apply_(y.detach().clone())
        torch.testing.assert_close(transform.derivative_from_output_(z), want)


def test_bad_transform_parameters_raise() -> None:
    with pytest.raises(ValueError, match="scale"):
        LogitTransform(scale=0.0)
    with pytest.raises(ValueError, match="softcap"):
        LogitTransform(softcap=-1.0)
