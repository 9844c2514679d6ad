"""Stage rewrite: token-level completion rewrite, the three replacements on every task, SDFT,
correct_solution mode and its fallbacks, truncation, the stage files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from caopd.artifacts import EXAMPLE_COLUMNS
from caopd.completion import cut_completion_ids, rewrite_completion, rewrite_completion_ids, solution_text
from caopd.rewrite import RewriteConfig, build_examples, read_examples, run_rewrite
from caopd.rollouts.engine import RolloutRecord
from caopd.rollouts.prompting import chat_prompt_ids
from caopd.targets import compute_targets
from caopd.tasks.arith import generate, response
from caopd.tasks.base import TaskExample
from caopd.tasks.prompts import note

REPO = Path(__file__).resolve().parents[1]
SHARED = next(
    (p for p in (REPO / "shared/data", REPO.parent / "shared/data") if p.exists()),
    REPO.parent / "shared/data",
)
needs_data = pytest.mark.skipif(not SHARED.exists(), reason=f"no {SHARED}")

P = 3 / 8  # -> "0.38" (round half to even on the binary value)
NOTE_038 = note(P)
BIG = 100_000


def _cfg(**overrides) -> dict:
    cfg = {
        "calibration": True,
        "teacher_mode": "demo",
        "fallback": "demo",
        "max_prompt_length": BIG,
        "max_teacher_prompt_length": BIG,
        "max_completion_length": BIG,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tok():
    """A small byte-level BPE with the chat template (caopd.models.tokenizer), trained on the
    warm-up texts plus lines with a mid-line label, so that ``" Confidence"`` is one token."""
    from caopd.models.tokenizer import train_tokenizer
    from caopd.models.warmup import warmup_mixture

    corpus = []
    for item in warmup_mixture(200, seed=0, levels=[1, 2, 3, 4, 5]):
        corpus += [m["content"] for m in item.messages] + [item.response]
    corpus += [f"<answer>{x}</answer> Confidence: 0.{i % 10}" for i, x in enumerate("ABCD" * 60)]
    return train_tokenizer(corpus, 600)


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _per_char(tok, text: str) -> list[int]:
    """A non-canonical tokenisation: one id per character (each an ASCII byte here)."""
    ids = []
    for ch in text:
        piece = _enc(tok, ch)
        assert len(piece) == 1, ch
        ids += piece
    return ids


def _dec(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _record(tok, example: TaskExample, index: int, ids: list[int], *, prompt_ids=None) -> RolloutRecord:
    eos = tok.eos_token_id
    return RolloutRecord(
        prompt_id=example.id,
        sample_index=index,
        prompt_token_ids=chat_prompt_ids(tok, example.messages) if prompt_ids is None else prompt_ids,
        completion_token_ids=ids,
        text=_dec(tok, ids),
        finish_reason="stop" if ids and ids[-1] == eos else "length",
        seed=0,
    )


def _build(tok, examples, rollouts, task="arith", **cfg):
    per_rollout, per_prompt = compute_targets(examples, rollouts, task)
    return build_examples(examples, rollouts, per_prompt, per_rollout, tok, _cfg(**cfg))


def _parts(tok, row) -> tuple[str, list[int], str]:
    """(student prompt text, completion ids, teacher prompt text) of one example row."""
    s, t = row["student_prompt_len"], row["teacher_prompt_len"]
    completion = row["student_input_ids"][s:]
    assert row["teacher_input_ids"][t:] == completion  # the SAME completion ids
    assert row["completion_len"] == len(completion)
    return (
        tok.decode(row["student_input_ids"][:s]),
        completion,
        tok.decode(row["teacher_input_ids"][:t]),
    )


# --- the tasks ---------------------------------------------------------------------------------


def _arith_case():
    example = generate(1, seed=0, levels=[3])[0]
    wrong = next(x for x in "ABCD" if x != example.ground_truth)
    right_body = response(example, answer_letter=example.ground_truth, confidence=None)
    wrong_body = response(example, answer_letter=wrong, confidence=None)
    return example, right_body, wrong_body


@pytest.fixture(scope="module")
def science_case():
    from caopd.tasks.science import load_split

    example = load_split(str(SHARED / "science_eval"), "eval")[0]
    demo = f"<reasoning>...</reasoning>\n<answer>\n{example.ground_truth}\n</answer>"
    example = dataclasses.replace(example, demonstration=demo)
    wrong = next(x for x in "ABCD" if x != example.ground_truth)
    return example, f"x\n<answer>{example.ground_truth}</answer>", f"x\n<answer>{wrong}</answer>"


@pytest.fixture(scope="module")
def tooluse_case():
    from caopd.tasks.tooluse import load_split

    example = load_split(str(SHARED / "tooluse_eval"), "eval")[0]
    golden = json.loads(example.ground_truth)[0]
    call = f"Action: {golden['Action']}\nAction Input: {golden['Action_Input']}"
    example = dataclasses.replace(example, demonstration=f"Thought: I call the tool.\n{call}")
    return example, f"Thought: ok.\n{call}", "Thought: ok.\nAction: noSuchTool\nAction Input: {}"


@pytest.fixture(params=["arith", pytest.param("science", marks=needs_data),
                        pytest.param("tooluse", marks=needs_data)])
def task_case(request):
    if request.param == "arith":
        return ("arith", *_arith_case())
    return (request.param, *request.getfixturevalue(f"{request.param}_case"))


def _eight_rollouts(tok, example, right_body, wrong_body):
    """K=8 rollouts, 3 correct (P_acc = 3/8), each prefix tokenised one id per character."""
    rollouts, prefixes = [], []
    for i in range(8):
        body = right_body if i in (1, 4, 6) else wrong_body
        prefix = _per_char(tok, body)
        ids = prefix + _enc(tok, f"\nConfidence: 0.9{i}") + [tok.eos_token_id]
        rollouts.append(_record(tok, example, i, ids))
        prefixes.append(prefix)
    return rollouts, prefixes


def test_three_replacements_on_every_task(tok, task_case):
    task, example, right_body, wrong_body = task_case
    rollouts, prefixes = _eight_rollouts(tok, example, right_body, wrong_body)
    rows, summary = _build(tok, [example], rollouts, task)
    assert summary["n_examples"] == 8 and summary["n_prompts"] == 1
    assert [r["sample_index"] for r in rows] == list(range(8))

    for row, record, prefix in zip(rows, rollouts, prefixes):
        assert row["p_acc"] == P and row["rewritten"] is True
        student, completion, teacher = _parts(tok, row)
        # (1) the completion: sampled prefix ids kept verbatim, then the suffix and EOS
        body = right_body if record.sample_index in (1, 4, 6) else wrong_body
        assert _enc(tok, body) != prefix  # re-encoding the kept text would change the ids ...
        assert completion[: len(prefix)] == prefix  # ... the rewrite keeps the sampled ones
        assert completion[-1] == tok.eos_token_id
        assert _dec(tok, completion) == body + "\nConfidence: 0.38"
        assert row["correct"] is (record.sample_index in (1, 4, 6))
        assert row["stated_confidence"] == pytest.approx(float(f"0.9{record.sample_index}"))
        # the student prompt is the rollout's prompt
        assert row["student_input_ids"][: row["student_prompt_len"]] == record.prompt_token_ids
        assert "Confidence: 0.38" not in student and "Note:" not in student
        # (2) the teacher: demo confidence and note replaced, question (and system) kept
        assert f"{example.demonstration}\nConfidence: 0.38" in teacher
        assert "Confidence: 1.00" not in teacher
        assert NOTE_038 in teacher
        assert teacher.index(NOTE_038) < teacher.index("Now answer with a response of your own")
        assert example.question in teacher
        for turn in example.messages[:-1]:
            assert turn["content"] in teacher
        if task == "science":
            assert example.messages[0]["role"] == "system"
            assert "<|im_start|>system\n" + example.messages[0]["content"] in teacher


def test_sdft_leaves_the_completion_untouched(tok, task_case):
    task, example, right_body, wrong_body = task_case
    rollouts, _ = _eight_rollouts(tok, example, right_body, wrong_body)
    rows, summary = _build(tok, [example], rollouts, task, calibration=False)
    assert summary["calibration"] is False
    for row, record in zip(rows, rollouts):
        _, completion, teacher = _parts(tok, row)
        assert completion == record.completion_token_ids
        assert row["rewritten"] is False and row["p_acc"] == P  # P_acc still recorded
        assert f"{example.demonstration}\nConfidence: 1.00" in teacher
        assert "Note:" not in teacher and "0.38" not in teacher
        assert example.question in teacher


# --- the token-level cut -----------------------------------------------------------------------


def test_cut_keeps_sampled_ids_and_drops_whitespace(tok):
    body = "47 + 85 = 132\n<answer>B</answer>"
    prefix = _per_char(tok, body)
    ids = prefix + _enc(tok, "\n\n  Confidence: 0.93") + [tok.eos_token_id]
    assert cut_completion_ids(tok, ids) == prefix
    # a canonical tokenisation: Qwen2's pre-tokenizer glues the newline to "</answer>" (">\n"),
    # a token that ends before the label, so it is kept whole
    canonical = _enc(tok, body + "\nConfidence: 0.93") + [tok.eos_token_id]
    kept = cut_completion_ids(tok, canonical)
    assert tok.decode(kept) == body + "\n"
    assert kept == canonical[: len(kept)]


def test_straddling_token_is_dropped(tok):
    text = "<answer>B</answer> Confidence: 0.9"
    ids = _enc(tok, text) + [tok.eos_token_id]
    pieces = [tok.decode([i]) for i in ids]
    # precondition: one token starts before the label and ends inside it
    assert any(p.startswith(" C") for p in pieces), pieces
    kept = cut_completion_ids(tok, ids)
    assert _dec(tok, kept) == "<answer>B</answer>"
    assert kept == ids[: len(kept)]
    rewritten = rewrite_completion_ids(tok, ids, P)
    assert _dec(tok, rewritten) == "<answer>B</answer>\nConfidence: 0.38"


def test_incomplete_utf8_prefixes(tok):
    """A multi-byte character before the label: its bytes are separate tokens here."""
    body = "<answer>B</answer> \u2713"  # check mark, three bytes
    ids = _enc(tok, body + "\nConfidence: 0.9") + [tok.eos_token_id]
    assert any("\ufffd" in tok.decode(ids[:j]) for j in range(len(ids)))  # precondition
    kept = cut_completion_ids(tok, ids)
    assert _dec(tok, kept) == body and kept == ids[: len(kept)]


def test_no_label_gets_the_suffix(tok):
    example, body, _ = _arith_case()
    ids = _per_char(tok, body)  # cut by max_new_tokens: no label, no EOS
    assert cut_completion_ids(tok, ids) == ids
    assert cut_completion_ids(tok, ids + [tok.eos_token_id]) == ids
    rewritten = rewrite_completion_ids(tok, ids, P)
    assert rewritten == ids + _enc(tok, "\nConfidence: 0.38") + [tok.eos_token_id]
    rows, summary = _build(tok, [example], [_record(tok, example, 0, ids)])
    assert summary["n_without_label"] == 1
    assert rows[0]["p_acc"] == 1.0  # the one rollout is correct
    assert _parts(tok, rows[0])[1] == ids + _enc(tok, "\nConfidence: 1.00") + [tok.eos_token_id]


def test_label_first_and_other_label_forms(tok):
    ids = _enc(tok, "Confidence: 0.9\n<answer>A</answer>") + [tok.eos_token_id]
    assert cut_completion_ids(tok, ids) == []
    assert _dec(tok, rewrite_completion_ids(tok, ids, 1.0)) == "Confidence: 1.00"
    ids = _enc(tok, "<answer>A</answer>\n**Confidence:** 80%") + [tok.eos_token_id]
    rewritten = rewrite_completion_ids(tok, ids, 0.0)
    assert _dec(tok, rewritten) == "<answer>A</answer>\nConfidence: 0.00"


def test_rewrite_rejects_bad_p_acc(tok):
    with pytest.raises(ValueError):
        rewrite_completion_ids(tok, _enc(tok, "x"), 1.5)


def test_newline_absorbing_tokenizer():
    """Qwen2's pre-tokenizer glues a newline to punctuation (``">\\n"``): that sampled token is
    kept, and the suffix then starts at ``Confidence`` so the label is on its own line once."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    qwen2_regex = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(
        [f"<answer>{x}</answer>\nConfidence: 0.{i}" for i, x in enumerate("ABCD" * 25)], trainer
    )
    qtok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    ids = _enc(qtok, "<answer>B</answer>\nConfidence: 0.93") + [qtok.eos_token_id]
    assert ">\n" in [qtok.decode([i]) for i in ids]  # precondition
    kept = cut_completion_ids(qtok, ids)
    assert qtok.decode(kept) == "<answer>B</answer>\n" and kept == ids[: len(kept)]
    rewritten = rewrite_completion_ids(qtok, ids, P)
    assert rewritten == kept + _enc(qtok, "Confidence: 0.38") + [qtok.eos_token_id]
    text = qtok.decode(rewritten, skip_special_tokens=True)
    assert text == "<answer>B</answer>\nConfidence: 0.38"


