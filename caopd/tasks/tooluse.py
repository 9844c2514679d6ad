"""``tooluse``: ToolAlpaca-style tool calls in the reference format.

Raw rows (``datasets.load_from_disk`` directories): ``prompt`` (one string: instructions, tool
documentation, and ``Question: ...`` at the end), ``golden_answer`` (list of
``{"Action", "Action_Input"}``), and ``name``, ``description``, ``nl_documentation``,
``instruction`` (kept in ``meta`` where present). Training rows add ``golden_response``, a list
of strings; the demonstration is those strings joined with ``"\\n"`` (as the reference SDFT
trainer builds its teacher prompt), cut before any confidence line; a training row whose join is
empty is refused. Eval rows (no ``golden_response`` column) have demonstration ``""``.

Student messages: ``[{"role": "user", "content": with_confidence_instruction(prompt)}]``.
Ids: ``tooluse-{split}-{row:06d}``.

Ground truth: ``json.dumps`` of the golden list with every ``Action_Input`` normalised (parsed as
JSON and re-serialised compactly with sorted keys; a value that is not valid JSON is kept as its
stripped string). A row with an empty ``golden_answer`` is refused.

Verifier: every ``Action: <name>`` line of the completion opens a step and the next
``Action Input:`` before the following ``Action:`` line holds its input; the input is the JSON
value after the label (an object or array ends where its braces balance, strings respected;
Markdown code fences and backticks around it are skipped; a scalar is the rest of the line).
Inputs compare after the same normalisation as the ground truth, so key order and whitespace do
not matter; values must be equal JSON (``1`` and ``"1"`` differ). An input that is not valid
JSON is never correct (unless the golden input itself is not JSON: then the stripped texts must
be equal). Action names compare exactly after stripping whitespace, backticks, asterisks and
quotes.

:meth:`ToolUseTask.verify` is the ToolAlpaca-style single-step evaluation: correct when the
FIRST parsed step equals the FIRST golden step (the model sees no observations, so later golden
steps are not reachable from one completion). :func:`verify_all_steps` compares the whole
sequence (same length, every step equal), for analysis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from caopd.tasks.base import Example, TaskDataError
from caopd.tasks.prompts import strip_confidence, with_confidence_instruction
from caopd.tasks.splits import assemble_splits, open_dataset

REQUIRED_COLUMNS = frozenset({"prompt", "golden_answer"})
META_COLUMNS = ("name", "description", "nl_documentation", "instruction")

_ACTION_RE = re.compile(r"^[ \t>#*_`\-]*Action[ \t*_`]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_INPUT_RE = re.compile(
    r"^[ \t>#*_`\-]*Action[ \t_]*Input[ \t*_`]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE
)
_FENCE_RE = re.compile(r"\s*(?:```[A-Za-z]*|`)?\s*")
_NAME_STRIP = " \t`*\"'"


@dataclass(frozen=True)
class Step:
    """One parsed tool call: ``raw`` input text and its normalised JSON (``None``: not JSON)."""

    action: str
    raw: str | None
    normalised: str | None


def normalise_json(value: Any) -> str:
    """A JSON value as compact text with sorted keys (``{"a":1,"b":"x"}``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def normalise_input(raw: str) -> str:
    """An ``Action_Input`` string normalised: JSON re-serialised by :func:`normalise_json`, or
    the stripped string when it is not valid JSON."""
    try:
        return normalise_json(json.loads(raw))
    except ValueError:
        return raw.strip()


def _balanced_end(text: str, start: int) -> int | None:
    """Index just after the JSON object/array opening at ``text[start]``, or ``None`` if it never
    closes. Brackets inside JSON strings (with escapes) are ignored."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _read_input(text: str, start: int) -> tuple[str, int]:
    """The raw input text after an ``Action Input:`` label ending at ``start``, and its end."""
    start = _FENCE_RE.match(text, start).end()
    if start < len(text) and text[start] in "{[":
        end = _balanced_end(text, start)
        if end is None:  # never closes: a truncated input, not JSON
            return text[start:], len(text)
        return text[start:end], end
    line_end = text.find("\n", start)
    end = len(text) if line_end == -1 else line_end
    return text[start:end].strip().strip("`").strip(), end


def parse_steps(completion: str) -> list[Step]:
    """Every ``Action:`` / ``Action Input:`` pair of ``completion``, in order (module docstring)."""
    steps: list[Step] = []
    pos = 0
    while True:
        action = _ACTION_RE.search(completion, pos)
        if action is None:
            return steps
        name = action.group(1).strip(_NAME_STRIP)
        following = _ACTION_RE.search(completion, action.end())
        limit = following.start() if following else len(completion)
        label = _INPUT_RE.search(completion, action.end(), limit)
        if label is None:
            steps.append(Step(name, None, None))
            pos = action.end()
            continue
        raw, pos = _read_input(completion, label.end())
        try:
            normalised: str | None = normalise_json(json.loads(raw))
        except ValueError:
            normalised = None
        steps.append(Step(name, raw, normalised))


def _golden_steps(ground_truth: str) -> list[dict[str, str]]:
    try:
        golden = json.loads(ground_truth)
    except ValueError as error:
        raise ValueError(f"tooluse ground truth is not JSON: {ground_truth[:200]!r}") from error
    if not isinstance(golden, list) or not golden or not all(
        isinstance(step, dict) and "Action" in step and "Action_Input" in step for step in golden
    ):
        raise ValueError(
            "tooluse ground truth must be a non-empty JSON list of {Action, Action_Input}, got "
            f"{ground_truth[:200]!r}"
        )
    return golden


def _step_matches(step: Step, golden: Mapping[str, str]) -> bool:
    if step.action != str(golden["Action"]).strip(_NAME_STRIP):
        return False
    expected = str(golden["Action_Input"])
    try:
        expected_json = normalise_json(json.loads(expected))
    except ValueError:  # a golden input that is not JSON: compare the stripped texts
        return step.raw is not None and step.raw.strip() == expected.strip()
    return step.normalised is not None and step.normalised == expected_json


def verify_first_step(completion: str, ground_truth: str) -> bool:
    """True when the first parsed step of ``completion`` equals the first golden step."""
    golden = _golden_steps(ground_truth)
    steps = parse_steps(completion)
    return bool(steps) and _step_matches(steps[0], golden[0])


def verify_all_steps(completion: str, ground_truth: str) -> bool:
    """True when the parsed steps equal the golden steps one for one (same count, same order)."""
    golden = _golden_steps(ground_truth)
    steps = parse_steps(completion)
    return len(steps) == len(golden) and all(map(_step_matches, steps, golden))


def extract_first_action(completion: str) -> str | None:
    """The first step as compact JSON ``{"Action":...,"Action_Input":...}`` (input normalised),
    or ``None`` when there is no step or its input is not valid JSON."""
    steps = parse_steps(completion)
    if not steps or steps[0].normalised is None:
        return None
    return json.dumps(
        {"Action": steps[0].action, "Action_Input": steps[0].normalised},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _ground_truth(golden: Any, where: str) -> str:
    if isinstance(golden, str):
        try:
            golden = json.loads(golden)
        except ValueError as error:
            raise TaskDataError(f"{where}: golden_answer is a string but not JSON") from error
    if not isinstance(golden, list) or not golden:
        raise TaskDataError(f"{where}: golden_answer is empty; the row has no ground truth")
    steps = []
    for k, step in enumerate(golden):
        if not isinstance(step, Mapping) or "Action" not in step or "Action_Input" not in step:
            raise TaskDataError(
                f"{where}: golden_answer[{k}] lacks Action / Action_Input: {step!r}"
            )
        action_input = step["Action_Input"]
        if isinstance(action_input, str):
            normalised = normalise_input(action_input)
        else:
            normalised = normalise_json(action_input)
        steps.append({"Action": str(step["Action"]).strip(), "Action_Input": normalised})
    return json.dumps(steps, ensure_ascii=False)


def row_to_example(row: Mapping[str, Any], *, index: int, path: str, split: str) -> Example:
    """One tooluse row as an :class:`Example`; TaskDataError names the path and row."""
    where = f"{path} row {index}"
    missing = REQUIRED_COLUMNS - set(row)
    if missing:
        raise TaskDataError(
            f"{path}: unknown tooluse format, columns {sorted(row)}; missing {sorted(missing)}"
        )
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskDataError(f"{where}: prompt must be a non-empty string")
    ground_truth = _ground_truth(row["golden_answer"], where)
    demonstration = ""
    if "golden_response" in row:
        response = row["golden_response"]
        if isinstance(response, str):
            response = [response]
        if not isinstance(response, list) or not all(isinstance(part, str) for part in response):
            raise TaskDataError(f"{where}: golden_response must be a list of strings")
        demonstration = strip_confidence("\n".join(response))
        if not demonstration.strip():
            raise TaskDataError(f"{where}: golden_response is empty; a training row needs one")
    question = with_confidence_instruction(prompt)
    meta: dict[str, Any] = {"source": path, "row": index}
    meta.update({column: row[column] for column in META_COLUMNS if column in row})
    return Example(
        id=f"tooluse-{split}-{index:06d}",
        messages=[{"role": "user", "content": question}],
        question=question,
        demonstration=demonstration,
        ground_truth=ground_truth,
        level=None,
        meta=meta,
    )


def load_split(path: str, split: str) -> list[Example]:
    """Every row of the dataset at ``path`` as examples (``load_from_disk`` dir, else hub id)."""
    dataset = open_dataset(path, split)
    missing = REQUIRED_COLUMNS - set(dataset.column_names)
    if missing:
        raise TaskDataError(
            f"{path}: unknown tooluse format, columns {sorted(dataset.column_names)}; "
            f"missing {sorted(missing)}"
        )
    return [
        row_to_example(row, index=i, path=path, split=split) for i, row in enumerate(dataset)
    ]


class ToolUseTask:
    """The ``tooluse`` task: ToolAlpaca-style calls, first-step verifier."""

    name: ClassVar[str] = "tooluse"
    version: ClassVar[str] = "1"

    def verify(self, completion: str, ground_truth: str) -> bool:
        """True when the completion's first tool call equals the first golden call."""
        return verify_first_step(completion, ground_truth)

    def extract_answer(self, completion: str) -> str | None:
        """The first tool call, normalised, as compact JSON; ``None`` if none parses."""
        return extract_first_action(completion)

    def load_splits(self, options: Mapping[str, Any], seed: int) -> dict[str, list[Example]]:
        """Splits from ``options["paths"]``, capped by ``options["sizes"]``.

        See :func:`caopd.tasks.splits.assemble_splits`.
        """
        return assemble_splits(load_split, options, seed)
