"""The memory planner (caopd.memory) by identities derivable by hand, its count of parameters
against a real model, the plan-time refusal and ``caopd memory`` on the 8B preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caopd.cli import main as cli_main
from caopd.memory_report import check_memory
from caopd.config import ConfigError, deep_merge, resolve
from caopd.memory import (
    FP32,
    GIB,
    HEADROOM,
    Layout,
    ModelShape,
    activation_values_per_token_layer,
    advice,
    fits,
    memory_breakdown,
)

ROOT = Path(__file__).resolve().parent.parent
SHAPE = ModelShape(n_params=1000, n_layers=2, hidden=8, q_width=8, kv_width=4, intermediate=16, vocab=50,
                   lora_params=40)
LAYOUT = Layout(processes=4, sharded=False, lora=False, gradient_checkpointing=False, ema=True,
                micro_batch=2, seq_len=10, chunk_size=4, autocast_bf16=True)


def _with(**changes) -> Layout:
    return Layout(**{**LAYOUT.__dict__, **changes})


def test_whole_student_terms_by_hand():
    b = memory_breakdown(SHAPE, LAYOUT)
    assert b["weights"] == b["gradients"] == b["teacher"] == b["ema_shadow"] == 4 * 1000
    assert b["optimizer"] == 2 * 4 * 1000                         # AdamW: two fp32 moments
    # 6h + 2 h_q + 2 h_kv + 4 I = 48 + 16 + 8 + 64 = 136 values per token and layer, bf16
    assert activation_values_per_token_layer(SHAPE) == 136
    assert b["activations"] == 2 * (2 * 10) * 136 * 2
    assert b["logit_chunk"] == 4 * FP32 * 2 * 4 * 50               # 4 fp32 buffers of 2 x 4 x V


def test_fsdp2_divides_every_per_parameter_term_by_the_processes():
    whole, sharded = memory_breakdown(SHAPE, LAYOUT), memory_breakdown(SHAPE, _with(sharded=True))
    for part in ("weights", "gradients", "optimizer", "teacher", "ema_shadow"):
        assert sharded[part] == whole[part] // 4
    assert sharded["activations"] == whole["activations"]


def test_lora_trains_only_adapters_and_a_frozen_teacher_keeps_no_shadow():
    b = memory_breakdown(SHAPE, _with(lora=True, ema=False))
    assert b["weights"] == 4 * 1000
    assert b["gradients"] == b["teacher"] == 4 * 40 and b["optimizer"] == 8 * 40
    assert b["ema_shadow"] == 0


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    b = memory_breakdown(SHAPE, _with(gradient_checkpointing=True))
    assert b["activations"] == 2 * (20 * 8 * 2 + 20 * 136)


def test_fits_keeps_the_headroom_free():
    b = {"weights": int((1 - HEADROOM) * GIB)}
    assert fits(b, 1.0) and not fits({"weights": b["weights"] + 1}, 1.0)


def test_advice_names_changes_that_fit():
    big = ModelShape(n_params=8 * 10 ** 9, n_layers=36, hidden=4096, q_width=4096, kv_width=1024,
                     intermediate=12288, vocab=151936, lora_params=17 * 10 ** 7)
    layout = Layout(processes=1, sharded=False, lora=False, gradient_checkpointing=True, ema=True,
                    micro_batch=1, seq_len=2048, chunk_size=256)
    assert not fits(memory_breakdown(big, layout), 80)
    fixes = advice(big, layout, 80)
    assert any("distill.sharding: fsdp2" in f for f in fixes) and any("model.lora" in f for f in fixes)


def test_the_count_of_parameters_is_the_models(tiny_model_dir):
    """model_shape counts on the meta device what the loaded model holds (tied weights once) and,
    with LoRA, r * (in + out) per targeted linear layer."""
    from transformers import AutoModelForCausalLM

    from caopd.models.shape import model_shape

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    shape = model_shape({"source": str(tiny_model_dir), "lora": lora})
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    expected = sum(4 * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if n.endswith(("q_proj", "v_proj")))
    assert shape.lora_params == expected > 0


def test_a_config_that_cannot_fit_the_declared_gpu_is_refused_at_load():
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    small = resolve(deep_merge(raw, {"distill": {"gpu_memory_gb": 0.001}}))["variants"]
    with pytest.raises(ConfigError, match=r"variant 'sdft': key 'distill\.gpu_memory_gb': the distill job needs about"):
        check_memory(small)
    check_memory(resolve(deep_merge(raw, {"distill": {"gpu_memory_gb": 80}}))["variants"])  # the tiny model fits


def test_the_8b_preset_fits_8_gpus_and_is_refused_on_one(qwen3_8b_shape_dir, capsys):
    preset = str(ROOT / "config" / "presets" / "qwen3_8b_science.yaml")
    assert cli_main(["memory", "--configfile", preset, "--model", str(qwen3_8b_shape_dir)]) == 0
    out = capsys.readouterr().out
    assert "8.19B parameters, 8 process(es), sharding fsdp2" in out and "fits" in out
    assert cli_main(["memory", "--configfile", preset, "--model", str(qwen3_8b_shape_dir), "--processes", "1"]) == 2
    out = capsys.readouterr().out
    assert "does not fit; what would: shard over 8 GPUs (distill.processes: 8, distill.sharding: fsdp2)" in out
