"""Stage rewrite(r): the round's training examples as token ids (DESIGN §1 step 3).

One training example per rollout. With ``calibration: true`` (CaOPD) the confidence is replaced
in three places:

- the student's completion: its LAST confidence label (the one the parser reads) and what
  follows are replaced by ``Confidence: {P_acc:.2f}`` plus EOS (:mod:`caopd.completion`);
  everything before that label is kept, an earlier mention of confidence included (the
  reference cut at the first match and so deleted the work and the answer). The kept prefix is
  the sampled ids themselves, never decoded and re-encoded (the reference's token drift,
  DESIGN §2);
- the teacher's demonstration (or verified solution): its ``Confidence: 1.00`` becomes
  ``Confidence: {P_acc:.2f}``;
- the note before the teacher's closing instruction
  (:func:`caopd.tasks.prompts.teacher_messages` builds both teacher replacements).

With ``calibration: false`` (plain SDFT) the completion is the sampled ids untouched, EOS
included, and the teacher shows ``Confidence: 1.00`` with no note.

The completions are the student's rollouts (``rollouts.prefix_source: student``) or, with
``prefix_source: teacher``, the teacher's samples from its own prompt (the ``prefixes`` input,
:mod:`caopd.rollouts.teacher`): one example per teacher sample, rewritten the same way, while
P_acc still comes from the student's rollouts (their targets).

The teacher sees the student's completion after its own (privileged) prompt: the SAME completion
ids follow both prompts. Prompts are truncated from the left to their own limits
(``max_prompt_length`` for the student, ``max_teacher_prompt_length`` for the teacher: the
reference cut the teacher's prompt to the student's limit, DESIGN §2); completions to
``max_completion_length``: an SDFT completion from the right, a CaOPD completion by shortening
its kept prefix, so that the ``Confidence:`` suffix and EOS always survive.

Output directory of :func:`run_rewrite`: ``examples.parquet`` (:data:`EXAMPLE_COLUMNS`, sorted by
``(prompt_id, sample_index)``, byte-deterministic) and ``preview.jsonl`` (the first
:data:`PREVIEW_ROWS` examples decoded, for reading).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from caopd.artifacts import (
    CURRICULUM_FILE,
    EXAMPLE_COLUMNS,
    EXAMPLES_FILE,
    PREVIEW_FILE,
    ROLLOUTS_FILE,
    SAMPLED_LEN,
)
from caopd.completion import (  # noqa: F401 - re-exported: the rewrite's public functions
    _decode,  # the rollouts' text decoding, for the label count
    confidence_suffix_ids,
    cut_completion_ids,
    rewrite_completion,
    rewrite_completion_ids,
    rewrite_completion_kept,
    solution_text,
)
from caopd.confidence import find_confidence_span
from caopd.rollouts.prompting import chat_prompt_ids
from caopd.rollouts.teacher import teacher_chat, teacher_samples
from caopd.tasks.base import TaskExample

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import pyarrow as pa

    from caopd.rollouts.engine import RolloutRecord

PREVIEW_ROWS = 20

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


# --- prompts -----------------------------------------------------------------------------------


def _left_truncate(ids: list[int], limit: int) -> tuple[list[int], bool]:
    return (ids[-limit:], True) if len(ids) > limit else (ids, False)


def _right_truncate(ids: list[int], limit: int) -> tuple[list[int], bool]:
    return (ids[:limit], True) if len(ids) > limit else (ids, False)


# --- examples ----------------------------------------------------------------------------------


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
        text before the label is not empty), cut as in :func:`solution_text`.

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
    if prefixes is not None:
        prefix_groups = _group_rollouts(prefixes)
        prefix_scored = _index_targets(targets_per_prompt, prefix_scores)[1]
        unknown = sorted(set(prefix_groups) - set(groups))
        if unknown:
            raise ValueError(f"teacher-prefix rollouts of prompt_id {unknown[0]!r} have no student rollouts")

    rows: list[dict[str, Any]] = []
    counts = dict.fromkeys(
        (
            "n_fallback",
            "n_skipped",
            "n_truncated_prompt",
            "n_truncated_teacher_prompt",
            "n_truncated_completion",
            "n_without_label",
        ),
        0,
    )
    n_prompts = 0
    for prompt_id, group in groups.items():
        example = by_id.get(prompt_id)
        if example is None:
            raise ValueError(
                f"rollouts of prompt_id {prompt_id!r} have no example in the split: the rollouts "
                "were sampled from another data artifact"
            )
        if prompt_id not in p_acc_of:
            raise ValueError(f"prompt_id {prompt_id!r} has rollouts but no P_acc in the targets")
        p_acc = p_acc_of[prompt_id]
        group_scores = []
        for record in group:
            score = scored.get((prompt_id, record.sample_index))
            if score is None:
                raise ValueError(
                    f"rollout prompt_id {prompt_id!r} sample {record.sample_index} is not in the "
                    "scored rollouts of the targets artifact"
                )
            group_scores.append(score)

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
            counts["n_skipped"] += 1
            continue
        counts["n_fallback"] += how == "fallback"
        teacher_prompt = chat_prompt_ids(tokenizer, messages)
        if prefixes is not None:  # the teacher's samples are the completions (module docstring)
            group, group_scores = teacher_samples(prompt_id, prefix_groups, prefix_scored, teacher_prompt)

        student_prompt_kept, cut = _left_truncate(student_prompt, config.max_prompt_length)
        teacher_prompt_kept, teacher_cut = _left_truncate(
            teacher_prompt, config.max_teacher_prompt_length
        )
        n_prompts += 1
        for record, score in zip(group, group_scores):
            sampled = [int(i) for i in record.completion_token_ids]
            if config.calibration:
                if find_confidence_span(_decode(tokenizer, sampled)) is None:
                    counts["n_without_label"] += 1
                completion, completion_cut, n_sampled = rewrite_completion_kept(
                    tokenizer, sampled, p_acc, config.max_completion_length
                )
            else:
                completion, completion_cut = _right_truncate(sampled, config.max_completion_length)
                n_sampled = len(completion)
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

    summary: dict[str, Any] = {
        "n_examples": len(rows),
        "n_prompts": n_prompts,
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


# --- files -------------------------------------------------------------------------------------


def _examples_schema(sampled_len: bool = False) -> pa.Schema:
    import pyarrow as pa

    optional = [pa.field(SAMPLED_LEN, pa.int32(), nullable=False)] if sampled_len else []
    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("student_input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("student_prompt_len", pa.int32(), nullable=False),
            pa.field("teacher_input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("teacher_prompt_len", pa.int32(), nullable=False),
            pa.field("completion_len", pa.int32(), nullable=False),
            pa.field("p_acc", pa.float64(), nullable=False),
            pa.field("stated_confidence", pa.float64()),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("rewritten", pa.bool_(), nullable=False),
            *optional,
        ]
    )


def write_examples(rows: Sequence[Mapping[str, Any]], path: str | Path, *, sampled_len: bool = False) -> Path:
    """Write ``rows`` (from :func:`build_examples`) as Parquet, sorted by
    ``(prompt_id, sample_index)``; NaN ``stated_confidence`` is stored as null. ``sampled_len``:
    add that column (:data:`caopd.artifacts.SAMPLED_LEN`; the sampled-token estimators read it),
    else the file holds :data:`EXAMPLE_COLUMNS` only."""
    from caopd.parquet import table_from_columns, write_table

    ordered = sorted(rows, key=lambda row: (row["prompt_id"], row["sample_index"]))
    names = (*EXAMPLE_COLUMNS, SAMPLED_LEN) if sampled_len else EXAMPLE_COLUMNS
    columns = {name: [row[name] for row in ordered] for name in names}
    columns["stated_confidence"] = [
        None if value != value else value for value in columns["stated_confidence"]
    ]
    return write_table(table_from_columns(columns, _examples_schema(sampled_len)), path)


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an ``examples.parquet`` (ids as ``list[int]``; null confidence as NaN)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row["stated_confidence"] is None:
            row["stated_confidence"] = math.nan
    return rows


def preview_rows(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, n: int = PREVIEW_ROWS
) -> list[dict[str, Any]]:
    """The first ``n`` rows decoded for reading (special tokens shown)."""
    out = []
    for row in rows[:n]:
        student, teacher = row["student_input_ids"], row["teacher_input_ids"]
        s_len, t_len = row["student_prompt_len"], row["teacher_prompt_len"]
        out.append(
            {
                "prompt_id": row["prompt_id"],
                "sample_index": row["sample_index"],
                "p_acc": row["p_acc"],
                "correct": row["correct"],
                "rewritten": row["rewritten"],
                "student_prompt": tokenizer.decode(student[:s_len], skip_special_tokens=False),
                "completion": tokenizer.decode(student[s_len:], skip_special_tokens=False),
                "teacher_prompt": tokenizer.decode(teacher[:t_len], skip_special_tokens=False),
            }
        )
    return out


def run_rewrite(
    data_dir: str | Path,
    rollouts_dir: str | Path,
    targets_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    cfg: Mapping[str, Any],
    prefixes_dir: str | Path | None = None,
    task: str | None = None,
    *,
    sampled_len: bool = False,
) -> dict[str, Any]:
    """The rewrite stage: build the round's examples and write them to ``out_dir``.

    Reads the train split of ``data_dir``, ``rollouts_dir/rollouts.parquet``, the frames of
    :func:`caopd.targets.run_targets` in ``targets_dir`` and the tokenizer at ``tokenizer_dir``
    (``AutoTokenizer.from_pretrained``); writes ``examples.parquet`` (with the ``sampled_len``
    column when ``sampled_len``) and ``preview.jsonl``; returns the summary of
    :func:`build_examples`. With ``prefixes_dir`` (a teacher_rollouts artifact) the examples are
    built on its samples, verified here with ``task``'s verifier. Rollouts sampled under
    ``distill.length_curriculum`` carry its record (:data:`~caopd.artifacts.CURRICULUM_FILE`):
    the completion cap is then lowered with their budget
    (:func:`caopd.training.curriculum.budgets`; summary key ``curriculum_max_completion_length``).
    """
    from transformers import AutoTokenizer

    from caopd.data import read_split
    from caopd.rollouts.files import read_rollouts
    from caopd.targets import read_targets

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    examples = read_split(data_dir, "train")
    rollouts = read_rollouts(Path(rollouts_dir) / ROLLOUTS_FILE)
    per_rollout, per_prompt = read_targets(targets_dir)
    cap = {}
    if (Path(rollouts_dir) / CURRICULUM_FILE).is_file():  # issue 18: the length curriculum's rung
        from caopd.training.curriculum import budgets, read_record

        record = read_record(rollouts_dir)
        cap = {"max_completion_length": budgets(record["length"], record["max_new_tokens"],
                                                cfg["max_completion_length"])[1]}
    prefixes = prefix_scores = None
    if prefixes_dir is not None:
        from caopd.targets import compute_targets

        if task is None:
            raise ValueError("run_rewrite: teacher prefixes need the task (its verifier scores them)")
        prefixes = read_rollouts(Path(prefixes_dir) / ROLLOUTS_FILE)
        prefix_scores = compute_targets(examples, prefixes, task)[0]
    rows, summary = build_examples(
        examples, rollouts, per_prompt, per_rollout, tokenizer, {**cfg, **cap}, prefixes, prefix_scores
    )
    summary.update({f"curriculum_{k}": v for k, v in cap.items()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(rows, out_dir / EXAMPLES_FILE, sampled_len=sampled_len)
    with open(out_dir / PREVIEW_FILE, "w", encoding="utf-8") as fh:
        for preview in preview_rows(rows, tokenizer):
            fh.write(json.dumps(preview, sort_keys=True, ensure_ascii=False) + "\n")
    return summary


def run(job: Any) -> dict[str, Any]:
    """Stage ``rewrite`` (the stage contract, :func:`caopd.job.run_stage`): the tokenizer is the
    base model's."""
    from caopd.models.base import model_dir

    return run_rewrite(job.inputs["data"], job.inputs["rollouts"], job.inputs["targets"],
                       model_dir(job.inputs["tokenizer"]), job.out, job.params["rewrite"],
                       prefixes_dir=job.inputs.get("prefixes"), task=job.params["task"],
                       sampled_len=job.params.get("sampled_len", False))  # issue 18
