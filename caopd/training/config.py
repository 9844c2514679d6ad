"""The distill stage's typed config (:class:`DistillConfig`, the ``distill`` subtree) and the
round check of its params; no defaults here: the workflow's config schema is their one source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caopd.training.divergence import DivergenceSpec

#: ``distill.schedule`` values: examples built by the round stages, or sampled inside the job.
SCHEDULES = ("rounds", "online")
#: ``distill.batching`` values: micro-batches of shuffled examples, each encoded whole
#: (:func:`~caopd.training.data.collate`), or of whole prompt groups whose prompts are encoded
#: once per group (:mod:`caopd.training.prefix`).
BATCHINGS = ("examples", "prompt_groups")


@dataclass(frozen=True)
class DistillConfig:
    """The ``distill`` config subtree (defaults live in the workflow's config schema)."""

    rounds: int
    schedule: str
    refresh_every: int
    window_mix: bool
    divergence: str
    jsd_beta: float
    teacher: str
    ema_weight: float
    skip_first_tokens: int
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    max_grad_norm: float
    chunk_size: int
    checkpoint_every: int
    batching: str = "examples"
    kl_mix_lambda: float | None = None
    # issue 18: absent from the params at these values (caopd.key_neutral.KEY_NEUTRAL)
    estimator: str = "full_vocab"
    vopd_top_k: int = 0
    length_curriculum: Mapping[str, Any] | None = None
    # issue 15: job resources added to the params (caopd.training.layout.with_runtime), not the key
    sharding: str = "none"
    gradient_checkpointing: bool = False

    @property
    def divergence_spec(self) -> DivergenceSpec:
        """The loss's divergence: ``divergence`` with ``kl_mix_lambda`` as its parameter for
        kl_mix, else ``jsd_beta``; built at load too, so a bad pair fails there (a property, not a
        field, so ``vars(cfg)`` stays the params: the run's logged config)."""
        from caopd.training.divergence import DivergenceSpec

        beta = self.kl_mix_lambda if self.divergence == "kl_mix" else self.jsd_beta
        return DivergenceSpec(self.divergence, beta)

    def __post_init__(self) -> None:
        self.divergence_spec  # noqa: B018 -- built here so a bad divergence fails at load
        if self.schedule not in SCHEDULES:
            raise ValueError(f"distill.schedule={self.schedule!r} must be one of {SCHEDULES}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"distill.batching={self.batching!r} must be one of {BATCHINGS}")
        from caopd.training.layout import SHARDINGS  # issue 15

        if self.sharding not in SHARDINGS:
            raise ValueError(f"distill.sharding={self.sharding!r} must be one of {SHARDINGS}")
        if self.teacher not in ("ema", "frozen"):
            raise ValueError(f"distill.teacher={self.teacher!r} must be 'ema' or 'frozen'")
        if not 0.0 < self.ema_weight <= 1.0:
            raise ValueError(f"distill.ema_weight={self.ema_weight} must lie in (0, 1]")
        if not 0.0 < self.lr:
            raise ValueError(f"distill.lr={self.lr} must be positive")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"distill.warmup_ratio={self.warmup_ratio} must lie in [0, 1]")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError("distill.weight_decay must be >= 0 and distill.max_grad_norm > 0")
        for name in ("epochs", "batch_size", "grad_accum", "chunk_size", "checkpoint_every",
                     "refresh_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name}={getattr(self, name)} must be >= 1")
        from caopd.training.estimators import check_estimator  # issue 18

        check_estimator(self.estimator, self.vopd_top_k, self.divergence)
        if self.skip_first_tokens < 0:
            raise ValueError(f"distill.skip_first_tokens={self.skip_first_tokens} must be >= 0")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DistillConfig:
        names = [f.name for f in fields(cls)]
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = [n for n in names if n not in params and n not in optional]
        unknown = sorted(set(params) - set(names))
        if missing or unknown:
            raise ValueError(f"distill params: missing keys {missing}, unknown keys {unknown}")
        return cls(**{n: params[n] for n in names if n in params})


def check_round(params: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(round, schedule)`` from the stage params, checked against each other."""
    r, schedule = params["round"], params["schedule"]
    per_round = schedule["examples_per_round"]
    if len(per_round) != schedule["rounds"] or not 1 <= r <= schedule["rounds"]:
        raise ValueError(
            f"round {r} of schedule {schedule}: needs 1 <= round <= rounds and one "
            "examples_per_round entry per round"
        )
    if params["distill"]["rounds"] != schedule["rounds"]:
        raise ValueError(
            f"distill.rounds={params['distill']['rounds']} but the schedule has "
            f"{schedule['rounds']} rounds"
        )
    return r, dict(schedule)
