"""The task interface: what every task (arith, science, tooluse) provides.

A task turns raw data into :class:`TaskExample` rows and owns the one verifier used everywhere
(targets, evaluation, the ``caopd evaluate`` command line).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol


class TaskDataError(ValueError):
    """A raw row cannot be turned into an example (names the file and row)."""


@dataclass(frozen=True)
class TaskExample:
    """One prepared row.

    Attributes:
        id: unique within its split (``"<task>-<split>-<index>"`` or the source's id).
        messages: the student's chat prompt, ``[{"role": "system"|"user", "content": str}, ...]``;
            the last user turn carries the confidence instruction.
        question: the text the teacher template starts from: the content of the last user turn.
        demonstration: the teacher's worked demonstration, with no confidence line (the teacher
            template appends ``Confidence: x``); ``""`` where the split has none (eval rows).
        ground_truth: canonical string the verifier compares against (``"B"``; for tooluse the
            JSON list of ``{"Action", "Action_Input"}``).
        level: difficulty level where the task has one (arith), else ``None``.
    """

    id: str
    messages: list[dict[str, str]]
    question: str
    demonstration: str
    ground_truth: str
    level: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "TaskExample":
        return cls(**row)


class Task(Protocol):
    """What a task module registers in :data:`caopd.tasks.TASKS`."""

    name: ClassVar[str]
    version: ClassVar[str]

    def verify(self, completion: str, ground_truth: str) -> bool:
        """True when ``completion`` answers correctly; the one verifier of this task."""

    def extract_answer(self, completion: str) -> str | None:
        """The answer the completion gives, normalised, or ``None`` if none can be parsed."""

    def ground_truth(self, value: Any) -> str:
        """``value`` (a string or the JSON structure a file holds) as the canonical ground
        truth :meth:`verify` takes; ValueError naming it when it is no valid answer here."""
