"""The science task: loading both reference formats, refusing bad rows, the MCQ verifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from caopd.tasks import TaskDataError, get_task
from caopd.tasks.prompts import CONFIDENCE_INSTRUCTION
from caopd.tasks.science import ScienceTask, load_split

REPO = Path(__file__).resolve().parents[1]
# the reference eval split: shared/ inside the checkout, or ../shared next to it (DESIGN §5)
SCIENCE_EVAL = next(
    (p for p in (REPO / "shared/data/science_eval", REPO.parent / "shared/data/science_eval")
     if p.exists()),
    REPO.parent / "shared/data/science_eval",
)
needs_data = pytest.mark.skipif(not SCIENCE_EVAL.exists(), reason=f"no {SCIENCE_EVAL}")

SYSTEM = "Given a question and four options, answer as <answer>\nX\n</answer>."
OUTPUT = "<reasoning>\nIt is C.\n</reasoning>\n<answer>\nC\n</answer>\nConfidence: 0.95"


def _save(rows: list[dict], path: Path) -> str:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _train_row(question: str, output_text: str, *, with_assistant: bool = False) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    if with_assistant:
        messages.append({"role": "assistant", "content": output_text})
    return {"messages": messages, "output_text": output_text}


@pytest.fixture(scope="module")
def eval_examples():
    return load_split(str(SCIENCE_EVAL), "eval")


@needs_data
def test_eval_split_loads_every_row(eval_examples):
    assert len(eval_examples) == 507
    assert {e.ground_truth for e in eval_examples} <= set("ABCD")
    assert len({e.id for e in eval_examples}) == 507
    assert eval_examples[3].id == "science-eval-000003"
    for example in eval_examples:
        assert [m["role"] for m in example.messages] == ["system", "user"]
        assert example.messages[0]["content"].startswith("\nGiven a question and four options")
        assert example.question == example.messages[-1]["content"]
        assert example.question.count(CONFIDENCE_INSTRUCTION) == 1
        assert sum(m["content"].count(CONFIDENCE_INSTRUCTION) for m in example.messages) == 1
        assert example.demonstration == ""


@needs_data
def test_eval_row_matches_source(eval_examples):
    import datasets

    raw = datasets.load_from_disk(str(SCIENCE_EVAL))[1]
    example = eval_examples[1]
    assert example.ground_truth == raw["answer"]
    assert example.messages[0] == raw["prompt"][0]
    assert example.question == raw["prompt"][1]["content"] + "\n\n" + CONFIDENCE_INSTRUCTION


def test_training_format(tmp_path):
    path = _save(
        [
            _train_row("Q0?\nA: 1\nB: 2\nC: 3\nD: 4", OUTPUT),
            _train_row("Q1?", "<answer>A</answer> no, <answer> (b) </answer>", with_assistant=True),
        ],
        tmp_path / "train",
    )
    examples = load_split(path, "train")
    assert [e.ground_truth for e in examples] == ["C", "B"]
    first = examples[0]
    assert first.demonstration == "<reasoning>\nIt is C.\n</reasoning>\n<answer>\nC\n</answer>"
    assert "Confidence: 0.95" not in first.demonstration
    assert first.messages[0] == {"role": "system", "content": SYSTEM}
    assert first.question.startswith("Q0?") and first.question.endswith(CONFIDENCE_INSTRUCTION)
    # the trailing assistant turn is not part of the student prompt
    assert [m["role"] for m in examples[1].messages] == ["system", "user"]


def test_training_row_without_answer_tag_names_path_and_row(tmp_path):
    path = _save(
        [_train_row("Q0?", OUTPUT), _train_row("Q1?", OUTPUT), _train_row("Q2?", "It is C.")],
        tmp_path / "bad",
    )
    with pytest.raises(TaskDataError) as error:
        load_split(path, "train")
    assert "row 2" in str(error.value) and path in str(error.value)


def test_eval_row_with_bad_answer_names_row(tmp_path):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q?"}]
    path = _save(
        [{"prompt": prompt, "answer": "A"}, {"prompt": prompt, "answer": "E"}], tmp_path / "e"
    )
    with pytest.raises(TaskDataError, match="row 1"):
        load_split(path, "eval")


def test_unknown_format_lists_columns(tmp_path):
    path = _save([{"question": "Q?", "label": "A"}], tmp_path / "odd")
    with pytest.raises(TaskDataError, match="label.*question|question.*label"):
        load_split(path, "train")


@needs_data
def test_load_splits_carves_val_and_caps(tmp_path):
    rows = [_train_row(f"Q{i}?", f"<answer>{'ABCD'[i % 4]}</answer>") for i in range(20)]
    train_path = _save(rows, tmp_path / "train")
    options = {
        "name": "science",
        "paths": {"train": train_path, "val": None, "eval": str(SCIENCE_EVAL)},
        "sizes": {"train": 10, "val": 5, "eval": 30},
    }
    splits = ScienceTask().load_splits(options, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "val": 5, "eval": 30}
    assert not {e.id for e in splits["train"]} & {e.id for e in splits["val"]}
    assert [e.id for e in splits["eval"]] == [f"science-eval-{i:06d}" for i in range(30)]
    again = ScienceTask().load_splits(options, seed=1)
    assert [e.id for e in again["val"]] == [e.id for e in splits["val"]]
    other = ScienceTask().load_splits(options, seed=2)
    assert [e.id for e in other["val"]] != [e.id for e in splits["val"]]
    assert [e.id for e in other["eval"]] == [e.id for e in splits["eval"]]


def test_load_splits_without_paths_gives_empty_splits():
    options = {
        "paths": {"train": None, "val": None, "eval": None},
        "sizes": {"train": None, "val": 5, "eval": None},
    }
    assert ScienceTask().load_splits(options, seed=0) == {"train": [], "val": [], "eval": []}


VERIFIER_TABLE = [
    ("<answer>B</answer>", "B", True),
    ("<answer>C</answer>", "B", False),
    ("The answer is B.", "B", False),
    ("<answer>A</answer> wait, <answer>B</answer>", "B", True),
    ("<answer>B</answer> wait, <answer>A</answer>", "B", False),
    ("<reasoning>\n...\n</reasoning>\n<answer>\nA\n</answer>\nConfidence: 0.9", "A", True),
    ("<answer> d </answer>", "D", True),
    ("<ANSWER>b</ANSWER>", "B", True),
    ("<answer>(B)</answer>", "B", True),
    ("<answer>B)</answer>", "B", True),
    ("<answer>E</answer>", "B", False),
    ("<answer>B or C</answer>", "B", False),
    ("<answer>B", "B", False),
    ("", "A", False),
]


@pytest.mark.parametrize(("completion", "ground_truth", "expected"), VERIFIER_TABLE)
def test_verifier_table(completion, ground_truth, expected):
    task = get_task("science")
    assert task.verify(completion, ground_truth) is expected


def test_extract_answer():
    task = get_task("science")
    assert task.extract_answer("<answer>\nc\n</answer>") == "C"
    assert task.extract_answer("no tag") is None
    assert task.extract_answer("<answer>A</answer><answer>zzz</answer>") is None


def test_verify_rejects_bad_ground_truth():
    with pytest.raises(ValueError, match="A-D"):
        get_task("science").verify("<answer>A</answer>", "Z")
