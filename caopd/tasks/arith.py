"""``arith``: the embedded default task, seeded multiple-choice arithmetic with visible levels.

Cheap enough for a tiny model to learn on a CPU, and graded in difficulty so that the empirical
accuracy P_acc of a prompt spreads over (0, 1) (DESIGN §5).

Levels (the level is written at the start of the question, ``Level 3. What is 47 + 85?``):

=====  ==  ==========  ==========
level  op  a           b
=====  ==  ==========  ==========
1      +   0 - 9       0 - 9
2      +   10 - 99     0 - 9
3      +   10 - 99     10 - 99
4      *   2 - 9       10 - 99
5      *   10 - 99     10 - 99
=====  ==  ==========  ==========

Options: four non-negative integers, the result and three distinct distractors, each written
value first with its letter glued on, ``55(B)``. The level also sets how many distractors share
the result's last digit ("far" misses ``result ± d``, ``d`` in ``{10, 20, 30}``); the others are
"near" misses ``result ± d``, ``d`` in ``{1, 2, 3}``, whose last digit differs:

=====  =============================
level  far distractors (shared digit)
=====  =============================
1      0
2      1
3      2
4      2
5      3
=====  =============================

So a harder level both asks for more arithmetic and leaves fewer options that a last-digit check
rules out, as harder multiple-choice questions have closer distractors. How many distractors lie
below the result is drawn uniformly from what non-negativity allows (0-3), so the correct value
is not simply the median option. The correct letter is uniform over A-D; the distractors
fill the other letters in random order.

Why value first: a model reads the letter of the option it computed by finding the value in its
context and copying the token after it, the in-context lookup ("induction") a language model
does; with the letter written before the value the tiny model has to look backwards from a
match, which it does not learn in a CPU budget (``docs/tiny_model.md``).

Question (the single user turn; the tiny model has no system message)::

    Level {L}. What is {a} {op} {b}?
    Options:
    {x}(A)
    {y}(B)
    {z}(C)
    {w}(D)
    Answer with the letter of the correct option as <answer>X</answer>.

    Confidence: your confidence level (0.0-1.0) ...

Demonstration: the worked computation ``{a} {op} {b} = {result}``, without the letter or the
``<answer>`` line. The teacher (which sees it) finds the letter as the student does, by looking up
the value it has just written. With the letter in the demonstration the teacher named the right
letter after a student's wrong value, glued to that value and in ``<answer>``, and the distilled
students learned letters that contradict their own work (``docs/tiny_model.md`` §5).

Determinism: every draw comes from one ``random.Random(seed)`` per call of :func:`generate`.
Uniqueness: two examples are the same question when their question texts are equal, i.e. the
same ``(a, op, b)`` AND the same options in the same order (the level follows from ``(a, op,
b)``). So a split never repeats a question and splits never share one, but the same sum with
different options may occur in two splits; level 1 has only 100 ``(a, b)`` pairs.

Splits (:meth:`ArithTask.load_splits`): ``eval`` is drawn first with
``split_seed(eval_seed, "eval")``, where ``eval_seed`` (``task.arith.eval_seed``) is fixed apart
from the run seed, so every seed of the pipeline is evaluated on the same questions; then ``val``
with ``split_seed(seed, "val")`` excluding eval's questions, then ``train`` excluding both. The
evaluation set therefore depends on neither the run seed nor the train or val sizes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from caopd.tasks.base import TaskExample
from caopd.tasks.mcq import LETTERS, canonical_letter, extract_letter, verify_letter
from caopd.tasks.prompts import with_confidence_instruction
from caopd.tasks.splits import split_seed

# level -> (op, range of a, range of b), ranges inclusive
LEVELS: dict[int, tuple[str, tuple[int, int], tuple[int, int]]] = {
    1: ("+", (0, 9), (0, 9)),
    2: ("+", (10, 99), (0, 9)),
    3: ("+", (10, 99), (10, 99)),
    4: ("*", (2, 9), (10, 99)),
    5: ("*", (10, 99), (10, 99)),
}
NEAR_DELTAS = (1, 2, 3)  # change the last digit
FAR_DELTAS = (10, 20, 30)  # keep the last digit
#: level -> how many of the three distractors are far (share the result's last digit)
FAR_DISTRACTORS: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3}


def _check_levels(levels: Sequence[int], level_weights: Sequence[float] | None) -> None:
    if not levels:
        raise ValueError("arith: levels is empty; choose some of 1-5")
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"arith: unknown levels {unknown}; known levels are {sorted(LEVELS)}")
    if level_weights is not None:
        if len(level_weights) != len(levels):
            raise ValueError(
                f"arith: {len(level_weights)} level_weights for {len(levels)} levels"
            )
        if any(not w >= 0 for w in level_weights) or sum(level_weights) <= 0:
            raise ValueError(
                f"arith: level_weights must be non-negative with a positive sum, got "
                f"{list(level_weights)}"
            )


def _distractors(result: int, level: int, rng: random.Random) -> list[int]:
    n_far = FAR_DISTRACTORS[level]
    deltas = rng.sample(FAR_DELTAS, n_far) + rng.sample(NEAR_DELTAS, 3 - n_far)
    can_go_below = [d for d in deltas if result - d >= 0]
    below = set(rng.sample(can_go_below, rng.randint(0, len(can_go_below))))
    return [result - d if d in below else result + d for d in deltas]


def _draw(level: int, rng: random.Random, example_id: str) -> TaskExample:
    op, (a_lo, a_hi), (b_lo, b_hi) = LEVELS[level]
    a = rng.randint(a_lo, a_hi)
    b = rng.randint(b_lo, b_hi)
    result = a + b if op == "+" else a * b
    distractors = _distractors(result, level, rng)
    rng.shuffle(distractors)
    correct = rng.randrange(4)
    options = distractors[:correct] + [result] + distractors[correct:]
    letter = LETTERS[correct]
    listed = "\n".join(f"{value}({L})" for L, value in zip(LETTERS, options))
    question = with_confidence_instruction(
        f"Level {level}. What is {a} {op} {b}?\nOptions:\n{listed}\n"
        "Answer with the letter of the correct option as <answer>X</answer>."
    )
    return TaskExample(
        id=example_id,
        messages=[{"role": "user", "content": question}],
        question=question,
        demonstration=f"{a} {op} {b} = {result}",
        ground_truth=letter,
        level=level,
        meta={"a": a, "b": b, "op": op, "result": result, "options": options},
    )


def generate(
    n: int,
    *,
    seed: int,
    levels: Sequence[int],
    level_weights: Sequence[float] | None = None,
    split: str = "train",
    exclude: set[str] | None = None,
) -> list[TaskExample]:
    """``n`` distinct arithmetic questions, ids ``arith-{split}-{i:06d}``.

    Args:
        n: number of examples.
        seed: seeds the one ``random.Random`` every draw comes from.
        levels: levels to draw from (module docstring).
        level_weights: relative weights of ``levels`` (``None``: uniform).
        split: only names the ids.
        exclude: question texts (:attr:`TaskExample.question`) that must not be drawn, e.g. the
            questions of the other splits.

    Raises:
        ValueError: bad levels or weights, or the level space is exhausted (``n`` distinct
            non-excluded questions not found within ``20 * n + 10000`` draws).
    """
    if n < 0:
        raise ValueError(f"arith: n must be non-negative, got {n}")
    _check_levels(levels, level_weights)
    rng = random.Random(seed)
    taken = set(exclude or ())
    examples: list[TaskExample] = []
    max_draws = 20 * n + 10_000
    draws = 0
    while len(examples) < n:
        if draws >= max_draws:
            raise ValueError(
                f"arith: found only {len(examples)} of {n} distinct questions for split "
                f"{split!r} at levels {list(levels)} after {draws} draws "
                f"({len(exclude or ())} excluded); the level space is exhausted: ask for fewer "
                "examples or add harder levels"
            )
        draws += 1
        level = rng.choices(list(levels), weights=level_weights)[0]
        example = _draw(level, rng, f"arith-{split}-{len(examples):06d}")
        if example.question in taken:
            continue
        taken.add(example.question)
        examples.append(example)
    return examples


def response(
    example: TaskExample,
    *,
    answer_letter: str,
    confidence: float | None,
    with_work: bool = True,
) -> str:
    """A well-formed model response to an arith ``example`` (the tiny model's warm-up text).

    ``"{a} {op} {b} = {value}({letter})\\n<answer>{letter}</answer>\\nConfidence: {confidence:.2f}"``
    where ``value`` is the option behind ``answer_letter`` (the result when the letter is right,
    the distractor's value when it is wrong). ``with_work=False`` drops the first line;
    ``confidence=None`` drops the last.
    """
    letter = answer_letter.strip().upper()
    if letter not in LETTERS:
        raise ValueError(
            f"example {example.id!r}: answer_letter must be A-D, got {answer_letter!r}"
        )
    lines = []
    if with_work:
        meta = example.meta
        value = meta["options"][LETTERS.index(letter)]
        lines.append(f"{meta['a']} {meta['op']} {meta['b']} = {value}({letter})")
    lines.append(f"<answer>{letter}</answer>")
    if confidence is not None:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(
                f"example {example.id!r}: confidence must be in [0, 1], got {confidence!r}"
            )
        lines.append(f"Confidence: {confidence:.2f}")
    return "\n".join(lines)


#: the value and the letter glued to it on a work line, ``47 + 85 = 132(B)``
_WORK_RE = re.compile(r"=[ \t]*(\d+)\(([A-D])\)")


def work_line(completion: str) -> tuple[int, str] | None:
    """``(value, letter)`` of the first work line ``a op b = value(letter)`` in ``completion``,
    or ``None`` where there is none (:func:`response` writes that line first).

    Examples:
        >>> work_line("47 + 85 = 122(C)\n<answer>B</answer>\nConfidence: 0.50")
        (122, 'C')
        >>> work_line("<answer>B</answer>") is None
        True
    """
    if not isinstance(completion, str):
        raise TypeError(f"work_line expects a str, got {type(completion).__name__}: {completion!r}")
    match = _WORK_RE.search(completion)
    return (int(match.group(1)), match.group(2)) if match else None


class ArithTask:
    """The ``arith`` task: generated splits and the shared multiple-choice verifier."""

    name: ClassVar[str] = "arith"
    version: ClassVar[str] = "3"

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
        """Mutually disjoint ``train``/``val``/``eval`` splits.

        Args:
            options: the ``task`` config subtree; reads ``sizes.{train,val,eval}`` (integers)
                and ``arith.levels`` / ``arith.level_weights`` / ``arith.eval_seed``; ``paths``
                is ignored.
            seed: the run seed; split ``s`` is generated with ``split_seed(seed, s)`` (``eval``:
                with ``split_seed(eval_seed, "eval")``), in the order eval, val, train (module
                docstring).
        """
        sizes = options["sizes"]
        arith = options["arith"]
        levels = list(arith["levels"])
        weights = arith.get("level_weights")
        splits: dict[str, list[TaskExample]] = {}
        taken: set[str] = set()
        for split in ("eval", "val", "train"):
            n = sizes[split]
            if isinstance(n, bool) or not isinstance(n, int):
                raise ValueError(f"task.sizes.{split} must be an integer for arith, got {n!r}")
            draw_seed = arith.get("eval_seed", seed) if split == "eval" else seed
            splits[split] = generate(
                n,
                seed=split_seed(draw_seed, split),
                levels=levels,
                level_weights=weights,
                split=split,
                exclude=taken,
            )
            taken.update(example.question for example in splits[split])
        return {split: splits[split] for split in ("train", "val", "eval")}
