"""Verdicts and ranking from fixed numbers: the wording says what the numbers say, ties where the
paired difference is not measurable, n/a where forgetting cannot be measured."""

from __future__ import annotations

import pytest

from peaufine.drivers.compare.measure import PerExample, paired, rank_arms
from peaufine.drivers.compare.verdict import VerdictRow, ratio_words, transfer_verdict, verdict
from peaufine.evaluate.stats import mcnemar_exact

FULL = VerdictRow("full", "full fine-tuning", "exact_match", 0.80, 200, 1_000_000, 0.30)


def comparison(difference: float, low: float, high: float, n: int = 200) -> dict:
    return {
        "difference": difference,
        "low": low,
        "high": high,
        "n": n,
        "p_value": 0.5,
        "method": "mcnemar",
        "measurable": low > 0 or high < 0,
    }


def test_lora_reaches_a_share_of_full_with_a_share_of_parameters_and_a_third_of_the_forgetting():
    lora = VerdictRow(
        "lora", "LoRA r=8", "exact_match", 0.776, 200, 4_000, 0.10, comparison(-0.024, -0.06, 0.01)
    )
    line = verdict(lora, FULL)
    assert line.startswith("LoRA r=8 reaches 97% of full fine-tuning's exact match (77.6% vs 80.0%, n=200)")
    assert "with 0.4% of the trainable parameters" in line
    assert "a third of the forgetting" in line
    # the interval includes 0: a tie, however the ratio reads
    assert "no measurable difference from full fine-tuning (95% CI -6.0 to +1.0 points, n=200)" in line


def test_a_measurable_difference_is_said_with_its_direction():
    worse = VerdictRow(
        "freeze",
        "frozen lower half",
        "exact_match",
        0.60,
        200,
        500_000,
        0.60,
        comparison(-0.20, -0.27, -0.13),
    )
    line = verdict(worse, FULL)
    assert "75% of full fine-tuning's exact match" in line
    assert "50.0% of the trainable parameters" in line
    assert "twice the forgetting" in line
    assert "measurably worse than full fine-tuning by 20.0 points" in line


def test_na_forgetting_no_parameters_unpaired_and_the_reference_itself():
    scratch = VerdictRow("scratch", "from scratch", "accuracy", 0.55, 100, 1_000_000, None)
    few = VerdictRow("few", "few-shot", "exact_match", 0.40, 200, 0, 0.0)
    assert "forgetting n/a" in verdict(scratch, FULL)
    assert "not paired question by question with full fine-tuning: not ranked" in verdict(scratch, FULL)
    assert "with no trainable parameters" in verdict(few, FULL)
    assert "and no forgetting;" in verdict(few, FULL)


@pytest.mark.parametrize(
    ("forgetting", "words"), [(0.087, "0.29 times the forgetting"), (17.7, "59 times the forgetting")]
)
def test_a_forgetting_ratio_without_a_name_reads_as_times(forgetting, words):
    # FULL forgets 30%; a ratio far from a named one is said in numbers, without a stray "of"
    row = VerdictRow("ia3", "(IA)3", "exact_match", 0.5, 200, 3_000, forgetting, comparison(-0.3, -0.4, -0.2))
    assert f"and {words};" in verdict(row, FULL)
    assert verdict(FULL, FULL) == (
        "full fine-tuning: exact match 80.0% (n=200), 1,000,000 trainable parameters, forgetting +30.0% "
        "(the reference)"
    )
    assert (
        verdict(VerdictRow("x", "x", "exact_match", None, None, None, None), FULL)
        == "x: exact match not measured"
    )


def test_ratio_words():
    assert [ratio_words(r) for r in (0.26, 0.33, 0.5, 1.02, 2.1, 0.8)] == [
        "a quarter",
        "a third",
        "half",
        "the same",
        "twice",
        "0.8 times",
    ]


def test_ranking_ties_unless_the_paired_difference_is_measurable():
    values = {"full": 0.8, "lora": 0.78, "few": 0.3}
    tie = comparison(-0.02, -0.06, 0.02)
    worse = comparison(-0.5, -0.6, -0.4)
    comparisons = {("full", "lora"): tie, ("full", "few"): worse, ("lora", "few"): worse}
    assert rank_arms(values, comparisons) == [["full", "lora"], ["few"]]
    # the same numbers on fewer questions: nothing measurable, all one tier
    unmeasurable = {k: comparison(v["difference"], -0.9, 0.1, n=5) for k, v in comparisons.items()}
    assert rank_arms(values, unmeasurable) == [["full", "lora", "few"]]
    # no paired record at all: no ranking either
    assert rank_arms(values, {}) == [["full", "lora", "few"]]


def test_paired_uses_mcnemar_on_the_shared_questions():
    a = PerExample({f"q{i}": float(i < 5) for i in range(30)})
    b = PerExample({f"q{i}": float(i < 25) for i in range(30)} | {"only-b": 1.0})
    found = paired(a, b)
    expected = mcnemar_exact([i < 5 for i in range(30)], [i < 25 for i in range(30)]).as_dict()
    assert found == expected and found["measurable"] and found["n"] == 30
    assert paired(a, PerExample({"other": 1.0})) is None


def test_transfer_verdict_words_only_measurable_differences():
    baselines = {"base zero-shot": 0.1, "few-shot": 0.5, "from scratch": None}
    comparisons = {"base zero-shot": comparison(0.6, 0.5, 0.7), "few-shot": comparison(0.2, -0.1, 0.4)}
    assert transfer_verdict(0.7, baselines, comparisons) == (
        "beats base zero-shot (70.0% vs 10.0%); no measurable difference vs few-shot (70.0% vs 50.0%)"
    )
    assert transfer_verdict(None, baselines, comparisons) == "n/a"
