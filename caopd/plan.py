"""The stage plan: every artifact's key, computed at parse time before anything runs (DESIGN §4).

::

    key(stage) = sha256(canonical_json({
        "stage": name,
        "params": the resolved config subtree the stage reads,
        "code": fingerprint of the source files the stage runs (caopd.stage_code),
        "upstream": {role: key of that input},
    }))[:16]

A stage's random seed comes from a second hash, the *draw key*: the same preimage without the
code fingerprint, over the upstream draw keys instead of the upstream keys. An edit to the code
that leaves the parameters alone (a docstring, a refactor) gives new keys, so everything
downstream reruns, but the same seeds, so a behaviour-preserving edit reproduces the same bytes
and the measured figures do not move; an edit that changes behaviour changes the outputs because
the code differs, not because the random draw moved. One key still determines one seed.

``build_plan(resolved_config, root)`` returns, per variant, the ordered list of
:class:`StageSpec` (one per artifact) that the Snakemake rules look up by key. This module is
imported by the Snakefile: it must stay free of torch, mlflow and the task modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caopd.hashing import code_fingerprint, digest
from caopd.sources import dataset_fingerprint, model_fingerprint
from caopd.stage_code import (  # noqa: F401 - re-exported: job, the Snakefile and tests read them here
    COMPARE_CODE,
    HARNESS_CODE,
    INDEX_CODE,
    SAMPLING_CODE,
    STAGE_CODE,
    STAGES,
)

#: The ``rewrite`` keys that shape the teacher prompt (:func:`caopd.rollouts.teacher.teacher_chat`):
#: with ``rollouts``, ``round`` and ``slice`` the params of stage ``teacher_rollouts``.
TEACHER_PROMPT_KEYS = ("calibration", "teacher_mode", "fallback")


@dataclass(frozen=True)
class StageSpec:
    """One artifact: its stage, round, params, code fingerprint, upstream keys and key."""

    stage: str
    round: int | None
    params: dict[str, Any]
    code: str
    upstream: dict[str, str]  # role -> key
    upstream_stage: dict[str, str] = field(default_factory=dict)  # role -> stage name
    upstream_draw: dict[str, str] = field(default_factory=dict)  # role -> draw key of that input
    #: what the job asks of the machine (caopd.resources.stage_launch); not part of the key
    launch: dict[str, Any] = field(default_factory=dict)

    @property
    def preimage(self) -> dict[str, Any]:
        return {"stage": self.stage, "params": self.params, "code": self.code, "upstream": self.upstream}

    @property
    def key(self) -> str:
        return digest(self.preimage)

    @property
    def path(self) -> str:
        return f"results/{self.stage}/{self.key}"

    def input_paths(self) -> dict[str, str]:
        return {role: f"results/{self.upstream_stage[role]}/{key}" for role, key in self.upstream.items()}

    @property
    def draw_key(self) -> str:
        """The key's preimage without the code, over upstream draw keys (module docstring)."""
        draw = {"stage": self.stage, "params": self.params, "upstream": self.upstream_draw}
        return digest(draw)

    @property
    def seed(self) -> int:
        """The stage's random seed, derived from its draw key: the config fixes the draw and a
        code edit does not move it; the key, which includes the draw key's inputs, still
        determines it."""
        return int(self.draw_key[:8], 16) % (2**31 - 1)


@dataclass
class VariantPlan:
    """All artifacts of one variant in DAG order, and the model it finally evaluates."""

    name: str
    stages: list[StageSpec]

    def get(self, stage: str, round: int | None = None) -> StageSpec:
        for spec in self.stages:
            if spec.stage == stage and spec.round == round:
                return spec
        raise KeyError(f"variant '{self.name}' has no stage {stage!r} round {round!r}")


