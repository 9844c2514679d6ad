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


# --- issue 13 row 5: what used to pass -n and fail in a job is refused at load ----------------


def _science_dirs(tmp_path: Path) -> dict:
    for split in ("train", "eval"):
        (tmp_path / split).mkdir()
    return {"train": str(tmp_path / "train"), "eval": str(tmp_path / "eval")}


def test_a_float_where_an_integer_belongs_is_refused():
    with pytest.raises(ConfigError, match=r"key 'rollouts\.k': 8\.0 is not of type 'integer'"):
        resolve(deep_merge(_raw(), {"rollouts": {"k": 8.0}}))
    with pytest.raises(ConfigError, match=r"variant 'caopd': key 'distill\.epochs'"):
        raw = _raw()
        raw["variants"]["caopd"] = {"distill": {"epochs": 2.0}}
        resolve(raw)


def test_a_missing_model_path_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"key 'model\.source': '/nonexistent/path' does not exist"):
        resolve(deep_merge(_raw(), {"model": {"source": "/nonexistent/path"}}))


def test_a_hub_id_must_be_in_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"key 'model\.source': .*not in the local Hugging Face cache"):
        resolve(deep_merge(_raw(), {"model": {"source": "Qwen/Qwen3-8B"}}))
    # the same id, once in the cache, resolves (and its snapshot's commit enters the key)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-8B" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--Qwen--Qwen3-8B" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen3-8B" / "refs" / "main").write_text("c" * 40)
    resolved = resolve(deep_merge(_raw(), {"model": {"source": "Qwen/Qwen3-8B"}}))
    from caopd.sources import model_fingerprint

    assert resolved["variants"]["caopd"]["model"]["source"] == "Qwen/Qwen3-8B"
    assert model_fingerprint("Qwen/Qwen3-8B", None)["commit"] == "c" * 40


