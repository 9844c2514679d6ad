"""rollouts.prefix_source: teacher (issue 18): the prefixes are sampled from the teacher prompt;
P_acc stays the student's; the plan's shape and keys; the online schedule is refused.

The model is the tiny random Qwen2 with every weight matrix scaled by 10: its greedy output is
chaotic and depends on every prompt token (tests/conftest.py, ``sharp_engine``), so the teacher
prompt and the student prompt of the same example lead to different argmax tokens, and which
prompt a completion was sampled from can be read off its first token by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caopd.completion import rewrite_completion
from caopd.config import ConfigError, deep_merge, resolve
from caopd.plan import build_plan
from caopd.rewrite import build_examples, read_examples, run_rewrite
from caopd.rollouts.engine import RolloutRecord
from caopd.rollouts.prompting import chat_prompt_ids
from caopd.targets import compute_targets
from caopd.tasks.arith import generate, response
from caopd.tasks.prompts import note, teacher_messages

ROOT = Path(__file__).resolve().parent.parent
K = 8
RIGHT = (1, 4, 6)  # the student's correct samples: P_acc = 3/8, written 0.38
P = 3 / 8


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory) -> Path:
    """A base_model-like artifact (``model/``) holding the sharpened tiny model, 2,048 positions
    (a teacher prompt with its demonstration is a few hundred tokens with this vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from caopd.models.random_model import build_tiny_model

    src = build_tiny_model(tmp_path_factory.mktemp("tiny"), max_positions=2048)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    artifact = tmp_path_factory.mktemp("base_model")
    model.save_pretrained(artifact / "model")
    AutoTokenizer.from_pretrained(src).save_pretrained(artifact / "model")
    return artifact


def _student_rollouts(tok, examples) -> list[RolloutRecord]:
    """K crafted student rollouts per example, those of RIGHT correct."""
    records = []
    for example in examples:
        wrong = next(x for x in "ABCD" if x != example.ground_truth)
        for i in range(K):
            letter = example.ground_truth if i in RIGHT else wrong
            text = response(example, answer_letter=letter, confidence=0.9)
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            records.append(RolloutRecord(example.id, i, chat_prompt_ids(tok, example.messages), ids,
                                         text, "stop", 0))
    return records


def _rewrite_cfg(**overrides) -> dict:
    cfg = {"calibration": True, "teacher_mode": "demo", "fallback": "demo", "max_prompt_length": 4096,
           "max_teacher_prompt_length": 4096, "max_completion_length": 64}
    return {**cfg, **overrides}


@pytest.fixture(scope="module")
def round_dirs(sharp_model, tmp_path_factory):
    """One round on disk: the train split (2 examples), the student's rollouts and targets, and
    the teacher_rollouts stage run on them (CaOPD teacher prompt, 2 samples at temperature 1e-3,
    i.e. the argmax continuation)."""
    from transformers import AutoTokenizer

    from caopd.data import write_split
    from caopd.rollouts.files import write_rollouts
    from caopd.rollouts.teacher import teacher_prefix_rollouts
    from caopd.targets import run_targets

    tok = AutoTokenizer.from_pretrained(sharp_model / "model")
    root = tmp_path_factory.mktemp("round")
    examples = generate(2, seed=0, levels=[3])
    (root / "data").mkdir()
    write_split(root / "data" / "train.jsonl", examples)
    write_rollouts(_student_rollouts(tok, examples), root / "rollouts" / "rollouts.parquet")
    run_targets(root / "data", root / "rollouts", root / "targets", "arith")
    params = {
        "rollouts": {"engine": "hf", "k": 2, "temperature": 1e-3, "top_p": 1.0, "max_new_tokens": 6,
                     "batch_size": 8, "tensor_parallel_size": 1},
        "rewrite": {"calibration": True, "teacher_mode": "demo", "fallback": "demo"},
        "round": 1, "slice": [0, 2],
    }
    inputs = {"data": root / "data", "model": sharp_model, "rollouts": root / "rollouts",
              "targets": root / "targets"}
    (root / "teacher").mkdir()
    summary = teacher_prefix_rollouts(params, inputs, root / "teacher", seed=7)
    return tok, examples, root, summary


def _argmax_path(model, prompt_ids: list[int], n: int, eos: int) -> list[int]:
    """The greedy continuation of ``prompt_ids`` computed by hand: argmax, append, repeat."""
    import torch

    ids, out = list(prompt_ids), []
    with torch.no_grad():
        while len(out) < n and (not out or out[-1] != eos):
            out.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            ids.append(out[-1])
    return out


def test_teacher_prefix_rollouts_are_sampled_from_the_teacher_prompt(round_dirs, sharp_model):
    from caopd.rollouts.files import read_rollouts

    from transformers import AutoModelForCausalLM

    tok, examples, root, summary = round_dirs
    model = AutoModelForCausalLM.from_pretrained(sharp_model / "model").eval()
    records = read_rollouts(root / "teacher" / "rollouts.parquet")
    assert summary["n_rollouts"] == len(records) == 2 * len(examples)
    for example in examples:
        teacher = chat_prompt_ids(tok, teacher_messages(example, mode="demo", p_acc=P))
        student = chat_prompt_ids(tok, example.messages)
        assert note(P) in tok.decode(teacher)  # the CaOPD teacher prompt: the student's P_acc, 0.38
        mine = [r for r in records if r.prompt_id == example.id]
        assert [r.prompt_token_ids for r in mine] == [teacher, teacher]
        # by hand: at temperature 1e-3 a sample is the model's argmax path after the prompt it was
        # given: the teacher prompt's, which is not the student prompt's
        after_teacher, after_student = (_argmax_path(model, ids, 6, tok.eos_token_id) for ids in (teacher, student))
        assert after_teacher != after_student
        assert [r.completion_token_ids for r in mine] == [after_teacher, after_teacher]


def test_the_rewrite_trains_on_the_teacher_samples_with_the_students_p_acc(round_dirs, sharp_model):
    from caopd.rollouts.files import read_rollouts

    tok, examples, root, _ = round_dirs
    summary = run_rewrite(root / "data", root / "rollouts", root / "targets", sharp_model / "model",
                          root / "rewrite", _rewrite_cfg(), prefixes_dir=root / "teacher", task="arith")
    rows = read_examples(root / "rewrite" / "examples.parquet")
    teacher = {(r.prompt_id, r.sample_index): r for r in read_rollouts(root / "teacher" / "rollouts.parquet")}
    assert summary["n_examples"] == len(rows) == len(teacher) and summary["prefix_source"] == "teacher"
    suffix = tok("\nConfidence: 0.38", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for row in rows:
        record = teacher[(row["prompt_id"], row["sample_index"])]
        completion = row["student_input_ids"][row["student_prompt_len"]:]
        assert row["p_acc"] == P  # the student's 3 of 8, not the teacher samples' success
        assert completion[-len(suffix):] == suffix
        # the teacher sample, its last confidence (if any) rewritten to the student's P_acc
        assert completion == rewrite_completion(tok, record.completion_token_ids, P, 64)[0]
        assert row["teacher_input_ids"][: row["teacher_prompt_len"]] == record.prompt_token_ids


def _crafted_teacher_prefixes(tok, examples, prompt_of) -> list[RolloutRecord]:
    """K teacher samples per example, every one correct, stating 0.99."""
    records = []
    for example in examples:
        text = response(example, answer_letter=example.ground_truth, confidence=0.99)
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        records += [RolloutRecord(example.id, i, prompt_of(example), ids, text, "stop", 1) for i in range(K)]
    return records


@pytest.mark.parametrize("calibration", [True, False])
def test_p_acc_comes_from_the_student_rollouts(round_dirs, calibration):
    tok, examples, _, _ = round_dirs
    student = _student_rollouts(tok, examples)
    per_rollout, per_prompt = compute_targets(examples, student, "arith")
    p_acc = P if calibration else None
    prefixes = _crafted_teacher_prefixes(
        tok, examples, lambda ex: chat_prompt_ids(tok, teacher_messages(ex, mode="demo", p_acc=p_acc)))
    scores = compute_targets(examples, prefixes, "arith")[0]
    rows, summary = build_examples(examples, student, per_prompt, per_rollout, tok,
                                   _rewrite_cfg(calibration=calibration), prefixes, scores)
    assert len(rows) == K * len(examples) and summary["share_prefixes_correct"] == 1.0
    for row in rows:
        assert row["p_acc"] == P and row["correct"]  # P_acc the student's; verdict the teacher sample's
        text = tok.decode(row["student_input_ids"][row["student_prompt_len"]:], skip_special_tokens=True)
        assert text.endswith("Confidence: 0.38" if calibration else "Confidence: 0.99")
        assert (note(P) in tok.decode(row["teacher_input_ids"][: row["teacher_prompt_len"]])) == calibration


def test_a_prefix_from_another_prompt_is_refused(round_dirs):
    tok, examples, _, _ = round_dirs
    student = _student_rollouts(tok, examples)
    per_rollout, per_prompt = compute_targets(examples, student, "arith")
    prefixes = _crafted_teacher_prefixes(tok, examples, lambda ex: chat_prompt_ids(tok, ex.messages))
    scores = compute_targets(examples, prefixes, "arith")[0]
    with pytest.raises(ValueError, match=f"prompt_id '{examples[0].id}' sample 0.*not the teacher prompt"):
        build_examples(examples, student, per_prompt, per_rollout, tok, _rewrite_cfg(), prefixes, scores)


# --- the plan ----------------------------------------------------------------------------------


def _plan(**variants):
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return build_plan(resolve(deep_merge(raw, {"variants": variants})), ROOT)


def test_a_teacher_prefix_round_samples_both_and_keeps_the_students_targets():
    plan = _plan(sft={"rollouts": {"prefix_source": "teacher"}})
    caopd, sft = plan.variants["caopd"], plan.variants["sft"]
    assert [s.stage for s in sft.stages[2:7]] == ["rollouts", "targets", "teacher_rollouts", "rewrite", "distill"]
    for stage in ("rollouts", "targets"):  # the student's, shared with the student-prefix variant
        assert sft.get(stage, 1).key == caopd.get(stage, 1).key
    teacher, rewrite = sft.get("teacher_rollouts", 1), sft.get("rewrite", 1)
    assert teacher.upstream == {"data": caopd.stages[0].key, "model": caopd.get("base_model").key,
                                "rollouts": caopd.get("rollouts", 1).key, "targets": caopd.get("targets", 1).key}
    assert rewrite.upstream["prefixes"] == teacher.key
    assert rewrite.upstream["targets"] == caopd.get("targets", 1).key  # P_acc: the student's
    assert rewrite.params["prefix_source"] == "teacher" and rewrite.key != caopd.get("rewrite", 1).key
    assert teacher.seed != caopd.get("rollouts", 1).seed


def test_the_default_plan_reads_no_prefix_source():
    """prefix_source: student is in no stage's params, so no key or seed of the default moved."""
    for vplan in _plan().variants.values():
        for spec in vplan.stages:
            assert "prefix_source" not in repr(spec.params), spec.path
            assert spec.stage != "teacher_rollouts"


def test_teacher_prefixes_with_the_online_schedule_are_refused():
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    bad = {"variants": {"x": {"rollouts": {"prefix_source": "teacher"}, "distill": {"schedule": "online"}}}}
    with pytest.raises(ConfigError, match=r"rollouts\.prefix_source.*distill\.schedule"):
        resolve(deep_merge(raw, bad))
