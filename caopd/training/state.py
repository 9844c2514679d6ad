"""What the distill stage saves and loads: models, optimizer/scheduler/RNG state, checkpoints.

One layout serves both the stage's output and a resume checkpoint::

    <dir>/student/   save_pretrained (fp32 safetensors)   [+ tokenizer files in the output]
    <dir>/teacher/   the EMA teacher (its fp32 shadow) as a model
    <dir>/state/     optimizer.pt, scheduler.pt, rng.pt, trainer_state.json
                     [+ curves.json in a checkpoint: the curve rows so far]

The next round loads ``student/``, ``teacher/`` and ``state/`` of the previous round's artifact.
A killed job resumes from its work directory (``results/.work/distill/<key>/``), which holds
``step-NNNNNNNN/`` checkpoints in that layout. Each is written to a temporary directory and
renamed into place (:func:`write_checkpoint`), so a job killed while saving leaves the previous
checkpoint intact; the newest complete one is resumed (:func:`latest_checkpoint`).

``optimizer.pt``, ``scheduler.pt`` and ``rng.pt`` hold tensors and plain Python values only
and are loaded with ``torch.load(weights_only=True)``: nothing beyond tensors is unpickled (the
NumPy generator state is stored as a tensor of its keys, :func:`capture_rng`). A checkpoint is
sealed (``checksums.json``, :func:`caopd.store.seal`) before it is renamed into place and
verified (:func:`caopd.store.verify_sealed`) before anything is loaded from it, so a checkpoint
with flipped bits is refused, naming the file, instead of resuming into other bytes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caopd.artifacts import MANIFEST, SPEC
from caopd.store import ArtifactError, read_json, seal, verify_sealed, write_json

STUDENT = "student"
TEACHER = "teacher"
TRAINER_STATE = "trainer_state.json"
CURVES_JSON = "curves.json"
CHECKPOINT_PREFIX = "step-"

#: Files of a model directory that are not the tokenizer's (not copied by :func:`copy_tokenizer`).
MODEL_FILES = frozenset({"config.json", "generation_config.json", SPEC, MANIFEST})
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")


@dataclass(frozen=True)
class TrainerState:
    """Counters of a distill run (``trainer_state.json``).

    Attributes:
        global_step: optimizer steps taken over all rounds so far.
        rounds_done: rounds completed (in a mid-round checkpoint: rounds before this one).
        round: the round this state was written in.
        step_in_round: optimizer steps of ``round`` taken (the data cursor).
        steps_in_round: optimizer steps ``round`` has in all.
        total_steps: length of the LR schedule over all rounds.
        world_size: processes that wrote it (provenance; resuming on another count is allowed).
        run: identity of the run (params, seed, examples hash) a checkpoint may be resumed by.
    """

    global_step: int
    rounds_done: int
    round: int
    step_in_round: int
    steps_in_round: int
    total_steps: int
    world_size: int
    run: dict[str, Any]


def load_causal_lm(directory: str | Path):
    """``AutoModelForCausalLM.from_pretrained(directory, dtype=float32)``: fp32 master weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(Path(directory), dtype=torch.float32)


def copy_tokenizer(source: str | Path, target: str | Path) -> list[str]:
    """Copy the tokenizer files of model directory ``source`` into ``target`` byte for byte.

    Every regular file except weights, ``config.json`` / ``generation_config.json`` and artifact
    bookkeeping is copied (no reload/re-save, which can change a tokenizer, see
    ``tests/conftest.py``). Returns the copied file names.
    """
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in MODEL_FILES or path.name.startswith("."):
            continue
        if path.name.endswith(MODEL_SUFFIXES):
            continue
        shutil.copyfile(path, target / path.name)
        copied.append(path.name)
    return copied


def capture_rng() -> dict[str, Any]:
    """The Python, NumPy, torch CPU (and CUDA) generator states, as tensors and plain values
    (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only where CUDA is available)."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    directory: str | Path, optimizer, scheduler, trainer_state: TrainerState
) -> None:
    """Write ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``trainer_state.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save(capture_rng(), directory / "rng.pt")
    write_json(directory / TRAINER_STATE, asdict(trainer_state))


def read_trainer_state(directory: str | Path) -> TrainerState:
    return TrainerState(**read_json(Path(directory) / TRAINER_STATE))


def load_training_state(
    directory: str | Path, optimizer, scheduler, *, rng: bool = True
) -> TrainerState:
    """Load optimizer and scheduler state (in place) and, if ``rng``, the RNG states.

    Call before ``accelerator.prepare``, on freshly built objects whose parameter groups were
    built in the same order as the saved ones.
    """
    directory = Path(directory)
    optimizer.load_state_dict(
        torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    scheduler.load_state_dict(
        torch.load(directory / "scheduler.pt", map_location="cpu", weights_only=True)
    )
    if rng:
        restore_rng(torch.load(directory / "rng.pt", map_location="cpu", weights_only=True))
    return read_trainer_state(directory)


def write_checkpoint(work_dir: str | Path, step: int, write: Callable[[Path], None]) -> Path:
    """Write a checkpoint atomically: ``write(tmp)`` then rename to ``step-NNNNNNNN``.

    Older checkpoints are removed after the rename. Returns the checkpoint directory.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    final = work_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = work_dir / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    seal(tmp)  # checksums.json, verified before a resume reads it
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in work_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(work_dir: str | Path | None) -> Path | None:
    """The newest ``step-*`` checkpoint in ``work_dir``, verified against its ``checksums.json``
    (None if there is none).

    Raises:
        caopd.store.ArtifactError: the checkpoint is not sealed or a file changed after it was
            written (names the file; delete ``work_dir`` to start afresh).
    """
    if work_dir is None or not Path(work_dir).is_dir():
        return None
    done = [p for p in Path(work_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    newest = max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)
    if newest is not None:
        try:
            verify_sealed(newest)
        except ArtifactError as err:
            raise ArtifactError(f"{err}; delete {work_dir} to start afresh") from None
    return newest


def write_curves_json(directory: str | Path, rows: list[dict[str, Any]]) -> None:
    Path(directory, CURVES_JSON).write_text(json.dumps(rows, allow_nan=True) + "\n")


def read_curves_json(directory: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(directory, CURVES_JSON).read_text())