def test_a_model_directory_needs_its_config(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'model\.source': .*no config\.json"):
        resolve(deep_merge(_raw(), {"model": {"source": str(tmp_path)}}))


def test_science_paths_are_checked_at_load(tmp_path):
    paths = _science_dirs(tmp_path)
    ok = resolve(deep_merge(_raw(), {"task": {"name": "science", "paths": paths}}))
    assert ok["variants"]["caopd"]["task"]["paths"]["train"] == paths["train"]
    missing_eval = {**paths, "eval": str(tmp_path / "no_such_eval")}
    with pytest.raises(ConfigError, match=r"key 'task\.paths\.eval': .*no_such_eval' does not exist"):
        resolve(deep_merge(_raw(), {"task": {"name": "science", "paths": missing_eval}}))
    # no train path: refused where a variant trains, fine where none does
    no_train = {"task": {"name": "science", "paths": {"eval": paths["eval"]}}}
    with pytest.raises(ConfigError, match=r"variant 'sdft': key 'task\.paths\.train' is required"):
        resolve(deep_merge(_raw(), no_train))
    only_eval = deep_merge(_raw(), {**no_train, "distill": {"rounds": 0}})
    only_eval["variants"] = {"base": {}}
    assert resolve(only_eval)["variants"]["base"]["distill"]["rounds"] == 0


def test_arith_refuses_data_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'task\.paths\.train' is set, but task 'arith' generates"):
        resolve(deep_merge(_raw(), {"task": {"paths": {"train": str(tmp_path)}}}))


def test_snakemake_dry_run_refuses_a_config_that_cannot_run(tmp_path):
    """Row 5 through the workflow: ``snakemake -n`` fails at parse time naming the key, instead
    of planning jobs that fail hours later."""
    import subprocess
    import sys

    cfg = deep_merge(_raw(), {"model": {"source": "/nonexistent/path"}, "rollouts": {"k": 8}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(path), "--cores", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert "key 'model.source': '/nonexistent/path' does not exist" in done.stdout + done.stderr


def test_vllm_evaluation_needs_no_expected_confidence_and_asks_for_its_gpus():
    """evaluation.engine: vllm runs eval_rollouts through vLLM (same schema); the expected
    confidence reads the hf engine's token probabilities, so the pair is refused at load."""
    from caopd.resources import stage_launch

    vllm = {"evaluation": {"engine": "vllm", "tensor_parallel_size": 2}}
    with pytest.raises(ConfigError, match=r"key 'evaluation\.expected_confidence' is true but 'evaluation\.engine'"):
        resolve(deep_merge(_raw(), vllm))
    ok = resolve(deep_merge(_raw(), deep_merge(vllm, {"evaluation": {"expected_confidence": False}})))
    assert stage_launch("eval_rollouts", ok["variants"]["caopd"])["gpus"] == 2
    assert stage_launch("eval_rollouts", resolve(_raw())["variants"]["caopd"])["gpus"] == 1


def test_training_needs_a_number_of_training_prompts():
    with pytest.raises(ConfigError, match=r"key 'task\.sizes\.train' is null but 'distill\.rounds' is 1"):
        resolve(deep_merge(_raw(), {"task": {"sizes": {"train": None}}}))


# --- issue 18: distill.estimator, vopd_top_k, length_curriculum -------------------------------


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"distill": {"estimator": "vopd"}}, r"'distill\.estimator' is 'vopd' but 'distill\.divergence' is 'forward_kl'"),
        ({"distill": {"estimator": "sampled_token", "divergence": "kl_mix"}}, r"'distill\.divergence' is 'kl_mix'"),
        ({"distill": {"divergence": "reverse_kl", "estimator": "sampled_token", "vopd_top_k": 4}},
         r"'distill\.vopd_top_k' is 4 but 'distill\.estimator' is 'sampled_token'"),
        ({"distill": {"divergence": "reverse_kl", "estimator": "vopd", "vopd_top_k": 600}},
         r"'model\.tiny\.vocab_size' \(512\)"),
        ({"distill": {"length_curriculum": {"lengths": [16, 8], "min_entropy": 1.0}}}, "strictly increasing"),
        ({"distill": {"length_curriculum": {"lengths": [16, 64], "min_entropy": 1.0}}},
         r"'rollouts\.max_new_tokens' \(40\)"),
        ({"distill": {"length_curriculum": {"lengths": [16], "min_entropy": 1.0, "n_prompts": 8}},
          "task": {"sizes": {"val": 4}}}, r"'task\.sizes\.val' \(4\)"),
        ({"distill": {"length_curriculum": {"lengths": [16]}}}, r"'min_entropy' is a required property"),
        ({"distill": {"estimator": "rao_blackwell"}}, r"distill\.estimator"),
        ({"distill": {"divergence": "reverse_kl", "estimator": "vopd"}, "rollouts": {"prefix_source": "teacher"}},
         r"'distill\.estimator' is 'vopd' but 'rollouts\.prefix_source' is 'teacher'"),
        ({"distill": {"length_curriculum": {"lengths": [16], "min_entropy": 1.0}}, "rollouts": {"prefix_source": "teacher"}},
         r"'distill\.length_curriculum' is set but 'rollouts\.prefix_source' is 'teacher'"),
    ],
)
def test_estimator_and_curriculum_conflicts_are_named(patch, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(deep_merge(_raw(), patch))


def test_estimator_and_curriculum_variants_resolve_and_stay_out_of_the_default_key():
    from caopd.key_neutral import KEY_NEUTRAL
    from caopd.resources import distill_key_params

    default = resolve(_raw())["variants"]["caopd"]
    blocks = {"distill": default["distill"], "evaluation": default["evaluation"],
              "model.tiny.warmup": default["model"]["tiny"]["warmup"]}
    for block, settings in blocks.items():  # at the defaults every listed setting is neutral
        for name, neutral in KEY_NEUTRAL[block].items():
            assert neutral(settings[name], settings), (block, name)
    cfg = resolve(deep_merge(_raw(), {"variants": {
        "vopd": {"distill": {"divergence": "reverse_kl", "estimator": "vopd", "vopd_top_k": 16}},
        "ladder": {"distill": {"length_curriculum": {"lengths": [16, 32, 40], "min_entropy": 0.5}}},
    }}))["variants"]
    assert cfg["ladder"]["distill"]["length_curriculum"]["n_prompts"] == 16  # the schema's default
    assert not set(KEY_NEUTRAL["distill"]) & set(distill_key_params(cfg["caopd"]["distill"]))
    assert distill_key_params(cfg["vopd"]["distill"])["vopd_top_k"] == 16
    assert "length_curriculum" in distill_key_params(cfg["ladder"]["distill"])
