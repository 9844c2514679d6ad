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
stripped string). An ``Action_Input`` may come as a JSON string (the reference format) or as a
JSON object or array (``{"unit": "C", "city": "Paris"}``): both normalise to the same text
(:func:`normalise_arguments`). A row with an empty ``golden_answer`` is refused;
:meth:`ToolUseTask.ground_truth` gives the canonical string of any of these forms.

Verifier: every ``Action: <name>`` line of the completion opens a step and the next
``Action Input:`` before the following ``Action:`` line holds its input; the input is the JSON
value after the label (an object or array ends where its braces balance, strings respected;
Markdown code fences and backticks around it are skipped; a scalar is the rest of the line).
Inputs compare as parsed JSON, after the same normalisation as the ground truth, wherever they
come from (a string holding JSON, a JSON object, a JSON string that itself holds an object), so
key order and whitespace do not matter; values must be equal JSON (``1`` and ``"1"`` differ). An input that is not valid
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

from caopd.tasks.base import TaskExample, TaskDataError
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


def normalise_arguments(value: Any) -> str | None:
    """Tool-call arguments as normalised JSON text, whatever form they come in; None if they are
    a string that is not JSON.

    A string is parsed as JSON; a parsed string that itself holds a JSON object or array (an
    argument JSON-encoded twice) is parsed once more; any other value (an object from a JSON
    file) is taken as is. The result is :func:`normalise_json`, so ``{"b": 2, "a": 1}`` given
    as an object, as the text ``'{"a":1, "b":2}'`` or as ``'"{\\"a\\": 1, \\"b\\": 2}"'``
    all give ``'{"a":1,"b":2}'``.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return normalise_json(value)


def normalise_input(raw: Any) -> str:
    """An ``Action_Input`` normalised: :func:`normalise_arguments`, or the stripped string when
    it is a string that is not valid JSON."""
    normalised = normalise_arguments(raw)
    return raw.strip() if normalised is None else normalised


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
        steps.append(Step(name, raw, normalise_arguments(raw)))


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


def _step_matches(step: Step, golden: Mapping[str, Any]) -> bool:
    if step.action != str(golden["Action"]).strip(_NAME_STRIP):
        return False
    expected = golden["Action_Input"]
    expected_json = normalise_arguments(expected)
    if expected_json is None:  # a golden input that is not JSON: compare the stripped texts
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
        steps.append(
            {"Action": str(step["Action"]).strip(), "Action_Input": normalise_input(step["Action_Input"])}
        )
    return json.dumps(steps, ensure_ascii=False)


def row_to_example(row: Mapping[str, Any], *, index: int, path: str, split: str) -> TaskExample:
    """One tooluse row as an :class:`TaskExample`; TaskDataError names the path and row."""
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
    return TaskExample(
        id=f"tooluse-{split}-{index:06d}",
        messages=[{"role": "user", "content": question}],
        question=question,
        demonstration=demonstration,
        ground_truth=ground_truth,
        level=None,
        meta=meta,
    )


def load_split(path: str, split: str) -> list[TaskExample]:
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

    def ground_truth(self, value: Any) -> str:
        """The canonical ground truth of ``value``: a golden list of ``{"Action",
        "Action_Input"}`` given as a list or as its JSON text (inputs as strings or objects).

        Raises:
            TaskDataError: not JSON, not a non-empty list of calls, a call without its keys.
        """
        return _ground_truth(value, "tooluse ground truth")

    def load_splits(self, options: Mapping[str, Any], seed: int) -> dict[str, list[TaskExample]]:
        """Splits from ``options["paths"]``, capped by ``options["sizes"]``.

        See :func:`caopd.tasks.splits.assemble_splits`.
        """
        return assemble_splits(load_split, options, seed)
