"""Tests for caopd.confidence: the verbal-confidence parser, formatter and label locator."""

from __future__ import annotations

import doctest
import math

import pytest

import caopd.confidence
from caopd.confidence import find_confidence_span, format_confidence, parse_confidence

RESPONSE = "<answer>B</answer>\n"

# (text, expected parse_confidence(text)); ids are the first column of each row.
PARSE_TABLE: list[tuple[str, str, float | None]] = [
    # --- plain labels, case variants
    ("plain", "Confidence: 0.7", 0.7),
    ("lower", "confidence: 0.7", 0.7),
    ("upper", "CONFIDENCE: 0.7", 0.7),
    ("no_space", "Confidence:0.7", 0.7),
    ("space_before_colon", "Confidence : 0.7", 0.7),
    ("equals", "Confidence = 0.7", 0.7),
    ("equals_no_space", "confidence=0.7", 0.7),
    # --- level / score
    ("level", "Confidence level: 0.7", 0.7),
    ("level_upper", "CONFIDENCE LEVEL: 0.7", 0.7),
    ("score_equals", "confidence score = 0.7", 0.7),
    ("score", "Confidence Score: 0.35", 0.35),
    # --- a parenthetical scale after the label (issue 13 row 11: the instruction's own wording)
    ("level_paren_scale", "Confidence level (0.0-1.0): 0.8", 0.8),
    ("paren_scale", "Confidence (0-1): 0.8", 0.8),
    ("paren_percent_bold", "**Confidence (0-100%):** 85%", 0.85),
    ("bracket_scale", "Confidence [0-1] = 0.3", 0.3),
    ("score_paren_words", "confidence score (out of 1): 0.9", 0.9),
    ("paren_without_colon", "Confidence level (0.0-1.0) is high", None),
    # --- markdown emphasis around the label
    ("bold_colon_inside", "**Confidence:** 0.85", 0.85),
    ("bold_colon_outside", "**Confidence**: 0.85", 0.85),
    ("italic", "*Confidence:* 0.85", 0.85),
    ("underscore_bold", "__Confidence__: 0.85", 0.85),
    ("bold_level", "**Confidence level:** 0.6", 0.6),
    ("bold_italic", "***Confidence***: 0.6", 0.6),
    # --- emphasis / quotes around the value
    ("bold_value", "Confidence: **0.6**", 0.6),
    ("quoted_value", 'Confidence: "0.6"', 0.6),
    ("backtick_value", "Confidence: `0.6`", 0.6),
    ("value_next_line", "**Confidence:**\n0.6", 0.6),
    # --- tags
    ("tag", "<confidence>0.8</confidence>", 0.8),
    ("tag_upper", "<CONFIDENCE> .8 </CONFIDENCE>", 0.8),
    ("tag_percent", "<Confidence>80%</Confidence>", 0.8),
    ("tag_word", "<confidence>high</confidence>", None),
    # --- decimal forms
    ("leading_dot", "Confidence: .7", 0.7),
    ("one", "Confidence: 1", 1.0),
    ("one_point_zero", "Confidence: 1.0", 1.0),
    ("zero", "Confidence: 0", 0.0),
    ("zero_point_zero", "Confidence: 0.00", 0.0),
    # --- percentages
    ("percent", "Confidence: 85%", 0.85),
    ("percent_decimal_space", "Confidence: 85.5 %", 0.855),
    ("percent_100", "Confidence: 100%", 1.0),
    ("percent_0", "Confidence: 0%", 0.0),
    ("percent_101", "Confidence: 101%", None),
    # --- fractions
    ("fraction", "Confidence: 3/4", 0.75),
    ("fraction_spaces", "Confidence: 3 / 4", 0.75),
    ("fraction_zero", "Confidence: 0/5", 0.0),
    ("fraction_one", "Confidence: 8/8", 1.0),
    ("fraction_over_one", "Confidence: 5/4", None),
    ("fraction_div_zero", "Confidence: 1/0", None),
    ("fraction_zero_zero", "Confidence: 0/0", None),
    # --- text after the value is ignored
    ("trailing_period", "Confidence: 0.75.", 0.75),
    ("trailing_period_one", "Confidence: 1.", 1.0),
    ("trailing_paren", "Confidence: 0.8 (fairly sure)", 0.8),
    ("trailing_newline", "Confidence: 0.9\n", 0.9),
    ("trailing_comma_text", "Confidence: 0.9, I think", 0.9),
    ("trailing_bold", "**Confidence: 0.9**", 0.9),
    # --- labels inside longer responses
    ("after_answer", RESPONSE + "Confidence: 0.65", 0.65),
    ("after_answer_bold", "Reasoning...\n" + RESPONSE + "**Confidence:** 70%", 0.7),
    ("windows_newlines", "Step 1.\r\n<answer>B</answer>\r\nConfidence: 0.9\r\n", 0.9),
    ("prose_then_label", "I have confidence in B.\n" + RESPONSE + "Confidence: 0.4", 0.4),
    # --- the last label wins, even when invalid
    ("last_wins", "Confidence: 0.2\n" + RESPONSE + "Confidence: 0.9", 0.9),
    ("last_wins_mixed", "<confidence>0.1</confidence>\n**Confidence:** 3/4", 0.75),
    ("last_wins_tag", "Confidence: 0.1\n<confidence>0.3</confidence>", 0.3),
    ("last_invalid_word", "Confidence: 0.9\n" + RESPONSE + "Confidence: high", None),
    ("last_invalid_big", "Confidence: 0.9\nConfidence: 85", None),
    ("last_empty", "Confidence: 0.9\nConfidence:", None),
    ("prose_after_label", "Confidence: 0.9\nI have confidence in this.", 0.9),
    # --- invalid values
    ("word", "Confidence: high", None),
    ("word_bold", "**Confidence:** very high", None),
    ("negative", "Confidence: -0.2", None),
    ("negative_zero", "Confidence: -0", None),
    ("negative_percent", "Confidence: -5%", None),
    ("bare_85", "Confidence: 85", None),
    ("bare_1_5", "Confidence: 1.5", None),
    ("empty", "Confidence:", None),
    ("empty_space", "Confidence:   ", None),
    ("scientific", "Confidence: 1e-3", None),
    ("decimal_comma", "Confidence: 0,8", None),
    ("two_dots", "Confidence: 0.8.5", None),
    # --- no label at all
    ("no_text", "", None),
    ("no_label", RESPONSE, None),
    ("prose_only", "I have confidence in this answer: B", None),
    ("prose_colon_later", "My confidence is: 0.9", None),
    ("glued_word", "overconfidence: 0.9", None),
    ("glued_underscore", "my_confidence: 0.9", None),
    ("closing_tag_only", "</confidence>: 0.9", None),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in PARSE_TABLE],
)
def test_parse_confidence_table(text: str, expected: float | None) -> None:
    got = parse_confidence(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_parse_table_is_large_and_names_are_unique() -> None:
    names = [name for name, _, _ in PARSE_TABLE]
    assert len(names) >= 35
    assert len(set(names)) == len(names)


def test_parse_confidence_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="str"):
        parse_confidence(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", range(9))
def test_format_then_parse_round_trips_pacc(k: int) -> None:
    """A rewritten line ``Confidence: {P_acc:.2f}`` parses back to the formatted value."""
    formatted = format_confidence(k / 8)
    assert parse_confidence(f"{RESPONSE}Confidence: {formatted}") == float(formatted)
    assert abs(float(formatted) - k / 8) <= 0.005 + 1e-12


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.5, "0.50"),
        (1, "1.00"),
        (0, "0.00"),
        (1.0, "1.00"),
        (0.73, "0.73"),
        (0.999, "1.00"),
        # exact binary ties round half to even, as f"{p:.2f}" does
        (0.125, "0.12"),
        (0.375, "0.38"),
        (0.625, "0.62"),
        (0.875, "0.88"),
    ],
)
def test_format_confidence(p: float, expected: str) -> None:
    assert format_confidence(p) == expected
    assert format_confidence(p) == f"{p:.2f}"