def round_slices(n_train: int, rounds: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) index ranges of the training prompts for rounds 1..R."""
    return [((r * n_train) // rounds, ((r + 1) * n_train) // rounds) for r in range(rounds)]


def _spec(
    stage: str, rnd: int | None, params: dict, root: Path, launch: dict | None = None, **upstream: StageSpec
) -> StageSpec:
    return StageSpec(
        stage=stage,
        round=rnd,
        params=params,
        code=code_fingerprint(STAGE_CODE[stage], root),
        upstream={role: up.key for role, up in upstream.items()},
        upstream_stage={role: up.stage for role, up in upstream.items()},
        upstream_draw={role: up.draw_key for role, up in upstream.items()},
        launch=dict(launch or {}),
    )


def plan_variant(name: str, cfg: Mapping[str, Any], root: str | Path) -> VariantPlan:
    """The artifacts of one resolved variant config, in DAG order."""
    from caopd.key_neutral import key_params
    from caopd.resources import distill_key_params, stage_launch

    root = Path(root)
    launch = {stage: stage_launch(stage, cfg, root) for stage in ("base_model", "rollouts", "teacher_rollouts",
                                                                   "distill", "eval_rollouts")}
    distill_params = distill_key_params(cfg["distill"])
    lora = {"lora": cfg["model"]["lora"]} if cfg["model"].get("lora") is not None else {}  # issue 15
    task = dict(cfg["task"])
    task["sources"] = {split: dataset_fingerprint(p) for split, p in task["paths"].items() if p}
    data = _spec("prepare_data", None, {"seed": cfg["seed"], "task": task}, root)

    model_params: dict[str, Any] = {"seed": cfg["seed"], "source": cfg["model"]["source"]}
    if cfg["model"]["source"] == "tiny":
        model_params["tiny"] = tiny_params(cfg["model"]["tiny"])
    else:
        model_params["origin"] = model_fingerprint(cfg["model"]["source"], cfg["model"]["revision"])
    base = _spec("base_model", None, model_params, root, launch["base_model"])

    stages = [data, base]
    student = base
    # prefix_source picks the completions the rewrite trains on; the student's rollouts do not
    # depend on it (shared by both sources), and it is a key of no stage when it is the default
    sampling = {key: value for key, value in cfg["rollouts"].items() if key != "prefix_source"}
    teacher_prefix = cfg["rollouts"]["prefix_source"] == "teacher"
    rounds = cfg["distill"]["rounds"]
    n_train = cfg["task"]["sizes"]["train"]
    k = cfg["rollouts"]["k"]
    if rounds and n_train is None:
        raise ValueError("task.sizes.train must be set when distill.rounds > 0")
    slices = round_slices(n_train, rounds) if rounds else []
    online = cfg["distill"]["schedule"] == "online"
    if online:
        schedule = {"prompts_per_round": [stop - start for start, stop in slices], "rounds": rounds}
    else:
        schedule = {
            "examples_per_round": [(stop - start) * k for start, stop in slices],
            "rounds": rounds,
        }
    # issue 18: present only when used, so the default's keys do not move
    ladder = cfg["distill"].get("length_curriculum")
    curriculum = {"length_curriculum": ladder} if ladder is not None else {}
    sampled_len = {"sampled_len": True} if cfg["distill"].get("estimator", "full_vocab") != "full_vocab" else {}
    previous_roll = None
    for r, (start, stop) in enumerate(slices, start=1):
        if online:  # rollouts, targets and examples are made inside the job, step by step
            distill = _spec(
                "distill",
                r,
                {
                    "distill": distill_params, "round": r, "schedule": schedule, "slice": [start, stop],
                    "rollouts": sampling, "rewrite": cfg["rewrite"], "task": cfg["task"]["name"],
                    **lora,
                },
                root,
                launch["distill"],
                data=data,
                student=student,
            )
            stages.append(distill)
            student = distill
            continue
        roll = _spec(
            "rollouts",
            r,
            {"rollouts": sampling, "round": r, "slice": [start, stop], **curriculum},
            root,
            launch["rollouts"],
            data=data,
            model=student,
            **({"previous": previous_roll} if curriculum and previous_roll is not None else {}),  # issue 18: its rung
        )
        previous_roll = roll
        targets = _spec("targets", r, {"task": cfg["task"]["name"], "round": r}, root, data=data, rollouts=roll)
        rewrite_params = {"rewrite": cfg["rewrite"], "task": cfg["task"]["name"], "round": r, **sampled_len}
        prefixes = {}
        if teacher_prefix:  # caopd.rollouts.teacher: the teacher's samples; P_acc from `targets`
            prompt = {key: cfg["rewrite"][key] for key in TEACHER_PROMPT_KEYS}
            prefixes["prefixes"] = _spec(
                "teacher_rollouts", r, {"rollouts": sampling, "rewrite": prompt, "round": r, "slice": [start, stop]},
                root, launch["teacher_rollouts"], data=data, model=student, rollouts=roll, targets=targets,
            )
            rewrite_params["prefix_source"] = "teacher"
        rewrite = _spec(
            "rewrite",
            r,
            rewrite_params,
            root,
            data=data,
            rollouts=roll,
            targets=targets,
            tokenizer=base,
            **prefixes,
        )
        distill = _spec(
            "distill",
            r,
            {"distill": distill_params, "round": r, "schedule": schedule, **lora},
            root,
            launch["distill"],
            examples=rewrite,
            student=student,
        )
        stages += [roll, targets, *prefixes.values(), rewrite, distill]
        student = distill

    generation = key_params("evaluation", {key: cfg["evaluation"][key] for key in (
        "engine", "tensor_parallel_size", "greedy", "n_samples", "temperature", "max_new_tokens", "batch_size",
        "expected_confidence")})
    split = cfg["evaluation"]["split"]
    eval_roll = _spec(
        "eval_rollouts", None, {"evaluation": generation, "split": split}, root, launch["eval_rollouts"],
        data=data, model=student,
    )
    scoring = {key: cfg["evaluation"][key] for key in ("n_bins", "bootstrap")}
    evaluate = _spec(
        "evaluate", None, {"evaluation": scoring, "task": cfg["task"]["name"], "split": split}, root,
        data=data, rollouts=eval_roll,
    )
    plot_inputs = {"evaluate": evaluate}
    for spec in stages:
        if spec.stage in ("targets", "distill"):
            plot_inputs[f"{spec.stage}_{spec.round}"] = spec
    plots = _spec("plots", None, {"variant_rounds": rounds}, root, **plot_inputs)
    stages += [eval_roll, evaluate, plots]
    return VariantPlan(name=name, stages=stages)


@dataclass
class Plan:
    """Every variant's artifacts, plus a lookup from (stage, key) to the spec that makes it."""

    variants: dict[str, VariantPlan]
    by_key: dict[tuple[str, str], StageSpec]

    def spec(self, stage: str, key: str) -> StageSpec:
        try:
            return self.by_key[(stage, key)]
        except KeyError:
            raise KeyError(
                f"no artifact results/{stage}/{key} in the plan of the current config; "
                "keys change with the config and the code (see results/index/*.json)"
            ) from None