# --- correct_solution mode -----------------------------------------------------------------------


def _solution_set(tok):
    """Two arith prompts: the first with correct samples 2 and 5, the second with none."""
    a, b = generate(2, seed=4, levels=[3])
    rollouts = []
    for ex, correct_at in ((a, (2, 5)), (b, ())):
        wrong = next(x for x in "ABCD" if x != ex.ground_truth)
        for i in range(6):
            letter = ex.ground_truth if i in correct_at else wrong
            body = f"step {i}\n<answer>{letter}</answer>"
            ids = _enc(tok, body + "\nConfidence: 0.77") + [tok.eos_token_id]
            rollouts.append(_record(tok, ex, i, ids))
    return a, b, rollouts


def test_correct_solution_uses_the_lowest_correct_rollout(tok):
    a, b, rollouts = _solution_set(tok)
    rows, summary = _build(tok, [a, b], rollouts, teacher_mode="correct_solution")
    assert summary["n_fallback"] == 1 and summary["n_skipped"] == 0
    assert summary["n_examples"] == 12 and summary["n_prompts"] == 2
    teacher_a = _parts(tok, next(r for r in rows if r["prompt_id"] == a.id))[2]
    shown = f"Correct solution:\nstep 2\n<answer>{a.ground_truth}</answer>\nConfidence: 0.33"
    assert shown in teacher_a
    assert "step 5" not in teacher_a and a.demonstration not in teacher_a
    assert "0.77" not in teacher_a and note(2 / 6) in teacher_a
    # no correct rollout: the dataset demonstration, in the correct_solution template
    teacher_b = _parts(tok, next(r for r in rows if r["prompt_id"] == b.id))[2]
    assert f"Correct solution:\n{b.demonstration}\nConfidence: 0.00" in teacher_b
    assert note(0.0) in teacher_b

    sdft, _ = _build(tok, [a, b], rollouts, teacher_mode="correct_solution", calibration=False)
    teacher_a = _parts(tok, sdft[0])[2]
    assert "step 2" in teacher_a and "Confidence: 1.00" in teacher_a and "Note:" not in teacher_a


