"""What a stage's job asks of the machine: GPUs, CPU threads and distill processes (DESIGN §10).

Computed from the resolved config when the workflow is parsed, so a SLURM job of an 8-GPU preset
asks for ``--gpus=8`` with no edit of the profile. They reach Snakemake as a rule's ``threads:``
and ``resources:`` (``gpu``, ``processes``, ``accelerate_config``), never as params or as part of
a key: how a job is laid out on its allocation reruns nothing.

- ``base_model``: ``threads.base_model`` threads.
- ``distill``: ``distill.processes`` processes, one per GPU, ``threads.distill`` threads
  each; no GPU when the accelerate config says ``use_cpu: true`` (gloo processes on CPU).
- ``rollouts``, ``teacher_rollouts``: ``rollouts.tensor_parallel_size`` GPUs with vLLM, one with
  the HF engine; ``threads.rollouts`` threads.
- ``eval_rollouts``: ``evaluation.tensor_parallel_size`` GPUs with vLLM, one with the HF engine;
  ``threads.eval_rollouts`` threads.
- the other stages: one thread (their rules' default), no GPU.

Imported by the Snakefile: no torch, no accelerate, no mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

#: Keys of the ``distill`` block that lay a job out on its allocation; not part of the key.
#: ``sharding`` and ``gradient_checkpointing`` (issue 15) change where numbers live, not the
#: numbers; the job adds them to its params (:func:`caopd.training.layout.with_runtime`).
LAUNCH_KEYS = ("processes", "accelerate_config", "sharding", "gradient_checkpointing", "gpu_memory_gb")
#: ``distributed_type`` values of an accelerate config that caopd.training.distill runs with
#: several processes (every process holds the whole student: DDP).
MULTI_PROCESS_TYPES = ("MULTI_GPU",)
#: The stages whose jobs ask for GPUs.
GPU_STAGES = ("rollouts", "teacher_rollouts", "distill", "eval_rollouts")


def distill_key_params(distill: Mapping[str, Any]) -> dict[str, Any]:
    """The ``distill`` block without :data:`LAUNCH_KEYS` (where the job runs) and without the
    settings :data:`caopd.key_neutral.KEY_NEUTRAL` finds neutral: what enters the distill key."""
    from caopd.key_neutral import key_params

    return key_params("distill", distill, leave_out=LAUNCH_KEYS)


def accelerate_path(value: str | Path, root: str | Path = ROOT) -> Path:
    """``distill.accelerate_config`` as a path: a relative one is relative to the checkout."""
    path = Path(value)
    return path if path.is_absolute() else Path(root) / path


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """An accelerate config file as a mapping.

    Raises:
        ValueError: the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not YAML: {err}") from None
    if not isinstance(body, Mapping):
        raise ValueError(f"{path} does not hold a mapping of accelerate settings")
    return dict(body)


def accelerate_problem(distill: Mapping[str, Any], root: str | Path = ROOT) -> str | None:
    """Why the distill block's accelerate config cannot run its processes, or None."""
    path = accelerate_path(distill["accelerate_config"], root)
    try:
        settings = read_accelerate_config(path)
    except ValueError as err:
        return str(err)
    kind = settings.get("distributed_type", "NO")
    if distill["processes"] > 1 and kind not in MULTI_PROCESS_TYPES:
        return (
            f"{path} has distributed_type {kind}; with distill.processes > 1 the distill loop runs "
            f"{' or '.join(MULTI_PROCESS_TYPES)} (data parallel), e.g. config/accelerate/ddp.yaml on "
            "GPUs or config/accelerate/cpu_ddp.yaml on CPU"
        )
    return None


def uses_gpus(distill: Mapping[str, Any], root: str | Path = ROOT) -> bool:
    """False when the distill block's accelerate config runs on CPU (``use_cpu: true``)."""
    settings = read_accelerate_config(accelerate_path(distill["accelerate_config"], root))
    return not settings.get("use_cpu", False)


def distill_threads(processes: int, per_process: int) -> int:
    """CPU threads of a distill job: ``per_process`` (``threads.distill``) for each process."""
    return per_process * processes


def process_threads(threads: int, processes: int) -> int:
    """Torch threads of each of ``processes`` processes sharing a job's ``threads`` (at least 1)."""
    return max(1, threads // processes)


def stage_launch(stage: str, cfg: Mapping[str, Any], root: str | Path = ROOT) -> dict[str, Any]:
    """What the job of ``stage`` asks for under the resolved variant config ``cfg``.

    Returns:
        ``{}`` for the one-thread CPU stages; ``{"threads": n}`` for base_model;
        ``{"gpus": n, "threads": n}`` for (teacher_)rollouts and eval_rollouts; for distill also
        ``processes``, ``accelerate_config``, ``sharding`` and ``gradient_checkpointing`` (0/1)
        (as configured).
    """
    threads = cfg["threads"]
    if stage == "base_model":
        return {"threads": threads["base_model"]}
    if stage in ("rollouts", "teacher_rollouts"):
        rollouts = cfg["rollouts"]
        gpus = rollouts["tensor_parallel_size"] if rollouts["engine"] == "vllm" else 1
        return {"gpus": gpus, "threads": threads["rollouts"]}
    if stage == "eval_rollouts":
        evaluation = cfg["evaluation"]
        gpus = evaluation["tensor_parallel_size"] if evaluation["engine"] == "vllm" else 1
        return {"gpus": gpus, "threads": threads["eval_rollouts"]}
    if stage == "distill":
        distill = cfg["distill"]
        processes = distill["processes"]
        return {
            "gpus": processes if uses_gpus(distill, root) else 0,
            "processes": processes,
            "threads": distill_threads(processes, threads["distill"]),
            "accelerate_config": distill["accelerate_config"],
            "sharding": distill["sharding"],
            "gradient_checkpointing": int(distill["gradient_checkpointing"]),
        }
    return {}