def tiny_params(tiny: Mapping[str, Any]) -> dict[str, Any]:
    """The tiny model's settings as the base_model stage's params: the copy task's learning-rate
    warm-up enters only when it is on (:data:`caopd.key_neutral.KEY_NEUTRAL`), so configs written
    before it existed (e.g. ``config/smoke.yaml``, which sets 0) keep their keys and draws."""
    from caopd.key_neutral import key_params

    return {**tiny, "warmup": key_params("model.tiny.warmup", tiny["warmup"])}


def build_plan(resolved: Mapping[str, Any], root: str | Path | None = None) -> Plan:
    """Plan every variant of a :func:`caopd.config.resolve` result."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    variants = {name: plan_variant(name, cfg, root) for name, cfg in resolved["variants"].items()}
    by_key: dict[tuple[str, str], StageSpec] = {}
    owner: dict[tuple[str, str], str] = {}
    for name, vplan in variants.items():
        for spec in vplan.stages:
            known = by_key.setdefault((spec.stage, spec.key), spec)
            owner.setdefault((spec.stage, spec.key), name)
            if known.launch != spec.launch:
                raise ValueError(
                    f"variants '{owner[(spec.stage, spec.key)]}' and '{name}' share the artifact "
                    f"{spec.path} but lay its job out differently ({known.launch} vs {spec.launch}); "
                    "give them the same threads, distill.processes, accelerate_config, sharding "
                    "and gradient_checkpointing"
                )
    return Plan(variants=variants, by_key=by_key)