def test_correct_solution_skip(tok):
    a, b, rollouts = _solution_set(tok)
    rows, summary = _build(tok, [a, b], rollouts, teacher_mode="correct_solution", fallback="skip")
    assert summary["n_skipped"] == 1 and summary["n_fallback"] == 0
    assert {r["prompt_id"] for r in rows} == {a.id}
    assert summary["n_examples"] == 6 and summary["n_prompts"] == 1


# --- truncation ----------------------------------------------------------------------------------


def test_teacher_prompt_has_its_own_limit(tok):
    example, body, _ = _arith_case()
    ids = _enc(tok, body + "\nConfidence: 0.9") + [tok.eos_token_id]
    rollouts = [_record(tok, example, 0, ids)]
    student_full = chat_prompt_ids(tok, example.messages)
    (full,), _ = _build(tok, [example], rollouts)
    teacher_full = full["teacher_input_ids"][: full["teacher_prompt_len"]]
    assert len(teacher_full) > len(student_full) > 12

    # the student limit cuts the student prompt only (from the left)
    (row,), summary = _build(tok, [example], rollouts, max_prompt_length=12)
    assert row["student_input_ids"][: row["student_prompt_len"]] == student_full[-12:]
    assert row["teacher_input_ids"][: row["teacher_prompt_len"]] == teacher_full
    assert summary["n_truncated_prompt"] == 1 and summary["n_truncated_teacher_prompt"] == 0

    # the teacher limit cuts the teacher prompt only, to its own length
    limit = len(student_full) + 5
    (row,), summary = _build(tok, [example], rollouts, max_teacher_prompt_length=limit)
    assert row["teacher_prompt_len"] == limit
    assert row["teacher_input_ids"][:limit] == teacher_full[-limit:]
    assert row["student_input_ids"][: row["student_prompt_len"]] == student_full
    assert summary["n_truncated_prompt"] == 0 and summary["n_truncated_teacher_prompt"] == 1

    # the completion keeps its first ids, and its suffix and EOS
    suffix = _enc(tok, f"\nConfidence: {full['p_acc']:.2f}") + [tok.eos_token_id]
    limit = len(suffix) + 5
    (row,), summary = _build(tok, [example], rollouts, max_completion_length=limit)
    full = rewrite_completion_ids(tok, ids, full["p_acc"])
    assert _parts(tok, row)[1] == full[:5] + suffix
    assert summary["n_truncated_completion"] == 1


