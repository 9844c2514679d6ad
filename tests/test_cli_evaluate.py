"""``caopd evaluate``: real science ground truths, made-up responses, metrics checked directly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caopd.cli import main
from caopd.cli.evaluate import PredictionsError, load_predictions
from caopd.evaluation import metrics

REPO = Path(__file__).resolve().parents[1]
# the reference eval split: shared/ inside the checkout, or ../shared next to it (DESIGN §5)
SCIENCE_EVAL = next(
    (p for p in (REPO / "shared/data/science_eval", REPO.parent / "shared/data/science_eval")
     if p.exists()),
    REPO.parent / "shared/data/science_eval",
)
LETTERS = "ABCD"


@pytest.fixture(scope="module")
def science_case(tmp_path_factory):
    """60 science rows with responses of five kinds; the expected arrays built by hand."""
    if not SCIENCE_EVAL.exists():
        pytest.skip(f"{SCIENCE_EVAL} not present")
    datasets = pytest.importorskip("datasets")
    truths = list(datasets.load_from_disk(str(SCIENCE_EVAL))["answer"][:60])
    rows, expected = [], []  # expected: (correct, confidence used, confidence valid, answered)
    for i, truth in enumerate(truths):
        wrong = LETTERS[(LETTERS.index(truth) + 1) % 4]
        conf = round(0.3 + 0.05 * (i % 13), 2)
        kind = i % 5
        if kind == 0:  # correct, parseable confidence
            response = f"<answer>\n{truth}\n</answer>\nConfidence: {conf}"
            expected.append((1, conf, 1, 1))
        elif kind == 1:  # wrong, confident
            response = f"<reasoning>hm</reasoning>\n<answer>\n{wrong}\n</answer>\nConfidence: 0.9"
            expected.append((0, 0.9, 1, 1))
        elif kind == 2:  # correct, unparseable confidence -> counts as 0.0
            response = f"<answer>\n{truth}\n</answer>\nConfidence: high"
            expected.append((1, 0.0, 0, 1))
        elif kind == 3:  # no answer at all
            response = f"I am not sure which one.\nConfidence: {conf}"
            expected.append((0, conf, 1, 0))
        else:  # correct, markdown-bold confidence
            response = f"<answer>\n{truth}\n</answer>\n**Confidence:** {conf}"
            expected.append((1, conf, 1, 1))
        rows.append({"response": response, "ground_truth": truth})
    path = tmp_path_factory.mktemp("cli") / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    correct, confidence, valid, answered = (np.array(col) for col in zip(*expected, strict=True))
    return path, correct, confidence, valid.astype(bool), answered


def test_evaluate_matches_direct_metrics(science_case, capsys, tmp_path):
    path, c, p, valid, parsed = science_case
    out = tmp_path / "out" / "metrics.json"
    assert main(["evaluate", str(path), "--task", "science", "--out", str(out),
                 "--bootstrap", "200", "--seed", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["task"] == "science" and written["n"] == 60
    for name, spec in metrics.METRICS.items():
        assert written[name] == pytest.approx(spec.fn(c, p), abs=1e-12), name
    assert written["format_adherence"] == pytest.approx(valid.mean())
    assert written["answer_parse_rate"] == pytest.approx(parsed.mean())
    v = written["valid_confidence_only"]
    assert v["n"] == int(valid.sum()) == 48
    assert v["ece"] == pytest.approx(metrics.ece(c[valid], p[valid]))
    assert v["accuracy"] == pytest.approx(metrics.accuracy(c[valid], p[valid]))
    expected_counts = [b["count"] for b in metrics.reliability_bins(c, p)]
    assert [b["count"] for b in written["bins"]] == expected_counts
    for name, (lo, hi) in written["ci95"].items():
        assert lo <= written[name] <= hi, name
    # Same seed, same output.
    argv = ["evaluate", str(path), "--task", "science", "--bootstrap", "200", "--seed", "3"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == written


def test_bad_row_names_its_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"response": "<answer>A</answer>", "answer": "A"}) + "\n"
        + "\n"
        + json.dumps({"text": "<answer>A</answer>", "answer": "A"}) + "\n"
    )
    assert main(["evaluate", str(path), "--task", "science"]) != 0
    err = capsys.readouterr().err
    assert "line 3" in err and "keys found: ['answer', 'text']" in err
    path.write_text(json.dumps({"response": "x"}) + "\n")
    assert main(["evaluate", str(path), "--task", "science"]) == 2
    assert "line 1" in capsys.readouterr().err
    path.write_text("{not json\n")
    assert main(["evaluate", str(path), "--task", "science"]) == 2
    assert "line 1: not valid JSON" in capsys.readouterr().err


def test_reference_formats(tmp_path):
    # run_eval_chemistry.py rows: golden_answer = [{"Answer": "B"}]; tool use: list of calls.
    calls = [{"Action": "getX", "Action_Input": "{\"a\": 1}"}]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps([
        {"response": "r1", "golden_answer": [{"Answer": "B"}]},
        {"output": "r2", "golden_answer": calls},
        {"generated_text": "r3", "label": "C", "prompt_id": 1},
        {"completion": "r4", "answer": "D"},
    ]))
    responses, truths, groups = load_predictions(path)
    assert responses == ["r1", "r2", "r3", "r4"]
    assert truths == ["B", json.dumps(calls), "C", "D"]
    assert groups is None  # not every row has a prompt_id
    path.write_text("[]")
    with pytest.raises(PredictionsError, match="no rows"):
        load_predictions(path)
    path.write_text(json.dumps([{"response": 1, "answer": "A"}]))
    with pytest.raises(PredictionsError, match="row 0"):
        load_predictions(path)


def test_tooluse_golden_list_verifies(tmp_path, capsys):
    calls = [{"Action": "getX", "Action_Input": "{\"a\": 1, \"b\": 2}"}]
    path = tmp_path / "tool.jsonl"
    path.write_text(
        json.dumps({"response": "Action: getX\nAction Input: {\"b\": 2, \"a\": 1}\nConfidence: 0.7",
                    "golden_answer": calls, "prompt_id": "q1"}) + "\n"
        + json.dumps({"response": "Action: getY\nAction Input: {}\nConfidence: 0.6",
                      "golden_answer": calls, "prompt_id": "q1"}) + "\n"
    )
    assert main(["evaluate", str(path), "--task", "tooluse", "--bootstrap", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == 0.5
    assert out["ci95"]["accuracy"] == [0.5, 0.5]  # one question with both rows: resampled whole


def test_python_dash_m(science_case, tmp_path):
    path = science_case[0]
    proc = subprocess.run(
        [sys.executable, "-m", "caopd.cli", "evaluate", str(path), "--task", "science",
         "--bootstrap", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 60
    proc = subprocess.run(
        [sys.executable, "-m", "caopd.cli", "evaluate", str(path), "--task", "nope"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


# --- issue 13 rows 6 and 10: bad input exits 2 naming the file and line; JSON arguments -------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(
            json.dumps({"response": "<answer>A</answer>", "answer": "A"}).encode() + b"\n"
            + b'{"response": "caf\xe9", "answer": "A"}\n',
            "line 2: byte 0xe9 at column 18 is not UTF-8", id="latin1-byte"),
        pytest.param(
            b"\xef\xbb\xbf" + json.dumps({"response": "<answer>A</answer>", "answer": "A"}).encode(),
            "line 1: starts with a UTF-8 byte-order mark", id="bom"),
        pytest.param(
            b"\xef\xbb\xbf" + json.dumps([{"response": "<answer>A</answer>", "answer": "A"}]).encode(),
            "line 1: starts with a UTF-8 byte-order mark", id="bom-json-list"),
        pytest.param(
            json.dumps({"response": "<answer>A</answer>", "answer": "A"}).encode() + b"\n"
            + json.dumps({"response": "<answer>A</answer>", "answer": "Z"}).encode() + b"\n",
            "line 2: the ground truth is not a valid answer for task 'science'", id="Z-for-science"),
        pytest.param(
            json.dumps({"response": "Action: getX", "golden_answer": [
                {"Action": "getX", "Action_Input": "{}"}]}).encode() + b"\n",
            "line 1: the ground truth is not a valid answer for task 'science'", id="tool-call-for-science"),
    ],
)
def test_bad_input_exits_2_naming_file_and_line(tmp_path, capsys, content, needle):
    path = tmp_path / "preds.jsonl"
    path.write_bytes(content)
    assert main(["evaluate", str(path), "--task", "science", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{path} {needle}" in err, err
    assert "Traceback" not in err


def test_a_science_letter_is_no_tool_call(tmp_path, capsys):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"response": "Action: getX\nAction Input: {}", "answer": "B"}) + "\n")
    assert main(["evaluate", str(path), "--task", "tooluse", "--bootstrap", "0"]) == 2
    assert f"{path} line 1: the ground truth is not a valid answer for task 'tooluse'" in capsys.readouterr().err


def test_tool_arguments_compare_as_json_whatever_their_form(tmp_path, capsys):
    """Row 10: a golden Action_Input given as a JSON object scores a right call right."""
    response = 'Action: getWeather\nAction Input: {"city": "Paris", "unit": "C"}\nConfidence: 0.8'
    goldens = [
        {"Action": "getWeather", "Action_Input": {"unit": "C", "city": "Paris"}},  # an object
        {"Action": "getWeather", "Action_Input": '{"unit": "C", "city": "Paris"}'},  # JSON text
        {"Action": "getWeather", "Action_Input": json.dumps('{"unit": "C", "city": "Paris"}')},  # twice
    ]
    path = tmp_path / "tool.jsonl"
    path.write_text("".join(json.dumps({"response": response, "golden_answer": [g]}) + "\n" for g in goldens))
    assert main(["evaluate", str(path), "--task", "tooluse", "--bootstrap", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    _, truths, _ = load_predictions(path, task="tooluse")
    assert len(set(truths)) == 1