@pytest.mark.parametrize("p", [-0.01, 1.01, 2, -1, math.nan, math.inf, -math.inf])
def test_format_confidence_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        format_confidence(p)


@pytest.mark.parametrize("p", ["0.5", None, True])
def test_format_confidence_rejects_non_numbers(p: object) -> None:
    with pytest.raises(TypeError):
        format_confidence(p)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Confidence: 0.9", "Confidence:"),
        (RESPONSE + "Confidence: 0.9", "Confidence:"),
        (RESPONSE + "**Confidence:** 0.9", "**Confidence:"),
        (RESPONSE + "**Confidence**: 0.9", "**Confidence**:"),
        (RESPONSE + "__Confidence__ = 0.9", "__Confidence__ ="),
        (RESPONSE + "confidence level: 0.9", "confidence level:"),
        (RESPONSE + "<confidence>0.9</confidence>", "<confidence>"),
        # the label is found whatever its value
        (RESPONSE + "Confidence: high", "Confidence:"),
    ],
)
def test_find_confidence_span_single_label(text: str, label: str) -> None:
    span = find_confidence_span(text)
    assert span is not None
    start, end = span
    assert text[start:end] == label
    assert start == text.index(label)


def test_find_confidence_span_is_last_label() -> None:
    text = "I have confidence here.\n" + RESPONSE + "**Confidence:** 0.2\nConfidence: 0.9"
    span = find_confidence_span(text)
    assert span is not None
    start, _ = span
    assert text[:start] == "I have confidence here.\n" + RESPONSE + "**Confidence:** 0.2\n"
    # replacing from there with a fresh line is what the rewrite stage does
    rewritten = text[:start] + "Confidence: " + format_confidence(0.375)
    assert parse_confidence(rewritten) == 0.38
    assert find_confidence_span(rewritten) == (start, start + len("Confidence:"))


