"""The work line of an arith answer and the shares that split its accuracy, counted by hand."""

from __future__ import annotations

import hashlib
import json

import pytest

from caopd.cli import main
from caopd.data import write_split
from caopd.diagnostics.arith_work_agreement import agreement, variant_agreement
from caopd.hashing import canonical_json
from caopd.rollouts.engine import RolloutRecord
from caopd.rollouts.files import write_rollouts
from caopd.tasks import arith
from caopd.tasks.arith import response, work_line

from conftest import publish_for_test


def _example():
    return arith.generate(1, seed=3, levels=[3])[0]


def test_work_line_reads_the_value_and_the_glued_letter():
    assert work_line("47 + 85 = 132(B)\n<answer>B</answer>") == (132, "B")
    assert work_line("7 * 12 =84(D)") == (84, "D")
    assert work_line("<answer>B</answer>\nConfidence: 0.5") is None
    assert work_line("47 + 85 = 132 (B)") is None  # the letter must be glued on
    with pytest.raises(TypeError, match="work_line expects a str"):
        work_line(None)


def test_work_line_of_a_written_response_is_its_option():
    ex = _example()
    for letter in "ABCD":
        value = ex.meta["options"]["ABCD".index(letter)]
        assert work_line(response(ex, answer_letter=letter, confidence=0.5)) == (value, letter)


def test_agreement_splits_accuracy_into_value_lookup_and_following():
    ex = _example()
    meta, truth = ex.meta, ex.ground_truth
    wrong = next(L for L in "ABCD" if L != truth)
    wrong_value = meta["options"]["ABCD".index(wrong)]
    line = f"{meta['a']} {meta['op']} {meta['b']} = "
    answers = [
        (ex.id, f"{line}{meta['result']}({truth})\n<answer>{truth}</answer>"),  # all right
        (ex.id, f"{line}{wrong_value}({wrong})\n<answer>{truth}</answer>"),  # wrong value, right answer
        (ex.id, f"{line}{meta['result']}({wrong})\n<answer>{wrong}</answer>"),  # lookup wrong
        (ex.id, f"<answer>{truth}</answer>"),  # no work line
    ]
    got = agreement(answers, {ex.id: ex})
    assert got == {"n": 4, "value_right": 2 / 4, "lookup_right": 2 / 4, "letter_follows": 2 / 4, "accuracy": 3 / 4}


def test_agreement_names_an_unknown_prompt_and_refuses_no_answers():
    ex = _example()
    with pytest.raises(KeyError, match="answer to 'nope'"):
        agreement([("nope", "x")], {ex.id: ex})
    with pytest.raises(ValueError, match="no answers"):
        agreement([], {ex.id: ex})


def test_variant_agreement_reads_a_run_through_its_index(tmp_path, capsys):
    ex = _example()
    data = tmp_path / "results" / "prepare_data" / "d"
    data.mkdir(parents=True)
    write_split(data / "eval.jsonl", [ex])
    spec = {"params": {"split": "eval"}}
    roll = tmp_path / "results" / "eval_rollouts" / hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]
    roll.mkdir(parents=True)
    (roll / "spec.json").write_text(json.dumps(spec))
    text = response(ex, answer_letter=ex.ground_truth, confidence=0.5)
    write_rollouts([RolloutRecord(prompt_id=ex.id, sample_index=0, prompt_token_ids=[1], completion_token_ids=[2],
                                  text=text, finish_reason="stop", seed=0)], roll / "rollouts.parquet")
    publish_for_test(data)  # the readers verify the artifacts they read
    publish_for_test(roll)
    index = tmp_path / "results" / "index"
    index.mkdir()
    stages = [{"stage": "prepare_data", "path": "results/prepare_data/d"},
              {"stage": "eval_rollouts", "path": f"results/eval_rollouts/{roll.name}"}]
    (index / "caopd.json").write_text(json.dumps({"stages": stages}))
    row = variant_agreement(index / "caopd.json")
    assert row == {"n": 1, "value_right": 1.0, "lookup_right": 1.0, "letter_follows": 1.0, "accuracy": 1.0}
    assert main(["work-agreement", str(index)]) == 0
    assert "caopd" in capsys.readouterr().out
    (index / "base.json").write_text(json.dumps({"stages": stages[:1]}))
    with pytest.raises(FileNotFoundError, match="no eval_rollouts stage yet"):
        variant_agreement(index / "base.json")
