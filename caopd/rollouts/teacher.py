"""Teacher-prefix rollouts: ``rollouts.prefix_source: teacher`` (DESIGN §11, KL direction × prefix source).

The token-level KL direction and the source of the prefixes the loss is computed on are separate
choices ("Decoupling KL and Trajectories", ``../shared/PAPER.md``): student prefixes are on-policy
(OPD with reverse KL, DAgger-style with forward KL); teacher prefixes are completions sampled
from the teacher (SFT / soft-label KD with forward KL, offline-RL-style with reverse KL).

In self-distillation the teacher is the student's own weights given a privileged prompt
(DESIGN §1). Stage ``teacher_rollouts(r)`` samples K completions per prompt of round r's slice
from that teacher:

- the weights are the current student's checkpoint, the one ``rollouts(r)`` samples from, through
  the same engine and sampling settings (``rollouts.*``). In round 1 that is also the teacher's
  weights; in later rounds an EMA or frozen teacher has drifted from it, and the prefixes still
  come from the student's weights (the teacher's privileged *context* is what makes it the
  teacher here);
- the prompt is the teacher prompt the rewrite builds for the example, by the same function
  (:func:`teacher_chat`): with calibration the demonstration's ``Confidence:`` is the student's
  ``P_acc`` and the note is in it; in ``correct_solution`` mode the solution is the student's
  verified rollout. So the stage reads the student's ``rollouts(r)`` and ``targets(r)``, and the
  samples come from exactly the distribution ``p_T`` the distill loss scores them under (the
  rewrite checks that each sample's ``prompt_token_ids`` are that teacher prompt's ids).

Which rollouts each file of a teacher-prefix round holds::

    results/rollouts/<key>/rollouts.parquet          the STUDENT's K samples from its own prompt
    results/targets/<key>/targets.parquet            their P_acc per prompt: the student's success
                                                     rate (its deployment policy), the target
    results/teacher_rollouts/<key>/rollouts.parquet  the TEACHER's K samples from the teacher
                                                     prompt (prompt_token_ids = its ids)
    results/rewrite/<key>/examples.parquet           one example per TEACHER sample: its ids are
                                                     the completion (last confidence rewritten to
                                                     the student's P_acc with calibration); p_acc
                                                     the student's; correct and stated_confidence
                                                     the teacher sample's own

The student rollouts are sampled with calibration off too (their P_acc is recorded in every
example, as in SDFT, and the per-round P_acc histogram reads them); they share the key of the
student-prefix variant's round-1 rollouts, so a grid samples them once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caopd.artifacts import ROLLOUTS_FILE
from caopd.completion import solution_text
from caopd.tasks.base import TaskExample
from caopd.tasks.prompts import teacher_messages

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from caopd.rollouts.engine import Prompt, RolloutRecord

def teacher_chat(
    example: TaskExample,
    records: Sequence[RolloutRecord],
    correct: Sequence[bool],
    *,
    mode: str,
    fallback: str,
    p_acc: float | None,
) -> tuple[list[dict[str, str]] | None, str]:
    """The teacher's chat prompt for one example of a round, and how it was built.

    Args:
        example: the prepared row.
        records: the STUDENT's rollouts of the example, by sample index.
        correct: the verifier's verdict on each of ``records``.
        mode: ``rewrite.teacher_mode``: ``"demo"`` or ``"correct_solution"``.
        fallback: ``rewrite.fallback``: ``"demo"`` or ``"skip"`` (``correct_solution`` mode
            without an accepted rollout).
        p_acc: the student's P_acc (CaOPD) or ``None`` (SDFT: ``Confidence: 1.00``, no note).

    Returns:
        ``(messages, how)``: ``how`` is ``"built"``, ``"fallback"`` (the dataset demonstration
        shown in the correct_solution template) or ``"skipped"`` (``messages`` None). The
        solution is the accepted rollout of lowest sample index whose text before its last
        confidence label is not empty (:func:`caopd.completion.solution_text`).
    """
    if len(records) != len(correct):
        raise ValueError(f"example {example.id!r}: {len(records)} rollouts but {len(correct)} verdicts")
    solution, how = None, "built"
    if mode == "correct_solution":
        solution = next(
            (text for record, ok in zip(records, correct) if ok and (text := solution_text(record.text))), None
        )
        if solution is None:
            if fallback == "skip":
                return None, "skipped"
            solution, how = example.demonstration, "fallback"
    return teacher_messages(example, mode=mode, p_acc=p_acc, solution=solution), how


def teacher_prompts(
    examples: Sequence[TaskExample],
    rollouts: Sequence[RolloutRecord],
    per_prompt: pd.DataFrame,
    per_rollout: pd.DataFrame,
    cfg: Mapping[str, Any],
) -> tuple[list[Prompt], dict[str, int]]:
    """The teacher prompt of every example of a round that the student sampled.

    Args:
        examples: the round's slice of the train split (prompt order).
        rollouts: the student's rollouts of the round.
        per_prompt, per_rollout: the frames of :func:`caopd.targets.compute_targets` for them.
        cfg: the ``rewrite`` subtree (``calibration``, ``teacher_mode``, ``fallback`` are read:
            :data:`caopd.plan.TEACHER_PROMPT_KEYS`).

    Returns:
        ``(prompts, counts)``: ``(prompt_id, messages)`` in slice order, skipped prompts left
        out; ``counts`` = ``n_fallback``, ``n_skipped``.

    Raises:
        ValueError: an example without student rollouts or without a P_acc (named).
    """
    p_acc_of = {str(p): float(v) for p, v in zip(per_prompt["prompt_id"], per_prompt["p_acc"])}
    verdict = {
        (str(p), int(i)): bool(c)
        for p, i, c in zip(per_rollout["prompt_id"], per_rollout["sample_index"], per_rollout["correct"])
    }
    groups: dict[str, list[RolloutRecord]] = {}
    for record in sorted(rollouts, key=lambda r: (r.prompt_id, r.sample_index)):
        groups.setdefault(record.prompt_id, []).append(record)
    prompts: list[Prompt] = []
    counts = {"n_fallback": 0, "n_skipped": 0}
    for example in examples:
        group = groups.get(example.id)
        if not group or example.id not in p_acc_of:
            raise ValueError(
                f"prompt_id {example.id!r} of the round has no student rollouts or no P_acc: the "
                "rollouts and targets inputs are not this round's"
            )
        correct = []
        for record in group:
            if (example.id, record.sample_index) not in verdict:
                raise ValueError(f"rollout {example.id!r} sample {record.sample_index} is not in the targets")
            correct.append(verdict[(example.id, record.sample_index)])
        messages, how = teacher_chat(
            example, group, correct, mode=cfg["teacher_mode"], fallback=cfg["fallback"],
            p_acc=p_acc_of[example.id] if cfg["calibration"] else None,
        )
        if how == "skipped":
            counts["n_skipped"] += 1
            continue
        counts["n_fallback"] += how == "fallback"
        prompts.append((example.id, messages))
    return prompts, counts


def teacher_samples(
    prompt_id: str,
    groups: Mapping[str, list[RolloutRecord]],
    scored: Mapping[tuple[str, int], Any],
    teacher_prompt: list[int],
) -> tuple[list[RolloutRecord], list[Any]]:
    """The teacher's samples of one prompt (``groups[prompt_id]``) and their scores
    (``scored[(prompt_id, sample_index)]``), for the rewrite; each must have been sampled from
    ``teacher_prompt`` (its ``prompt_token_ids``), else a ``ValueError`` names it."""
    group = groups.get(prompt_id)
    if not group:
        raise ValueError(f"prompt_id {prompt_id!r} has a teacher prompt but no teacher-prefix rollouts")
    scores = []
    for record in group:
        if [int(i) for i in record.prompt_token_ids] != teacher_prompt:
            raise ValueError(
                f"teacher-prefix rollout prompt_id {prompt_id!r} sample {record.sample_index}: its "
                f"prompt_token_ids ({len(record.prompt_token_ids)} ids) are not the teacher prompt "
                f"built here ({len(teacher_prompt)} ids); it was sampled from another prompt, "
                "P_acc, tokenizer or data"
            )
        score = scored.get((prompt_id, record.sample_index))
        if score is None:
            raise ValueError(f"teacher-prefix rollout {prompt_id!r} sample {record.sample_index} is not scored")
        scores.append(score)
    return group, scores


def teacher_prefix_rollouts(
    params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *, seed: int, threads: int = 1
) -> dict[str, Any]:
    """Stage teacher_rollouts(r): K samples per prompt of the round's slice from the teacher prompt.

    ``params``: ``rollouts`` (the sampling settings), ``rewrite`` (its teacher-prompt keys),
    ``round``, ``slice``. ``inputs``: ``data``, ``model`` (the current student), ``rollouts`` and
    ``targets`` (the student's, this round). Writes :data:`ROLLOUTS_FILE` (module docstring).
    """
    from caopd.data import read_split
    from caopd.rollouts.files import read_rollouts, write_rollouts
    from caopd.rollouts.stage import sample_prompts, training_sampling
    from caopd.targets import read_targets

    start, stop = params["slice"]
    examples = read_split(inputs["data"], "train")[start:stop]
    per_rollout, per_prompt = read_targets(inputs["targets"])
    student = read_rollouts(Path(inputs["rollouts"]) / ROLLOUTS_FILE)
    prompts, counts = teacher_prompts(examples, student, per_prompt, per_rollout, params["rewrite"])
    if not prompts:  # correct_solution + skip and no prompt with an accepted rollout
        write_rollouts([], Path(out) / ROLLOUTS_FILE)
        return {"prefix_source": "teacher", "n_prompts": 0, "n_rollouts": 0, **counts}
    sampling, options = training_sampling(params["rollouts"])
    summary = sample_prompts(
        prompts, model_artifact=inputs["model"], sampling=sampling, engine=params["rollouts"]["engine"],
        seed=seed, out=out, engine_options=options, threads=threads,
    )
    return {"prefix_source": "teacher", **summary, **counts}


def run(job: Any) -> dict[str, Any]:
    """Stage ``teacher_rollouts`` (the stage contract, :func:`caopd.job.run_stage`)."""
    return teacher_prefix_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads)
