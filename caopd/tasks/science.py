"""``science``: SciKnowEval chemistry 4-option multiple choice in the reference format.

Raw data are ``datasets.load_from_disk`` directories in one of two formats, told apart by their
columns:

- eval format: ``prompt`` (chat turns: system + user) and ``answer`` (a letter A-D);
- training format: ``messages`` (the prompt turns, possibly followed by the assistant's answer)
  and ``output_text`` (the demonstration). There is no answer column: the ground truth is the
  letter in the LAST ``<answer>`` tag of ``output_text`` (the shared verifier's parse), and a row
  without one is refused (the reference silently trained every such row with P_acc = 0).

Per row: the student messages are the turns up to and including the last user turn (a trailing
assistant turn is dropped), with the confidence instruction appended to that user turn;
``question`` is that turn's content; ``demonstration`` is ``output_text`` cut before any
confidence line (``""`` for eval rows). Ids are ``science-{split}-{row:06d}`` with the row index
in the source file; ``meta`` names the source path and row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from caopd.tasks.base import TaskExample, TaskDataError
from caopd.tasks.mcq import LETTERS, canonical_letter, extract_letter, verify_letter
from caopd.tasks.prompts import strip_confidence, with_confidence_instruction
from caopd.tasks.splits import assemble_splits, open_dataset

EVAL_COLUMNS = frozenset({"prompt", "answer"})
TRAIN_COLUMNS = frozenset({"messages", "output_text"})


def _student_messages(turns: Any, where: str) -> list[dict[str, str]]:
    """The prompt turns up to the last user turn, that turn carrying the confidence instruction."""
    if isinstance(turns, str):
        turns = [{"role": "user", "content": turns}]
    if not isinstance(turns, list):
        raise TaskDataError(
            f"{where}: the prompt must be a list of chat turns, got {type(turns).__name__}"
        )
    messages: list[dict[str, str]] = []
    for turn in turns:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str) or not isinstance(
            turn.get("content"), str
        ):
            raise TaskDataError(f"{where}: a chat turn without string role and content: {turn!r}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    user_indices = [i for i, turn in enumerate(messages) if turn["role"] == "user"]
    if not user_indices:
        raise TaskDataError(f"{where}: the prompt has no user turn")
    messages = messages[: user_indices[-1] + 1]
    messages[-1]["content"] = with_confidence_instruction(messages[-1]["content"])
    return messages


def row_to_example(row: Mapping[str, Any], *, index: int, path: str, split: str) -> TaskExample:
    """One science row (either format) as an :class:`TaskExample`; TaskDataError names path and row."""
    where = f"{path} row {index}"
    columns = set(row)
    if EVAL_COLUMNS <= columns:
        messages = _student_messages(row["prompt"], where)
        answer = row["answer"]
        if not isinstance(answer, str) or answer.strip().upper() not in LETTERS:
            raise TaskDataError(f"{where}: answer must be one of A-D, got {answer!r}")
        ground_truth = answer.strip().upper()
        demonstration = ""
    elif TRAIN_COLUMNS <= columns:
        messages = _student_messages(row["messages"], where)
        output_text = row["output_text"]
        if not isinstance(output_text, str):
            raise TaskDataError(f"{where}: output_text is not a string: {output_text!r}")
        letter = extract_letter(output_text)
        if letter is None:
            raise TaskDataError(
                f"{where}: output_text has no usable <answer>A-D</answer> tag, so the row has no "
                f"ground truth; output_text ends {output_text[-200:]!r}"
            )
        ground_truth = letter
        demonstration = strip_confidence(output_text)
    else:
        raise TaskDataError(
            f"{path}: unknown science format, columns {sorted(columns)}; expected "
            f"{sorted(EVAL_COLUMNS)} (eval) or {sorted(TRAIN_COLUMNS)} (training)"
        )
    return TaskExample(
        id=f"science-{split}-{index:06d}",
        messages=messages,
        question=messages[-1]["content"],
        demonstration=demonstration,
        ground_truth=ground_truth,
        level=None,
        meta={"source": path, "row": index},
    )


def load_split(path: str, split: str) -> list[TaskExample]:
    """Every row of the dataset at ``path`` as examples (``load_from_disk`` dir, else hub id)."""
    dataset = open_dataset(path, split)
    columns = set(dataset.column_names)
    if not (EVAL_COLUMNS <= columns or TRAIN_COLUMNS <= columns):
        raise TaskDataError(
            f"{path}: unknown science format, columns {sorted(columns)}; expected "
            f"{sorted(EVAL_COLUMNS)} (eval) or {sorted(TRAIN_COLUMNS)} (training)"
        )
    return [
        row_to_example(row, index=i, path=path, split=split) for i, row in enumerate(dataset)
    ]


class ScienceTask:
    """The ``science`` task: reference-format SciKnowEval chemistry MCQ, shared MCQ verifier."""

    name: ClassVar[str] = "science"
    version: ClassVar[str] = "1"

    def verify(self, completion: str, ground_truth: str) -> bool:
        """True when the last ``<answer>`` letter of ``completion`` is ``ground_truth``."""
        return verify_letter(completion, ground_truth)

    def extract_answer(self, completion: str) -> str | None:
        """The last ``<answer>`` letter (A-D) of ``completion``, or ``None``."""
        return extract_letter(completion)

    def ground_truth(self, value: Any) -> str:
        """The canonical ground truth of ``value`` (``"B"``, ``{"Answer": "B"}``,
        ``[{"Answer": "B"}]``): its letter; ValueError naming any other value."""
        return canonical_letter(value)

    def load_splits(self, options: Mapping[str, Any], seed: int) -> dict[str, list[TaskExample]]:
        """Splits from ``options["paths"]``, capped by ``options["sizes"]``.

        See :func:`caopd.tasks.splits.assemble_splits` (val carved from train when it has no
        path; train/val caps are seeded subsets, the eval cap keeps the first rows).
        """
        return assemble_splits(load_split, options, seed)
