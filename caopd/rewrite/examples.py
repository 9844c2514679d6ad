"""Example building: the training examples of one round, one prompt at a time
(:func:`prompt_examples`), gathered and checked against the targets by :func:`build_examples`
(the package docstring says what is rewritten)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caopd.rewrite.config import RewriteConfig
from caopd.rewrite.cut import _left_truncate, example_completion
from caopd.rollouts.prompting import chat_prompt_ids
from caopd.rollouts.teacher import teacher_chat, teacher_samples
from caopd.tasks.base import TaskExample

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from caopd.rollouts.engine import RolloutRecord


@dataclass(frozen=True)
class _Scored:
    correct: bool
    stated_confidence: float


def _index_targets(
    targets_per_prompt: pd.DataFrame, targets_per_rollout: pd.DataFrame
) -> tuple[dict[str, float], dict[tuple[str, int], _Scored]]:
    import pandas as pd

    p_acc_of: dict[str, float] = {}
    for prompt_id, value in zip(targets_per_prompt["prompt_id"], targets_per_prompt["p_acc"]):
        if prompt_id in p_acc_of:
            raise ValueError(
                f"targets: prompt_id {prompt_id!r} appears twice in the per-prompt targets"
            )
        p_acc_of[str(prompt_id)] = float(value)
    scored: dict[tuple[str, int], _Scored] = {}
    for prompt_id, sample_index, correct, stated in zip(
        targets_per_rollout["prompt_id"],
        targets_per_rollout["sample_index"],
        targets_per_rollout["correct"],
        targets_per_rollout["stated_confidence"],
    ):
        stated_value = math.nan if pd.isna(stated) else float(stated)
        scored[(str(prompt_id), int(sample_index))] = _Scored(bool(correct), stated_value)
    return p_acc_of, scored


def _group_rollouts(rollouts: Sequence[RolloutRecord]) -> dict[str, list[RolloutRecord]]:
    groups: dict[str, list[RolloutRecord]] = {}
    for record in sorted(rollouts, key=lambda r: (r.prompt_id, r.sample_index)):
        group = groups.setdefault(record.prompt_id, [])
        if group and group[-1].sample_index == record.sample_index:
            raise ValueError(
                f"duplicate rollout: prompt_id {record.prompt_id!r} sample {record.sample_index}"
            )
        group.append(record)
    return groups


#: the per-prompt counts of the summary (:func:`build_examples`), after ``n_prompts``
COUNTS = (
    "n_fallback",
    "n_skipped",
    "n_truncated_prompt",
    "n_truncated_teacher_prompt",
    "n_truncated_completion",
    "n_without_label",
)


def prompt_examples(
    example: TaskExample,
    group: Sequence[RolloutRecord],
    group_scores: Sequence[_Scored],
    p_acc: float,
    tokenizer: Any,
    config: RewriteConfig,
    teacher_prefixes: tuple[Mapping[str, list[RolloutRecord]], Mapping[tuple[str, int], _Scored]]
    | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The training examples of one prompt: one per rollout of ``group`` (scored by
    ``group_scores``), or per teacher sample with ``teacher_prefixes`` (the teacher-prefix
    rollouts grouped by prompt and their scores by ``(prompt_id, sample_index)``).

    Returns:
        ``(rows, counts)``: the rows of :func:`build_examples` for this prompt, in the order of
        ``group``, and its counts (``n_prompts`` 1, or 0 with every other count 0 but
        ``n_skipped`` when the teacher has no solution to show and ``fallback`` is ``skip``;
        :data:`COUNTS`).

    Raises:
        ValueError: a rollout whose ``prompt_token_ids`` differ from the student prompt rendered
            here, or a teacher sample not sampled from the teacher prompt built here.
    """
    prompt_id = example.id
    counts = dict.fromkeys(("n_prompts", *COUNTS), 0)
    student_prompt = chat_prompt_ids(tokenizer, example.messages)
    for record in group:
        sampled_prompt = [int(i) for i in record.prompt_token_ids]
        if sampled_prompt and sampled_prompt != student_prompt:
            raise ValueError(
                f"prompt_id {prompt_id!r} sample {record.sample_index}: the rollout's "
                f"prompt_token_ids ({len(sampled_prompt)} ids) differ from the student prompt "
                f"rendered by this tokenizer's chat template ({len(student_prompt)} ids); the "
                "rollouts were sampled with another tokenizer, template or data"
            )

    messages, how = teacher_chat(
        example, group, [score.correct for score in group_scores], mode=config.teacher_mode,
        fallback=config.fallback, p_acc=p_acc if config.calibration else None,
    )
    if how == "skipped":
        counts["n_skipped"] = 1
        return [], counts
    counts["n_fallback"] = int(how == "fallback")
    teacher_prompt = chat_prompt_ids(tokenizer, messages)
    if teacher_prefixes is not None:  # the teacher's samples are the completions (package docstring)
        group, group_scores = teacher_samples(prompt_id, *teacher_prefixes, teacher_prompt)

    student_prompt_kept, cut = _left_truncate(student_prompt, config.max_prompt_length)
    teacher_prompt_kept, teacher_cut = _left_truncate(teacher_prompt, config.max_teacher_prompt_length)
    counts["n_prompts"] = 1
    rows: list[dict[str, Any]] = []
    for record, score in zip(group, group_scores):
        sampled = [int(i) for i in record.completion_token_ids]
        completion, completion_cut, n_sampled, without_label = example_completion(
            tokenizer, sampled, p_acc, config
        )
        counts["n_without_label"] += without_label
        counts["n_truncated_prompt"] += cut
        counts["n_truncated_teacher_prompt"] += teacher_cut
        counts["n_truncated_completion"] += completion_cut
        rows.append(
            {
                "prompt_id": prompt_id,
                "sample_index": int(record.sample_index),
                "student_input_ids": student_prompt_kept + completion,
                "student_prompt_len": len(student_prompt_kept),
                "teacher_input_ids": teacher_prompt_kept + completion,
                "teacher_prompt_len": len(teacher_prompt_kept),
                "completion_len": len(completion),
                "p_acc": p_acc,
                "stated_confidence": score.stated_confidence,
                "correct": score.correct,
                "rewritten": config.calibration,
                "sampled_len": n_sampled,  # written only on request (write_examples)
            }
        )
    return rows, counts


