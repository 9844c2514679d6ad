"""The tooluse task: loading the reference format, ground truth, the tool-call verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caopd.tasks import TaskDataError, get_task
from caopd.tasks.prompts import CONFIDENCE_INSTRUCTION
from caopd.tasks.tooluse import (
    ToolUseTask,
    load_split,
    parse_steps,
    verify_all_steps,
)

REPO = Path(__file__).resolve().parents[1]
# the reference eval split: shared/ inside the checkout, or ../shared next to it (DESIGN §5)
TOOLUSE_EVAL = next(
    (p for p in (REPO / "shared/data/tooluse_eval", REPO.parent / "shared/data/tooluse_eval")
     if p.exists()),
    REPO.parent / "shared/data/tooluse_eval",
)
needs_data = pytest.mark.skipif(not TOOLUSE_EVAL.exists(), reason=f"no {TOOLUSE_EVAL}")

GOLD = json.dumps(
    [
        {"Action": "searchImages", "Action_Input": '{"color": "wild", "page": 1, "size": ""}'},
        {"Action": "getFacts", "Action_Input": "{}"},
    ]
)


def _normalised_gold(raw_gold: str) -> str:
    """The ground truth the loader would store for ``raw_gold``."""
    steps = json.loads(raw_gold)
    return json.dumps(
        [
            {
                "Action": s["Action"],
                "Action_Input": json.dumps(
                    json.loads(s["Action_Input"]), sort_keys=True, separators=(",", ":")
                ),
            }
            for s in steps
        ]
    )


def _reordered_call(action: str, action_input: str) -> str:
    """A completion calling ``action`` with the keys of ``action_input`` reversed and re-spaced."""
    value = json.loads(action_input)
    if isinstance(value, dict):
        value = dict(reversed(list(value.items())))
    text = json.dumps(value, indent=2, separators=(" ,", " :  "))
    return (
        f"Thought: I should call the tool.\nAction: {action}\nAction Input: {text}\n"
        "Confidence: 0.9"
    )


def _save(rows: list[dict], path: Path) -> str:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _row(golden_answer: list[dict], golden_response: list[str] | None = None) -> dict:
    row = {
        "prompt": "Use the tools.\nQuestion: show me an axolotl",
        "name": "Axolotl",
        "description": "axolotl pictures",
        "nl_documentation": "getRandomAxolotlImage: ...",
        "instruction": "show me an axolotl",
        "golden_answer": golden_answer,
    }
    if golden_response is not None:
        row["golden_response"] = golden_response
    return row


@pytest.fixture(scope="module")
def eval_examples():
    return load_split(str(TOOLUSE_EVAL), "eval")


@needs_data
def test_eval_split_loads_every_row(eval_examples):
    assert len(eval_examples) == 97
    for example in eval_examples:
        assert example.messages == [{"role": "user", "content": example.question}]
        assert example.question.count(CONFIDENCE_INSTRUCTION) == 1
        assert "Question:" in example.question
        assert example.demonstration == ""
        golden = json.loads(example.ground_truth)
        assert golden and all(set(step) == {"Action", "Action_Input"} for step in golden)


@needs_data
def test_golden_completion_verifies_with_reordered_keys(eval_examples):
    import datasets

    raw = datasets.load_from_disk(str(TOOLUSE_EVAL))
    task = ToolUseTask()
    for example, row in zip(eval_examples, raw):
        first = row["golden_answer"][0]
        completion = _reordered_call(first["Action"], first["Action_Input"])
        assert task.verify(completion, example.ground_truth), example.id
        assert task.extract_answer(completion) is not None
        calls = "\n".join(
            _reordered_call(step["Action"], step["Action_Input"]) for step in row["golden_answer"]
        )
        assert verify_all_steps(calls, example.ground_truth), example.id


@needs_data
def test_wrong_action_or_argument_fails(eval_examples):
    import datasets

    raw = datasets.load_from_disk(str(TOOLUSE_EVAL))
    task = ToolUseTask()
    changed_argument = 0
    for example, row in zip(eval_examples, raw):
        first = row["golden_answer"][0]
        wrong_action = _reordered_call(first["Action"] + "X", first["Action_Input"])
        assert not task.verify(wrong_action, example.ground_truth)
        value = json.loads(first["Action_Input"])
        if value:
            key = sorted(value)[0]
            value[key] = "something else entirely"
            wrong_value = _reordered_call(first["Action"], json.dumps(value))
            assert not task.verify(wrong_value, example.ground_truth), example.id
            changed_argument += 1
    assert changed_argument > 50


VERIFY_TABLE = [
    ('Action: searchImages\nAction Input: {"size": "", "page": 1, "color": "wild"}', True),
    ('Action: searchImages\nAction Input: ```json\n{"color":"wild","page":1,"size":""}\n```', True),
    ('**Action:** `searchImages`\n**Action Input:** {"color": "wild", "page": 1, "size": ""}',
     True),
    ('Action: searchImages\nAction Input: {"color": "wild", "page": "1", "size": ""}', False),
    ('Action: searchImages\nAction Input: {"color": "wild", "page": 1}', False),
    ('Action: searchImages\nAction Input: {"color": "wild", "page": 1, "size": ""', False),
    ("Action: searchImages\nAction Input: {'color': 'wild', 'page': 1, 'size': ''}", False),
    ("Action: searchImages\nThought: forgot the input", False),
    ('Action: getFacts\nAction Input: {}', False),
    ('Action Input: {"color": "wild", "page": 1, "size": ""}', False),
    ("no tool call at all", False),
    # first step decides; later steps do not matter for verify
    ('Action: searchImages\nAction Input: {"color":"wild","page":1,"size":""}\n'
     "Action: whatever\nAction Input: {}", True),
    ('Action: getFacts\nAction Input: {}\n'
     'Action: searchImages\nAction Input: {"color":"wild","page":1,"size":""}', False),
    # braces inside strings do not end the JSON early
    ('Action: searchImages\nAction Input: {"color": "wild", "page": 1, "size": ""} trailing }',
     True),
]


@pytest.mark.parametrize(("completion", "expected"), VERIFY_TABLE)
def test_verify_table(completion, expected):
    assert get_task("tooluse").verify(completion, _normalised_gold(GOLD)) is expected


def test_braces_inside_strings():
    steps = parse_steps('Action: f\nAction Input: {"q": "a } b {", "n": [1, {"x": 2}]}\nmore')
    assert len(steps) == 1
    assert json.loads(steps[0].normalised) == {"q": "a } b {", "n": [1, {"x": 2}]}


def test_verify_all_steps():
    gold = _normalised_gold(GOLD)
    both = (
        'Action: searchImages\nAction Input: {"page": 1, "size": "", "color": "wild"}\n'
        "Observation: ...\nAction: getFacts\nAction Input: {}"
    )
    assert verify_all_steps(both, gold)
    assert not verify_all_steps(both.split("Observation")[0], gold)
    assert not verify_all_steps(both + "\nAction: getFacts\nAction Input: {}", gold)


def test_extract_answer():
    task = get_task("tooluse")
    answer = task.extract_answer('Action: f\nAction Input: { "b": 2,  "a": 1 }')
    assert answer == '{"Action":"f","Action_Input":"{\\"a\\":1,\\"b\\":2}"}'
    assert task.extract_answer("Action: f\nAction Input: {broken") is None
    assert task.extract_answer("nothing") is None


def test_training_format_gives_demonstration(tmp_path):
    golden = [{"Action": "getRandomAxolotlImage", "Action_Input": "{ }"}]
    response = [
        "Thought: I need a random image.",
        "Action: getRandomAxolotlImage",
        "Action Input: {}",
    ]
    path = _save([_row(golden, response)], tmp_path / "train")
    (example,) = load_split(path, "train")
    assert example.demonstration == "\n".join(response)
    assert example.ground_truth == json.dumps(
        [{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}]
    )
    assert example.meta["name"] == "Axolotl"
    assert get_task("tooluse").verify(example.demonstration, example.ground_truth)


def test_non_json_golden_input_is_kept_as_text(tmp_path):
    path = _save([_row([{"Action": "f", "Action_Input": "  not json  "}])], tmp_path / "x")
    (example,) = load_split(path, "eval")
    assert json.loads(example.ground_truth)[0]["Action_Input"] == "not json"
    assert get_task("tooluse").verify("Action: f\nAction Input: not json", example.ground_truth)


def test_empty_golden_answer_names_row(tmp_path):
    golden = [{"Action": "f", "Action_Input": "{}"}]
    rows = [_row(golden), _row(golden), _row(golden), _row([])]
    path = _save(rows, tmp_path / "bad")
    with pytest.raises(TaskDataError) as error:
        load_split(path, "eval")
    assert "row 3" in str(error.value) and path in str(error.value)


def test_unknown_format_lists_columns(tmp_path):
    path = _save([{"question": "Q?", "answer": "x"}], tmp_path / "odd")
    with pytest.raises(TaskDataError, match="answer.*question"):
        load_split(path, "eval")


@needs_data
def test_load_splits_caps_eval():
    options = {
        "paths": {"train": None, "val": None, "eval": str(TOOLUSE_EVAL)},
        "sizes": {"train": None, "val": None, "eval": 10},
    }
    splits = ToolUseTask().load_splits(options, seed=0)
    assert splits["train"] == [] and splits["val"] == []
    assert [e.id for e in splits["eval"]] == [f"tooluse-eval-{i:06d}" for i in range(10)]


def test_arguments_compare_as_parsed_json_wherever_they_come_from():
    """Issue 13 row 10: a golden Action_Input as an object, as JSON text or JSON-encoded twice."""
    import json as _json

    from caopd.tasks.tooluse import ToolUseTask, normalise_arguments

    task = ToolUseTask()
    completion = 'Action: getWeather\nAction Input: {"city": "Paris", "unit": "C"}'
    args = {"unit": "C", "city": "Paris"}
    for given in (args, _json.dumps(args), _json.dumps(_json.dumps(args))):
        golden = [{"Action": "getWeather", "Action_Input": given}]
        assert task.verify(completion, _json.dumps(golden))  # the verifier itself
        assert task.verify(completion, task.ground_truth(golden))  # through the canonical form
        assert normalise_arguments(given) == '{"city":"Paris","unit":"C"}'
    quoted = 'Action: getWeather\nAction Input: "{\\"city\\": \\"Paris\\", \\"unit\\": \\"C\\"}"'
    assert task.verify(quoted, _json.dumps([{"Action": "getWeather", "Action_Input": args}]))
    assert not task.verify(completion, _json.dumps([{"Action": "getWeather", "Action_Input": {"city": "Rome", "unit": "C"}}]))
    assert normalise_arguments("not json") is None
