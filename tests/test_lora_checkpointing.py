"""LoRA through PEFT and gradient checkpointing in the distill loop (issue 15 row 2, DESIGN §10).

- LoRA: only the adapter weights move; the EMA teacher's adapters are the EMA of the student's
  (checked by hand on one step: w·student + (1 − w)·start, the start being the student's own
  initial adapters) while the base weights are the student's own modules (shared, not copied);
  the artifact holds ``adapter/`` (student) and ``adapter/teacher/`` and merged ``student/`` and
  ``teacher/`` whose logits equal the PEFT models' (1e-5 absolute: merging adds B·A·s into W,
  which rounds differently from W·x + B·(A·x)·s); a killed LoRA run resumes byte-identically.
- Gradient checkpointing: the same loss and gradients as without (1e-6 relative: the recomputed
  forward is the same arithmetic).
- Config: ``model.lora`` is part of the distill key, ``distill.sharding`` and
  ``gradient_checkpointing`` are not; the combinations that cannot run are refused at load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_distill_loop import distill, make_examples, make_params

ROOT = Path(__file__).resolve().parent.parent
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def lora_params(**overrides) -> dict:
    params = make_params([6], batch_size=3, grad_accum=1, epochs=1, checkpoint_every=1, teacher="ema",
                         ema_weight=0.25, **overrides)
    params["lora"] = dict(LORA)
    return params


@pytest.fixture(scope="module")
def examples6(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_examples(tiny_model_dir, tmp_path_factory.mktemp("lora") / "examples.parquet", 6)


def test_lora_trains_adapters_only_and_the_teacher_averages_them(tiny_model_dir, examples6, tmp_path) -> None:
    from peft import PeftModel
    from safetensors import safe_open

    from caopd.training.state import load_causal_lm

    params = lora_params()
    seen: list[dict] = []
    out = tmp_path / "lora"
    summary = distill(params, examples6, tiny_model_dir, out, on_step=seen.append)
    assert summary["steps"] == 2 and len(seen) == 2

    # adapters: the student's moved, base untouched (checked through the merged model below)
    student_adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    teacher_adapter = load_file(out / "adapter" / "teacher" / "adapter_model.safetensors")
    assert set(student_adapter) == set(teacher_adapter) and student_adapter
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == LORA["r"]
    b_names = [k for k in student_adapter if "lora_B" in k]
    assert all(student_adapter[k].abs().sum() > 0 for k in b_names)  # B starts at 0 and moved

    # the EMA by hand: start = the initial adapters (B = 0, A = PEFT's seeded init), two steps of
    # shadow <- (1-w) shadow + w student; B's shadow after step 2 is w*B1 + ... so check B's ratio
    # on a 1-step run instead (exact arithmetic below).
    one = tmp_path / "one"
    with pytest.raises(Killed):
        distill(lora_params(), examples6, tiny_model_dir, one, on_step=lambda row: _stop_after(row, 1))
    w = params["distill"]["ema_weight"]
    checkpoint = next((one.parent / "one.work").glob("step-*"))
    s1 = load_file(checkpoint / "student" / "adapter.safetensors")
    t1 = load_file(checkpoint / "teacher" / "adapter.safetensors")
    for name in s1:
        if "lora_B" in name:  # start 0: teacher = w * student after one step
            torch.testing.assert_close(t1[name], w * s1[name], rtol=0, atol=0)
    initial = _initial_adapters(tiny_model_dir, params)
    for name in s1:
        expected = (1 - w) * initial[name] + w * s1[name]
        torch.testing.assert_close(t1[name], initial[name].lerp(s1[name], w), rtol=0, atol=0)
        torch.testing.assert_close(t1[name], expected, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(initial[n], s1[n]) for n in s1 if "lora_A" in n)

    # merged student / teacher: the PEFT model's logits, and the frozen base inside unchanged
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    for adapter, merged_dir in ((out / "adapter", out / "student"), (out / "adapter" / "teacher", out / "teacher")):
        peft_model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), str(adapter)).eval()
        merged = load_causal_lm(merged_dir).eval()
        with torch.no_grad():
            torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=0, atol=1e-5)
        with safe_open(merged_dir / "model.safetensors", "pt") as fh:
            assert set(fh.keys()) == set(load_file(tiny_model_dir / "model.safetensors"))
    merged = load_file(out / "student" / "model.safetensors")
    plain = load_file(tiny_model_dir / "model.safetensors")
    targeted = {f"{m}.weight" for m in ("q_proj", "v_proj", "up_proj")}
    for name, tensor in merged.items():
        if not any(name.endswith(t) for t in targeted):
            assert torch.equal(tensor, plain[name]), name  # only the LoRA-targeted weights differ


def _stop_after(row: dict, step: int) -> None:
    if row["step"] == step:
        raise Killed


class Killed(RuntimeError):
    pass


def _initial_adapters(model_dir: Path, params: dict) -> dict[str, torch.Tensor]:
    """The student's adapters as the run creates them (``set_seed(seed)`` then PEFT's init)."""
    from accelerate.utils import set_seed

    from caopd.training.lora import adapter_parameters, wrap_student
    from caopd.training.state import load_causal_lm

    set_seed(7)
    peft_model = wrap_student(load_causal_lm(model_dir).train(), params["lora"])
    return {n: p.detach().clone() for n, p in adapter_parameters(peft_model.get_base_model()).items()}


def test_a_killed_lora_run_resumes_byte_identically(tiny_model_dir, examples6, tmp_path) -> None:
    params = lora_params()
    with pytest.raises(Killed):
        distill(params, examples6, tiny_model_dir, tmp_path / "job", on_step=lambda row: _stop_after(row, 1))
    assert distill(params, examples6, tiny_model_dir, tmp_path / "job")["resumed_from"] == 1
    distill(params, examples6, tiny_model_dir, tmp_path / "whole")
    for sub in ("student/model.safetensors", "teacher/model.safetensors", "adapter/adapter_model.safetensors",
                "adapter/teacher/adapter_model.safetensors"):
        assert (tmp_path / "job" / sub).read_bytes() == (tmp_path / "whole" / sub).read_bytes(), sub


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, examples6) -> None:
    from caopd.training.data import collate, load_examples
    from caopd.training.divergence import DivergenceSpec
    from caopd.training.objective import StudentObjective
    from caopd.training.loss import normalise_by_tokens
    from caopd.training.prefix import model_inputs
    from caopd.training.state import load_causal_lm
    from caopd.training.teacher_states import teacher_hidden_states

    examples = load_examples(examples6)
    batch = collate(examples[:4], 3, True)
    teacher = load_causal_lm(tiny_model_dir).eval()
    student_inputs, teacher_inputs = model_inputs(batch)
    t_hidden = teacher_hidden_states(teacher, teacher_inputs)
    head = teacher.get_output_embeddings()
    grads, losses = [], []
    for checkpointing in (False, True):
        student = load_causal_lm(tiny_model_dir).train()
        if checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert any(getattr(m, "gradient_checkpointing", False) for m in student.modules())
        objective = StudentObjective(student, DivergenceSpec("forward_kl", 0.5), 16)
        loss, _ = objective(student_inputs, t_hidden, head.weight, head.bias, batch.weights)
        normalise_by_tokens(loss, torch.tensor(float(batch.n_loss_tokens)), 1).backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in student.named_parameters()})
    assert losses[0] == losses[1]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-6, atol=1e-9, msg=name)


def test_the_layout_keys_and_what_cannot_run(tmp_path) -> None:
    from caopd.config import ConfigError, resolve
    from test_launch_from_rule import TINY, _distill_key, _with

    cfg = _with(TINY, processes=1, accelerate_config="config/accelerate/ddp.yaml")
    key = _distill_key(cfg)
    assert key == _distill_key(_with(cfg, gradient_checkpointing=True))
    assert key == _distill_key(_with(TINY, sharding="fsdp2"))  # 2 gloo processes, sharded
    with_lora = json.loads(json.dumps(cfg))
    with_lora["model"]["lora"] = dict(LORA)
    assert _distill_key(with_lora) != key
    refused = [
        (_with(cfg, sharding="fsdp2"), "sharding needs >= 2 processes"),
        (_with(TINY, sharding="fsdp2", schedule="online"), "online"),
        (_with(with_lora, rounds=2), "LoRA trains one round"),
        (_with(cfg, gradient_checkpointing=True, batching="prompt_groups"), "KV cache"),
    ]
    both = _with(TINY, sharding="fsdp2")
    both["model"]["lora"] = dict(LORA)
    refused.append((both, "LoRA runs unsharded"))
    for config, needle in refused:
        with pytest.raises(ConfigError, match=needle):
            resolve(config)
    bad = json.loads(json.dumps(cfg))
    bad["model"]["lora"] = {"r": 4}
    with pytest.raises(ConfigError, match="alpha"):
        resolve(bad)