def build_examples(
    examples: Sequence[TaskExample],
    rollouts: Sequence[RolloutRecord],
    targets_per_prompt: pd.DataFrame,
    targets_per_rollout: pd.DataFrame,
    tokenizer: Any,
    cfg: Mapping[str, Any] | RewriteConfig,
    prefixes: Sequence[RolloutRecord] | None = None,
    prefix_scores: pd.DataFrame | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The training examples of one round, one per rollout (module docstring).

    Args:
        examples: the split the rollouts were sampled from.
        rollouts: the round's rollouts.
        targets_per_prompt, targets_per_rollout: the frames of
            :func:`caopd.targets.compute_targets` for these rollouts (P_acc per prompt;
            ``correct`` and ``stated_confidence`` per rollout).
        tokenizer: the student's tokenizer (chat template, EOS).
        cfg: the ``rewrite`` config subtree or a :class:`RewriteConfig`.
        prefixes: ``rollouts.prefix_source: teacher``: the teacher's samples of the round
            (:mod:`caopd.rollouts.teacher`); the examples are built on them, one per teacher
            sample, instead of on ``rollouts``, whose targets still give P_acc (the student's
            success rate) and the correct_solution teacher's solution. Each sample's
            ``prompt_token_ids`` must be the teacher prompt built here.
        prefix_scores: with ``prefixes``: their per-rollout frame of
            :func:`caopd.targets.compute_targets` (``correct``, ``stated_confidence`` of the
            teacher samples, recorded in their examples).

    Returns:
        ``(rows, summary)``. ``rows`` sorted by ``(prompt_id, sample_index)``, each with
        ``student_input_ids`` (student prompt + completion), ``student_prompt_len``,
        ``teacher_input_ids`` (teacher prompt + the SAME completion ids),
        ``teacher_prompt_len``, ``completion_len``, ``p_acc`` (always recorded, also in SDFT),
        ``stated_confidence`` (NaN if none), ``correct``, ``rewritten`` (= calibration),
        ``sampled_len`` (the completion's leading ids the student sampled: all in SDFT, the kept
        prefix in CaOPD).
        The student prompt is ``example.messages`` with the generation prompt; the teacher
        prompt is :func:`caopd.tasks.prompts.teacher_messages` (``p_acc=None`` in SDFT); both
        go through :func:`caopd.rollouts.prompting.chat_prompt_ids`. In ``correct_solution`` mode the solution is the rollout
        of the prompt with the lowest sample index among those the verifier accepted (and whose
        text before the label is not empty), cut as in :func:`caopd.completion.solution_text`.

        ``summary``: ``n_examples``, ``n_prompts`` (with examples), ``n_fallback`` and
        ``n_skipped`` (prompts without a correct rollout in ``correct_solution`` mode),
        ``n_truncated_prompt``, ``n_truncated_teacher_prompt``, ``n_truncated_completion``
        (examples cut to their limit; a CaOPD completion by shortening its kept prefix, so its
        suffix and EOS survive), ``n_without_label`` (CaOPD completions that had no
        confidence label and got the suffix appended), ``mean_completion_len`` (None with no
        examples), ``calibration``, ``teacher_mode``, ``fallback``.

    Raises:
        ValueError: a rollout whose prompt_id has no example or no target, a rollout missing
            from ``targets_per_rollout``, a rollout whose ``prompt_token_ids`` differ from the
            student prompt rendered here (each named), duplicates, or a bad config.
    """
    config = cfg if isinstance(cfg, RewriteConfig) else RewriteConfig.from_mapping(cfg)
    if (prefixes is None) != (prefix_scores is None):
        raise ValueError("build_examples: prefixes and prefix_scores go together (teacher prefixes)")
    by_id: dict[str, TaskExample] = {}
    for example in examples:
        if example.id in by_id:
            raise ValueError(f"duplicate example id {example.id!r} in the prepared split")
        by_id[example.id] = example
    p_acc_of, scored = _index_targets(targets_per_prompt, targets_per_rollout)
    groups = _group_rollouts(rollouts)
    teacher_prefixes = None
    if prefixes is not None:
        teacher_prefixes = (_group_rollouts(prefixes), _index_targets(targets_per_prompt, prefix_scores)[1])
        unknown = sorted(set(teacher_prefixes[0]) - set(groups))
        if unknown:
            raise ValueError(f"teacher-prefix rollouts of prompt_id {unknown[0]!r} have no student rollouts")

    rows: list[dict[str, Any]] = []
    counts = dict.fromkeys(("n_prompts", *COUNTS), 0)
    for prompt_id, group in groups.items():
        example = by_id.get(prompt_id)
        if example is None:
            raise ValueError(
                f"rollouts of prompt_id {prompt_id!r} have no example in the split: the rollouts "
                "were sampled from another data artifact"
            )
        if prompt_id not in p_acc_of:
            raise ValueError(f"prompt_id {prompt_id!r} has rollouts but no P_acc in the targets")
        group_scores = []
        for record in group:
            score = scored.get((prompt_id, record.sample_index))
            if score is None:
                raise ValueError(
                    f"rollout prompt_id {prompt_id!r} sample {record.sample_index} is not in the "
                    "scored rollouts of the targets artifact"
                )
            group_scores.append(score)
        prompt_rows, prompt_counts = prompt_examples(
            example, group, group_scores, p_acc_of[prompt_id], tokenizer, config, teacher_prefixes
        )
        rows.extend(prompt_rows)
        for name, value in prompt_counts.items():
            counts[name] += value

    summary: dict[str, Any] = {
        "n_examples": len(rows),
        **counts,
        "mean_completion_len": (
            sum(row["completion_len"] for row in rows) / len(rows) if rows else None
        ),
        "calibration": config.calibration,
        "teacher_mode": config.teacher_mode,
        "fallback": config.fallback,
    }
    if prefixes is not None:
        summary["prefix_source"] = "teacher"
        summary["share_prefixes_correct"] = (
            sum(row["correct"] for row in rows) / len(rows) if rows else None
        )
    return rows, summary