# --- issue 13: the last label, the length cap, the parenthetical label ---------------------------


def test_only_the_last_label_is_replaced(tok):
    """Row 8: an earlier "confidence:" in the work must not cut the work and the answer away."""
    body = "I have low confidence: 47 + 85 = 132(B)\n<answer>B</answer>"
    ids = _enc(tok, body + "\nConfidence: 0.9") + [tok.eos_token_id]
    assert _dec(tok, rewrite_completion_ids(tok, ids, P)) == body + "\nConfidence: 0.38"
    assert solution_text(body + "\nConfidence: 0.9") == body


def test_the_suffix_and_eos_survive_the_length_cap(tok):
    """Row 9: a length-capped rollout with no label, at max_new_tokens 40 and
    max_completion_length 48: 40 ids + suffix + EOS would be 49; the prefix gives way."""
    example, body, _ = _arith_case()
    ids = (_per_char(tok, body) * 3)[:40]  # 40 sampled ids, cut by max_new_tokens: no label
    suffix = _enc(tok, "\nConfidence: 0.62") + [tok.eos_token_id]
    assert len(ids) + len(suffix) > 48  # precondition: the default run's case
    completion, shortened = rewrite_completion(tok, ids, 0.625, max_length=48)
    assert shortened and len(completion) == 48
    assert completion[-len(suffix):] == suffix and completion[-1] == tok.eos_token_id
    assert completion[: 48 - len(suffix)] == ids[: 48 - len(suffix)]
    (row,), summary = _build(
        tok, [example], [_record(tok, example, 0, ids)], max_completion_length=48
    )
    student = row["student_input_ids"]
    assert row["completion_len"] == 48 and student[-1] == tok.eos_token_id
    assert row["teacher_input_ids"][-1] == tok.eos_token_id
    assert summary["n_truncated_completion"] == 1
    with pytest.raises(ValueError, match="max_completion_length"):
        rewrite_completion(tok, ids, 0.625, max_length=len(suffix) - 2)


