"""The expected stated confidence (caopd.rollouts.expected_confidence) and its metrics block."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from caopd.rollouts.expected_confidence import (
    digit_tokens,
    expected_confidences,
    expected_value,
    value_prefix_length,
)
from caopd.evaluation.stage import _expected_column, summarize_expected
from caopd.evaluation.summary import HEADLINE, score_rows, summarize
from caopd.rollouts.hf import HFEngine


def _one_hot(n: int, i: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float64)
    out[i] = 1.0
    return out


# --- the expectation ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0.00", "0.05", "0.62", "0.99"])
def test_point_masses_give_the_decoded_number(value: str):
    a, b = int(value[2]), int(value[3])
    p_first = _one_hot(2, 0)[None]
    p_tenths = _one_hot(10, a)[None]
    p_hundredths = torch.stack([_one_hot(10, b)] * 10)[None]
    assert expected_value(p_first, p_tenths, p_hundredths).item() == pytest.approx(float(value), abs=1e-12)


def test_a_first_digit_of_one_is_one_whatever_follows():
    p_hundredths = torch.full((1, 10, 10), 0.1, dtype=torch.float64)
    value = expected_value(_one_hot(2, 1)[None], torch.full((1, 10), 0.1, dtype=torch.float64), p_hundredths)
    assert value.item() == pytest.approx(1.0)


def test_uniform_digits():
    # 0.5 * 1.00 + 0.5 * (E[a]/10 + E[b]/100) = 0.5 + 0.5 * (0.45 + 0.045)
    value = expected_value(torch.full((1, 2), 0.5), torch.full((1, 10), 0.1), torch.full((1, 10, 10), 0.1))
    assert value.item() == pytest.approx(0.7475)


def test_mixture_is_the_mean_not_the_mode():
    # 60% "0.10", 40% "0.90": greedy decoding says 0.10, the expectation is 0.42
    p_tenths = 0.6 * _one_hot(10, 1) + 0.4 * _one_hot(10, 9)
    p_hundredths = torch.stack([_one_hot(10, 0)] * 10)
    value = expected_value(_one_hot(2, 0)[None], p_tenths[None], p_hundredths[None])
    assert value.item() == pytest.approx(0.42)


def test_distributions_are_renormalised():
    scale = torch.tensor([[0.3]], dtype=torch.float64)
    p_first, p_tenths, p_hundredths = torch.rand(3, 2).double(), torch.rand(3, 10).double(), torch.rand(3, 10, 10).double()
    plain = expected_value(p_first, p_tenths, p_hundredths)
    scaled = expected_value(p_first * scale, p_tenths * 0.2, p_hundredths * 0.7)
    torch.testing.assert_close(plain, scaled)
    assert ((plain >= 0) & (plain <= 1)).all()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        expected_value(torch.ones(1, 3), torch.ones(1, 10), torch.ones(1, 10, 10))


# --- tokens ---------------------------------------------------------------------------------------

class _MergingTokenizer:
    """Writes every run of digits as one token, as some tokenizers do: no digit-wise expectation."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        import re

        return [hash(piece) % 1000 for piece in re.findall(r"\d+|\D", text)]


def test_digit_tokens_of_the_tiny_tokenizer(engine: HFEngine):
    tokens = digit_tokens(engine.tokenizer)
    assert tokens is not None
    assert [engine.tokenizer.decode([t]) for t in tokens.digits] == [str(d) for d in range(10)]
    assert engine.tokenizer.decode([tokens.dot]) == "."


def test_digit_tokens_refuses_a_tokenizer_that_merges_digits():
    assert digit_tokens(_MergingTokenizer()) is None


def test_value_prefix_length(engine: HFEngine):
    tok = engine.tokenizer
    text = "7 + 5 = 12(B)\n<answer>B</answer>\nConfidence: 0.75"
    ids = tok.encode(text, add_special_tokens=False)
    n = value_prefix_length(tok, ids)
    assert tok.decode(ids[:n]) == "7 + 5 = 12(B)\n<answer>B</answer>\nConfidence: "
    assert value_prefix_length(tok, tok.encode("<answer>B</answer>", add_special_tokens=False)) is None


# --- on a model -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(sharp_engine: HFEngine) -> HFEngine:
    """The sharp tiny model (conftest): distributions that depend on every position, so a
    padding or indexing error changes the result."""
    return sharp_engine


@torch.no_grad()
def _brute_force(engine: HFEngine, prefix: list[int]) -> float:
    """Σ_v v · P(v) over all 101 values "0.00".."0.99", "1.00", one unpadded sequence at a time,
    each digit's distribution renormalised over the digits."""
    tokens = digit_tokens(engine.tokenizer)
    digits = list(tokens.digits)

    def next_digit(ids: list[int]) -> torch.Tensor:
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        p = torch.softmax(logits, -1)[digits]
        return p / p.sum()

    first = next_digit(prefix)[:2]
    first = first / first.sum()  # a confidence starts with 0 or 1
    tenths = next_digit(prefix + [digits[0], tokens.dot])
    total = first[1].item() * 1.0
    for a in range(10):
        hundredths = next_digit(prefix + [digits[0], tokens.dot, digits[a]])
        for b in range(10):
            total += first[0].item() * tenths[a].item() * hundredths[b].item() * (a / 10 + b / 100)
    return total


