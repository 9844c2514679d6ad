"""The ``rewrite`` stage's config (defaults live in ``workflow/schemas/config.schema.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True)
class RewriteConfig:
    """The ``rewrite`` config subtree (defaults live in the workflow's config schema).

    Attributes:
        calibration: True = CaOPD (P_acc rewrites); False = plain SDFT.
        teacher_mode: ``"demo"`` shows the dataset demonstration; ``"correct_solution"`` shows
            one of the prompt's own verified rollouts (paper App. C.3).
        fallback: what ``correct_solution`` does for a prompt without a correct rollout:
            ``"demo"`` shows the dataset demonstration in the same template, ``"skip"`` drops
            the prompt's examples.
        max_prompt_length: student prompt tokens kept (the last ones).
        max_teacher_prompt_length: teacher prompt tokens kept (the last ones).
        max_completion_length: completion tokens kept (the first ones).
    """

    calibration: bool
    teacher_mode: Literal["demo", "correct_solution"]
    fallback: Literal["demo", "skip"]
    max_prompt_length: int
    max_teacher_prompt_length: int
    max_completion_length: int

    def __post_init__(self) -> None:
        if not isinstance(self.calibration, bool):
            raise ValueError(
                "rewrite.calibration must be true (CaOPD) or false (SDFT), "
                f"got {self.calibration!r}"
            )
        if self.teacher_mode not in ("demo", "correct_solution"):
            raise ValueError(
                "rewrite.teacher_mode must be 'demo' or 'correct_solution', "
                f"got {self.teacher_mode!r}"
            )
        if self.fallback not in ("demo", "skip"):
            raise ValueError(f"rewrite.fallback must be 'demo' or 'skip', got {self.fallback!r}")
        for name in ("max_prompt_length", "max_teacher_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rewrite.{name} must be an integer >= 1 (tokens), got {value!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> RewriteConfig:
        """The config from the resolved ``rewrite`` subtree; every key required, none unknown."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in cfg]
        unknown = sorted(set(cfg) - set(names))
        if missing or unknown:
            raise ValueError(
                f"rewrite config: missing keys {missing}, unknown keys {unknown}; expected {names} "
                "(resolve the config through caopd.config first)"
            )
        return cls(**{name: cfg[name] for name in names})