def test_a_parenthetical_label_is_replaced_not_doubled(tok):
    """Row 11: ``Confidence level (0.0-1.0): 0.8`` is the label; no second line is appended."""
    body = "47 + 85 = 132(B)\n<answer>B</answer>"
    ids = _enc(tok, body + "\nConfidence level (0.0-1.0): 0.8") + [tok.eos_token_id]
    text = _dec(tok, rewrite_completion_ids(tok, ids, P))
    assert text == body + "\nConfidence: 0.38"
    assert text.lower().count("confidence") == 1


# --- errors --------------------------------------------------------------------------------------


def test_unknown_prompt_id_raises_naming_it(tok):
    example, body, _ = _arith_case()
    ids = _enc(tok, body) + [tok.eos_token_id]
    known = _record(tok, example, 0, ids)
    stray = dataclasses.replace(known, prompt_id="arith-train-424242")
    per_rollout, per_prompt = compute_targets([example], [known], "arith")
    with pytest.raises(ValueError, match="arith-train-424242"):
        build_examples([example], [known, stray], per_prompt, per_rollout, tok, _cfg())


def test_prompt_ids_mismatch_raises_naming_it(tok):
    example, body, _ = _arith_case()
    bad = _record(tok, example, 0, _enc(tok, body), prompt_ids=[5, 6, 7])
    with pytest.raises(ValueError, match=example.id):
        _build(tok, [example], [bad])