def test_an_earlier_mention_is_kept() -> None:
    """Issue 13 row 8: the parser reads the last label, so only the last label is replaced."""
    text = "I have low confidence: 47 + 85 = 132(B)\n<answer>B</answer>\nConfidence: 0.9"
    start, _ = find_confidence_span(text)
    assert text[:start] == "I have low confidence: 47 + 85 = 132(B)\n<answer>B</answer>\n"
    assert parse_confidence(text) == 0.9


def test_parenthetical_label_is_found() -> None:
    """Issue 13 row 11: the label with the scale is a label for the parser and the locator."""
    text = RESPONSE + "Confidence level (0.0-1.0): 0.8"
    assert parse_confidence(text) == 0.8
    assert find_confidence_span(text) == (len(RESPONSE), len(text) - len(" 0.8"))


@pytest.mark.parametrize("text", ["", RESPONSE, "I have confidence in this.", "overconfidence: 1"])
def test_find_confidence_span_none(text: str) -> None:
    assert find_confidence_span(text) is None
    assert parse_confidence(text) is None


@pytest.mark.parametrize(
    "text", [pytest.param(text, id=name) for name, text, _ in PARSE_TABLE]
)
def test_cutting_before_the_last_label_keeps_the_parse(text: str) -> None:
    """The parser reads the last label, so the suffix from there parses the same, and the
    prefix before it holds no label after it."""
    span = find_confidence_span(text)
    if span is None:
        assert parse_confidence(text) is None
    else:
        assert parse_confidence(text[span[0] :]) == parse_confidence(text)
        rest = find_confidence_span(text[: span[0]])
        assert rest is None or rest[1] <= span[0]


def test_module_doctests() -> None:
    result = doctest.testmod(caopd.confidence)
    assert result.attempted > 0
    assert result.failed == 0