def test_batched_expectation_matches_brute_force(engine: HFEngine):
    tok = engine.tokenizer
    prompts = [tok.encode(p, add_special_tokens=False) for p in
               ["What is 3 + 4?", "Options: 12(A) 7(B)\nWhat is 3 + 4? Answer with a letter.", "Hi"]]
    completions = [tok.encode(c, add_special_tokens=False) for c in
                   ["3 + 4 = 7(B)\n<answer>B</answer>\nConfidence: 0.5",
                    "<answer>A</answer>\nConfidence: 0.25",
                    "no confidence stated"]]
    got = expected_confidences(engine.model, tok, prompts, completions, batch_size=7)
    assert got[2] is None
    for i in (0, 1):
        n = value_prefix_length(tok, completions[i])
        want = _brute_force(engine, prompts[i] + completions[i][:n])
        assert got[i] == pytest.approx(want, abs=1e-5)
        assert 0.0 <= got[i] <= 1.0


def test_a_tokenizer_that_merges_digits_gives_none(engine: HFEngine):
    assert expected_confidences(engine.model, _MergingTokenizer(), [[1, 2]], [[3, 4]]) == [None]


def test_lengths_must_match(engine: HFEngine):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        expected_confidences(engine.model, engine.tokenizer, [[1], [2]], [[3]])


# --- the metrics block ----------------------------------------------------------------------------

def _scored() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    texts = [f"<answer>{'AB'[i % 2]}</answer>\nConfidence: {rng.random():.2f}" for i in range(40)]
    scored = score_rows(texts, ["A"] * 40, "arith")
    scored.insert(0, "prompt_id", [f"q{i}" for i in range(40)])
    scored.insert(1, "sample_index", 0)
    return scored


def test_block_equals_the_headline_when_the_expectation_is_the_stated_number():
    scored = _scored()
    scored["expected_confidence"] = scored["confidence"]
    cfg = {"n_bins": 10, "bootstrap": 50}
    groups = np.arange(len(scored))
    block = summarize_expected(scored, cfg, seed=3, groups=groups)
    full = summarize(scored, n_bins=10, n_resamples=50, seed=3, groups=groups)
    assert block["n"] == 40
    for name in HEADLINE:
        assert block[name] == pytest.approx(full[name]), name
    assert block["ci95"] == full["ci95"]


def test_block_leaves_out_rows_without_an_expectation():
    scored = _scored()
    scored["expected_confidence"] = np.where(np.arange(40) < 10, np.nan, 0.5)
    block = summarize_expected(scored, {"n_bins": 10, "bootstrap": 0}, seed=0, groups=np.arange(40))
    assert block["n"] == 30
    assert block["mean_confidence"] == pytest.approx(0.5)
    assert block["overconfidence_gap"] == pytest.approx(0.5 - scored["correct"][10:].mean())
    scored["expected_confidence"] = math.nan
    assert summarize_expected(scored, {"n_bins": 10, "bootstrap": 0}, seed=0, groups=np.arange(40))["n"] == 0


def test_expected_column_is_matched_by_answer_and_names_the_file(tmp_path):
    scored = _scored().iloc[:3]
    path = tmp_path / "expected_confidence.parquet"
    pd.DataFrame({"prompt_id": ["q2", "q0", "q1"], "sample_index": [0, 0, 0],
                  "expected_confidence": [0.2, 0.0, None]}).to_parquet(path)
    column = _expected_column(path, scored)
    assert column[0] == 0.0 and math.isnan(column[1]) and column[2] == 0.2
    pd.DataFrame({"prompt_id": ["q0"], "sample_index": [0], "expected_confidence": [0.1]}).to_parquet(path)
    with pytest.raises(ValueError, match="expected_confidence.parquet: no row for answer"):
        _expected_column(path, scored)


def test_metrics_table_carries_the_expected_columns(tmp_path):
    import json

    from caopd.reporting import metrics_table

    body = {"n": 10, "accuracy": 0.5, "mean_confidence": 0.3, "overconfidence_gap": -0.2, "ece": 0.2,
            "ci95": {"accuracy": [0.4, 0.6]}}
    for name, extra in (("greedy", {"expected_confidence": {
            "n": 10, "mean_confidence": 0.52, "overconfidence_gap": 0.02, "ece": 0.05,
            "ci95": {"overconfidence_gap": [-0.01, 0.05]}}}), ("sampled", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({**body, **extra}))
    table = metrics_table({"g": tmp_path / "greedy", "s": tmp_path / "sampled"}).set_index("variant")
    assert table.loc["g", "expected_overconfidence_gap"] == 0.02
    assert (table.loc["g", "expected_overconfidence_gap_lo"], table.loc["g", "expected_overconfidence_gap_hi"]) == (-0.01, 0.05)
    assert table.loc["g", "expected_ece"] == 0.05 and pd.isna(table.loc["s", "expected_ece"])