@pytest.mark.parametrize(
    "overrides",
    [{"teacher_mode": "solution"}, {"fallback": "none"}, {"max_teacher_prompt_length": 0},
     {"calibration": "yes"}, {"extra": 1}],
)
def test_bad_config(overrides):
    with pytest.raises(ValueError, match="rewrite"):
        RewriteConfig.from_mapping(_cfg(**overrides))


# --- the stage -----------------------------------------------------------------------------------


def test_run_rewrite_files(tmp_path, tok):
    from caopd.data import write_split
    from caopd.models.tokenizer import save_tokenizer
    from caopd.rollouts.files import write_rollouts
    from caopd.targets import run_targets

    a, b, rollouts = _solution_set(tok)
    data, roll, tokdir = tmp_path / "data", tmp_path / "rollouts", tmp_path / "tok"
    data.mkdir()
    write_split(data / "train.jsonl", [a, b])
    write_rollouts(rollouts, roll / "rollouts.parquet")
    save_tokenizer(tok, tokdir)
    run_targets(data, roll, tmp_path / "targets", "arith")

    cfg = _cfg(teacher_mode="correct_solution")
    summary = run_rewrite(data, roll, tmp_path / "targets", tokdir, tmp_path / "r1", cfg)
    again = run_rewrite(data, roll, tmp_path / "targets", tokdir, tmp_path / "r2", cfg)
    assert summary == again and summary["n_examples"] == 12
    for name in ("examples.parquet", "preview.jsonl"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes()

    stored = read_examples(tmp_path / "r1" / "examples.parquet")
    expected, _ = _build(tok, [a, b], rollouts, teacher_mode="correct_solution")
    assert [list(r) for r in stored] == [list(EXAMPLE_COLUMNS)] * 12
    for got, want in zip(stored, expected):
        for key in EXAMPLE_COLUMNS:
            if isinstance(want[key], float) and math.isnan(want[key]):
                assert math.isnan(got[key])
            else:
                assert got[key] == want[key], key

    lines = (tmp_path / "r1" / "preview.jsonl").read_text(encoding="utf-8").splitlines()
    preview = [json.loads(line) for line in lines]
    assert len(preview) == 12
    assert preview[0]["completion"].endswith("\nConfidence: 0.33<|im_end|>")
    assert "Correct solution:" in preview[0]["teacher_prompt"]
    assert preview[0]["student_prompt"].endswith("<|im_start|>assistant\n")
