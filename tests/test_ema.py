"""The EMA teacher keeps an exact fp32 shadow, also for a bf16 student (DESIGN §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from caopd.training.ema import EmaTeacher


def filled(value: float, dtype: torch.dtype = torch.float32) -> nn.Module:
    module = nn.Linear(3, 2).to(dtype)
    with torch.no_grad():
        for param in module.parameters():
            param.fill_(value)
    return module


def test_ema_is_exact_in_fp32() -> None:
    ema = EmaTeacher(filled(0.0))
    student = filled(1.0)
    for _ in range(100):
        ema.update(student, weight=0.01)
    expected = 1.0 - torch.tensor(0.99, dtype=torch.float64) ** 100  # ≈ 0.634
    for name, shadow in ema.state_dict().items():
        assert shadow.dtype == torch.float32, name
        torch.testing.assert_close(shadow.double(), expected.expand_as(shadow), atol=1e-6, rtol=0)


def test_bf16_student_moves_fp32_shadow_where_naive_bf16_ema_stalls() -> None:
    # Teacher at 1.0, student one bf16 step above (1 + 2^-7). Each EMA step should move the
    # teacher by 0.01 * 2^-7 ≈ 8e-5, far below the bf16 spacing at 1.0, so the reference-style
    # update in bf16 rounds back to 1.0 every time.
    student = filled(1.0 + 2**-7, torch.bfloat16)
    naive = filled(1.0, torch.bfloat16)
    ema = EmaTeacher(filled(1.0, torch.bfloat16))
    with torch.no_grad():
        for _ in range(100):
            for t, s in zip(naive.parameters(), student.parameters()):
                t.mul_(0.99).add_(0.01 * s)
            ema.update(student, weight=0.01)
    for t in naive.parameters():
        assert torch.equal(t, torch.ones_like(t)), "naive bf16 EMA was expected to stall at 1.0"

    expected = 1.0 + 2**-7 * (1.0 - 0.99**100)  # ≈ 1.00495
    for shadow in ema.state_dict().values():
        assert shadow.dtype == torch.float32
        want = torch.full_like(shadow, expected, dtype=torch.float64)
        torch.testing.assert_close(shadow.double(), want, atol=1e-6, rtol=0)

    teacher = filled(0.0, torch.bfloat16)
    ema.copy_to(teacher)
    for param in teacher.parameters():
        assert param.dtype == torch.bfloat16
        assert torch.equal(param, torch.full_like(param, 1.0 + 2**-7))  # nearest bf16 of 1.00495


def test_weight_one_copies_the_student() -> None:
    ema = EmaTeacher(filled(0.0))
    student = nn.Linear(3, 2)
    ema.update(student, weight=1.0)
    teacher = filled(5.0)
    ema.copy_to(teacher)
    for (name, got), want in zip(teacher.named_parameters(), student.parameters()):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5, float("nan"), True])
def test_weight_outside_unit_interval_raises(weight: float) -> None:
    ema = EmaTeacher(filled(0.0))
    with pytest.raises(ValueError, match="weight"):
        ema.update(filled(1.0), weight=weight)


def test_shadow_is_independent_of_the_module() -> None:
    module = filled(0.0)
    ema = EmaTeacher(module)
    with torch.no_grad():
        module.weight.fill_(9.0)
    assert torch.equal(ema.state_dict()["weight"], torch.zeros(2, 3))
    ema.state_dict()["weight"].fill_(7.0)  # a copy: does not write through
    assert torch.equal(ema.state_dict()["weight"], torch.zeros(2, 3))


def test_state_dict_round_trip() -> None:
    ema = EmaTeacher(filled(0.0))
    ema.update(nn.Linear(3, 2), weight=0.3)
    state = ema.state_dict()
    assert ema.names == ["weight", "bias"]
    restored = EmaTeacher(filled(4.0, torch.bfloat16))
    restored.load_state_dict(state)
    for name, value in restored.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, state[name])
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"weight": state["weight"]})
    with pytest.raises(ValueError, match="shape"):
        restored.load_state_dict(dict(state, bias=torch.zeros(3)))


def test_mismatched_module_raises() -> None:
    ema = EmaTeacher(filled(0.0))
    with pytest.raises(ValueError, match="student"):
        ema.update(nn.Linear(3, 4), weight=0.5)
    with pytest.raises(ValueError, match="teacher"):
        ema.copy_to(nn.Sequential(nn.Linear(3, 2)))
