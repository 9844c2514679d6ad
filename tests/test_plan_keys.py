"""Content addressing (DESIGN §4): stable keys; a change reruns exactly its stage and downstream."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from caopd.config import deep_merge, resolve
from caopd.hashing import canonical_json, code_fingerprint
from caopd.plan import COMPARE_CODE, INDEX_CODE, STAGE_CODE, build_plan

ROOT = Path(__file__).resolve().parent.parent


def _config(**overrides) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return resolve(deep_merge(raw, overrides))


def _keys(plan, variant: str) -> dict[tuple[str, int | None], str]:
    return {(s.stage, s.round): s.key for s in plan.variants[variant].stages}


def _seeds(plan, variant: str) -> dict[tuple[str, int | None], int]:
    return {(s.stage, s.round): s.seed for s in plan.variants[variant].stages}


def _downstream(plan, variant: str, start: set[tuple[str, int | None]]) -> set[tuple[str, int | None]]:
    """Stages reachable from ``start`` through upstream links (by key identity)."""
    specs = plan.variants[variant].stages
    changed = set(start)
    keys_changed = {s.key for s in specs if (s.stage, s.round) in changed}
    for spec in specs:  # DAG order
        if set(spec.upstream.values()) & keys_changed:
            changed.add((spec.stage, spec.round))
            keys_changed.add(spec.key)
    return changed


def test_keys_are_stable_across_builds():
    a = build_plan(_config(), ROOT)
    b = build_plan(_config(), ROOT)
    assert _keys(a, "caopd") == _keys(b, "caopd")
    assert all(len(k) == 16 for k in _keys(a, "caopd").values())


def test_canonical_json_ignores_key_order():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json({"a": [1, {"c": 3, "d": 2}], "b": 1})


def test_variants_share_the_common_prefix():
    plan = build_plan(_config(), ROOT)
    sdft, caopd, base = (_keys(plan, v) for v in ("sdft", "caopd", "base"))
    for shared in [("prepare_data", None), ("base_model", None), ("rollouts", 1), ("targets", 1)]:
        assert sdft[shared] == caopd[shared]
    assert sdft[("rewrite", 1)] != caopd[("rewrite", 1)]
    assert base[("prepare_data", None)] == caopd[("prepare_data", None)]
    assert ("rollouts", 1) not in base


@pytest.mark.parametrize(
    ("overrides", "first_changed"),
    [
        ({"distill": {"lr": 5e-4}}, ("distill", 1)),
        ({"rewrite": {"teacher_mode": "correct_solution"}}, ("rewrite", 1)),
        ({"rollouts": {"temperature": 0.7}}, ("rollouts", 1)),
        ({"evaluation": {"bootstrap": 200}}, ("evaluate", None)),
        ({"evaluation": {"max_new_tokens": 36}}, ("eval_rollouts", None)),
        ({"model": {"tiny": {"warmup": {"steps": 10}}}}, ("base_model", None)),
    ],
)
def test_one_parameter_changes_exactly_its_stage_and_downstream(overrides, first_changed):
    before = build_plan(_config(), ROOT)
    after = build_plan(_config(**overrides), ROOT)
    old, new = _keys(before, "caopd"), _keys(after, "caopd")
    changed = {stage for stage in old if old[stage] != new[stage]}
    assert changed == _downstream(before, "caopd", {first_changed})
    # the random draw follows the config: the same stages get new seeds
    old_seeds, new_seeds = _seeds(before, "caopd"), _seeds(after, "caopd")
    assert {stage for stage in old_seeds if old_seeds[stage] != new_seeds[stage]} == changed
    # changing it back gives the old keys again, so the old artifacts are reused
    assert _keys(build_plan(_config(), ROOT), "caopd") == old


def test_editing_a_module_changes_exactly_the_stages_that_run_it(tmp_path):
    tree = tmp_path / "repo"
    for part in ("caopd", "workflow", "config"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    before = build_plan(_config(), tree)
    target = tree / "caopd" / "training" / "divergence.py"
    original = target.read_text()
    target.write_text(original + "\n# a fixed bug\n")
    after = build_plan(_config(), tree)
    old, new = _keys(before, "caopd"), _keys(after, "caopd")
    changed = {stage for stage in old if old[stage] != new[stage]}
    assert changed == _downstream(before, "caopd", {("distill", 1)})
    assert ("rollouts", 1) not in changed and ("base_model", None) not in changed
    # ...but draws the same random numbers: an edit that keeps behaviour reproduces the bytes
    assert _seeds(after, "caopd") == _seeds(before, "caopd")
    target.write_text(original)
    assert _keys(build_plan(_config(), tree), "caopd") == old


def test_seeds_are_distinct_per_stage_and_follow_the_root_seed():
    plan = build_plan(_config(), ROOT)
    seeds = _seeds(plan, "caopd")
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2**31 - 1 for s in seeds.values())
    other = _seeds(build_plan(_config(seed=1), ROOT), "caopd")
    assert all(other[stage] != seeds[stage] for stage in seeds)


def test_every_stage_code_entry_exists():
    for stage, entries in STAGE_CODE.items():
        for entry in entries:
            assert (ROOT / entry).exists(), f"{stage}: {entry} does not exist"
        assert code_fingerprint(entries, ROOT) != code_fingerprint(entries, ROOT / "nowhere")


def test_compare_code_exists_and_reaches_the_rule():
    """``compare`` writes to fixed paths; its code fingerprint is a param, so an edit reruns it."""
    for entry in COMPARE_CODE:
        assert (ROOT / entry).is_file(), f"compare: {entry} does not exist"
    rule = (ROOT / "workflow" / "rules" / "plots.smk").read_text()
    assert "code=COMPARE_FINGERPRINT" in rule.split("rule compare:")[1]


def test_index_code_exists_and_reaches_the_rule():
    for entry in INDEX_CODE:
        assert (ROOT / entry).is_file(), f"index: {entry} does not exist"
    rule = (ROOT / "workflow" / "rules" / "plots.smk").read_text()
    assert "code=INDEX_FINGERPRINT" in rule.split("rule index:")[1].split("rule compare:")[0]


def test_where_a_job_runs_is_no_param_or_input():
    """Issue 13 row 1 (the smoke test runs the moved copy): no rule takes the checkout's path or
    the tracking URI as a param or input, and the profiles drop the mtime-based code trigger."""
    import re

    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    for params in re.findall(r"params:\n((?:        .*\n)+)", text):
        assert "workflow.basedir" not in params and "root=" not in params and "TRACKING" not in params
    assert "TRACKING" not in text and "tracking.json" not in text
    for profile in ("profiles/default/config.yaml", "workflow/profiles/slurm/config.yaml"):
        triggers = yaml.safe_load((ROOT / profile).read_text())["rerun-triggers"]
        assert "code" not in triggers and {"params", "input", "mtime"} <= set(triggers), profile


def test_threads_reach_each_job_and_no_key():
    """Config `threads` is what a job asks of the machine (caopd.resources): every stage that runs
    a model gets its own count (distill: per process), and no key moves when it changes."""
    one = build_plan(_config(threads={"base_model": 1, "rollouts": 1, "distill": 1, "eval_rollouts": 1}), ROOT)
    other = {"base_model": 2, "rollouts": 3, "distill": 5, "eval_rollouts": 7}
    plan = build_plan(_config(threads=other), ROOT)
    assert _keys(plan, "caopd") == _keys(one, "caopd")
    got = {s.stage: s.launch.get("threads") for s in plan.variants["caopd"].stages}
    assert got == {"prepare_data": None, "base_model": 2, "rollouts": 3, "targets": None, "rewrite": None,
                   "distill": 5, "eval_rollouts": 7, "evaluate": None, "plots": None}
    two = build_plan(_config(threads=other, distill={"processes": 2,
                                                     "accelerate_config": "config/accelerate/cpu_ddp.yaml"}), ROOT)
    assert {s.stage: s.launch.get("threads") for s in two.variants["caopd"].stages}["distill"] == 10


def test_raw_data_files_enter_the_data_key(tmp_path):
    data = tmp_path / "eval"
    data.mkdir()
    (data / "rows.arrow").write_bytes(b"one")
    train = tmp_path / "train"
    train.mkdir()
    cfg = {"task": {"name": "science", "paths": {"train": str(train), "eval": str(data)}}}
    first = _keys(build_plan(_config(**cfg), ROOT), "base")[("prepare_data", None)]
    (data / "rows.arrow").write_bytes(b"two")
    second = _keys(build_plan(_config(**cfg), ROOT), "base")[("prepare_data", None)]
    assert first != second


def test_evaluating_on_val_changes_only_the_evaluation_keys():
    plan = build_plan(_config(), ROOT)
    on_val = build_plan(_config(evaluation={"split": "val"}), ROOT)
    for variant in ("base", "sdft", "caopd"):
        before, after = _keys(plan, variant), _keys(on_val, variant)
        changed = {stage for stage in before if before[stage] != after[stage]}
        assert changed == {("eval_rollouts", None), ("evaluate", None), ("plots", None)}
    spec = next(s for s in on_val.variants["caopd"].stages if s.stage == "evaluate")
    assert spec.params["split"] == "val"


def _schedule_config(schedule: str, **distill) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["distill"] = {**raw["distill"], "schedule": schedule, **distill}
    raw["variants"] = {"base": {"distill": {"rounds": 0}}, "sdft": {"rewrite": {"calibration": False}},
                       "caopd": {}}
    return resolve(raw)


def test_online_rounds_sample_inside_the_distill_job():
    plan = build_plan(_schedule_config("online", rounds=2), ROOT)
    stages = [(s.stage, s.round) for s in plan.variants["caopd"].stages]
    assert stages == [("prepare_data", None), ("base_model", None), ("distill", 1), ("distill", 2),
                      ("eval_rollouts", None), ("evaluate", None), ("plots", None)]
    first, second = (plan.variants["caopd"].get("distill", r) for r in (1, 2))
    assert set(first.upstream_stage.values()) == {"prepare_data", "base_model"}
    assert second.upstream_stage == {"data": "prepare_data", "student": "distill"}
    n = first.params["schedule"]["prompts_per_round"]
    assert first.params["slice"] == [0, n[0]] and second.params["slice"] == [n[0], n[0] + n[1]]
    # what the job samples and rewrites with is in its key: sdft and caopd differ from round 1
    sdft, caopd = (_keys(plan, v) for v in ("sdft", "caopd"))
    assert sdft[("distill", 1)] != caopd[("distill", 1)]
    hotter = build_plan(_schedule_config("online", rounds=2, refresh_every=4), ROOT)
    assert _keys(hotter, "caopd")[("distill", 1)] != caopd[("distill", 1)]
    assert _keys(hotter, "caopd")[("base_model", None)] == caopd[("base_model", None)]


def test_online_refuses_a_step_of_partial_prompt_groups_and_vllm():
    from caopd.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of 'rollouts.k'"):
        _schedule_config("online", batch_size=30)
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["distill"] = {**raw["distill"], "schedule": "online"}
    raw["rollouts"] = {**raw["rollouts"], "engine": "vllm"}
    with pytest.raises(ConfigError, match="hf engine"):
        resolve(raw)


def test_local_model_weights_enter_the_key_by_content(tmp_path, monkeypatch):
    """Issue 13 row 3: same-size weights with the old mtime used to keep the key; the sha256 of
    every file is in it now (a cached digest is revalidated by inode, size, mtime and ctime)."""
    import os

    monkeypatch.setenv("CAOPD_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"A" * 64)
    cfg = {"model": {"source": str(model)}}
    first = _keys(build_plan(_config(**cfg), ROOT), "caopd")
    assert first == _keys(build_plan(_config(**cfg), ROOT), "caopd")  # from the cache: same key
    stat = weights.stat()
    weights.write_bytes(b"B" * 64)  # same size ...
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime
    second = _keys(build_plan(_config(**cfg), ROOT), "caopd")
    assert second[("base_model", None)] != first[("base_model", None)]
    assert second[("prepare_data", None)] == first[("prepare_data", None)]
