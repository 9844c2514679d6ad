"""Does the answer follow the work? ``arith`` answers split into the value and the letter.

An ``arith`` response states its work first, ``47 + 85 = 132(B)``, the letter glued to the value
it computed, then ``<answer>B</answer>``. An answer is right when three things hold: the value
is the result, the letter glued to it is that option's letter (an in-context lookup), and the
answer letter is the glued one. On-policy distillation trains the
letters against the teacher's: with the letter in the demonstration (arith v2) the teacher named
the right letter after a student's wrong value, which the student cannot know, and the student
learned answer letters that need not follow its own work; since v3 the demonstration shows the
work line only. This module separates the steps (docs/tiny_model.md §5):

==================  ====================================================================
value_right         the work line's value is the result
lookup_right        the letter glued to the value is the letter of that value's option
letter_follows      the ``<answer>`` letter is the letter glued to the work line's value
accuracy            the ``<answer>`` letter is the ground truth (the evaluation's accuracy)
==================  ====================================================================

An answer without a work line counts in none of the first three. Print it for every variant
of a finished ``arith`` run::

    caopd work-agreement results/index
    caopd work-agreement results/index --variants base sdft caopd
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from caopd.tasks.arith import work_line
from caopd.tasks.base import TaskExample
from caopd.tasks.mcq import LETTERS, extract_letter


def agreement(answers: Iterable[tuple[str, str]], examples: Mapping[str, TaskExample]) -> dict[str, float]:
    """Shares of ``answers`` whose value is right, whose glued letter is the value's option,
    whose answer letter follows the work, and that are right (module docstring).

    Args:
        answers: ``(prompt_id, completion text)`` pairs, one per answer (several per prompt when
            sampled).
        examples: prompt id -> its ``arith`` example (``meta["result"]``, ``meta["options"]``,
            ``ground_truth``).

    Raises:
        KeyError: an answer's prompt id is not among ``examples`` (naming it).
        ValueError: no answers.
    """
    n = value_right = lookup_right = letter_follows = right = 0
    for prompt_id, text in answers:
        if prompt_id not in examples:
            raise KeyError(f"answer to {prompt_id!r}: no such prompt in the split")
        example = examples[prompt_id]
        letter = extract_letter(text)
        work = work_line(text)
        n += 1
        right += letter is not None and letter == example.ground_truth
        if work is not None:
            value, glued = work
            options = list(example.meta["options"])
            value_right += value == example.meta["result"]
            lookup_right += value in options and glued == LETTERS[options.index(value)]
            letter_follows += letter == glued
    if n == 0:
        raise ValueError("agreement: no answers")
    return {"n": n, "value_right": value_right / n, "lookup_right": lookup_right / n,
            "letter_follows": letter_follows / n, "accuracy": right / n}


def variant_agreement(index_path: Path) -> dict[str, float]:
    """:func:`agreement` of one variant's evaluated answers, read through its index file."""
    from caopd.data import read_split
    from caopd.index import read_index, stage_dirs
    from caopd.rollouts.files import read_rollouts
    from caopd.artifacts import ROLLOUTS_FILE, SPEC

    root = index_path.parent.parent.parent
    index = read_index(index_path.parent, index_path.stem)
    paths = {}
    for stage in ("prepare_data", "eval_rollouts"):
        dirs = stage_dirs(index, stage, root)
        if not dirs:
            raise FileNotFoundError(f"{index_path}: no {stage} stage yet; run the variant first")
        paths[stage] = dirs[0]
    split = json.loads((paths["eval_rollouts"] / SPEC).read_text())["params"]["split"]
    examples = {ex.id: ex for ex in read_split(paths["prepare_data"], split)}
    records = read_rollouts(paths["eval_rollouts"] / ROLLOUTS_FILE)
    return agreement(((r.prompt_id, r.text) for r in records), examples)


def index_agreement(index_dir: Path, variants: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``{variant: agreement}`` of ``variants`` (default: every variant indexed in ``index_dir``).

    Raises:
        FileNotFoundError: ``index_dir`` indexes no variant, or one has not run (naming it).
    """
    names = list(variants or sorted(p.stem for p in Path(index_dir).glob("*.json")))
    if not names:
        raise FileNotFoundError(f"{index_dir}: no variant index files")
    return {name: variant_agreement(Path(index_dir) / f"{name}.json") for name in names}


def format_agreement(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The table of :func:`index_agreement`, one line per variant."""
    lines = [f"{'variant':<16} {'answers':>7} {'value right':>11} {'lookup right':>12} {'letter follows':>14} "
             f"{'accuracy':>8}"]
    for name, row in rows.items():
        lines.append(f"{name:<16} {row['n']:>7} {row['value_right']:>11.3f} {row['lookup_right']:>12.3f} "
                     f"{row['letter_follows']:>14.3f} {row['accuracy']:>8.3f}")
    return "\n".join(lines)
