"""The terminal tables: the validation loss printed is that of the weights the run saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from peaufine.evaluate.answers import answer_changes, score_answers
from peaufine.evaluate.classification import LabelledPredictions, classification_scores, transfer_comparison
from peaufine.evaluate.leakage import leakage
from peaufine.report.terminal import (
    classify_summary,
    dpo_summary,
    pretrain_summary,
    reward_summary,
    rl_summary,
    sft_summary,
)
from peaufine.results import (
    ClassifyResults,
    DpoResults,
    PretrainResults,
    RewardResults,
    RlResults,
    SftResults,
)


def printed(results: PretrainResults) -> str:
    console = Console(width=200, record=True)
    console.print(pretrain_summary(results, Path("run")))
    return console.export_text()


@pytest.mark.parametrize("restored", [False, True])
def test_the_pretrain_table_says_whose_validation_loss_it_prints(restored):
    results = PretrainResults(
        steps=60,
        tokens_seen=1000,
        train_seconds=1.0,
        final_train_loss=0.7,
        val_loss=1.61 if restored else 1.9,
        val_perplexity=5.0,
        best_step=30,
        restored_best=restored,
    )
    text = printed(results)
    assert ("validation loss (best weights, step 30, restored)" in text) == restored
    assert ("1.6100" if restored else "1.9000") in text


def _printed(group) -> str:
    console = Console(width=250, record=True)
    console.print(group)
    return console.export_text()


def test_the_sft_table_shows_each_rate_with_its_interval_n_and_the_paired_wording():

    golds, questions = [f"a{i}" for i in range(15)], [f"q{i}" for i in range(15)]
    before = score_answers(["no"] * 15, golds, questions)
    after = score_answers([*golds[:13], "no", "no"], golds, questions)  # 13 of 15 right
    change = answer_changes(before, after, "validation, after vs before")
    results = SftResults(
        steps=10,
        task_val_loss={"before": 2.0, "after": 1.0},
        answers={"validation": {"before": before.as_dict(), "after": after.as_dict(), "change": change}},
        leakage={"validation": leakage(["x y z"], ["x y z", "a b c"])},
    )
    text = _printed(sft_summary(results, Path("run")))
    # 13/15 by Wilson: [62.1, 96.3]; 0/15: [0.0, 20.4]
    assert "0.0% [0.0, 20.4] -> 86.7% [62.1, 96.3] (n=15)" in text
    assert "F1 (validation)" in text
    assert "exact match (validation, after vs before): better by 86.7 points (95% CI +" in text
    assert "leakage: 1 of 2 validation examples (50.0%)" in text


def test_a_run_written_before_intervals_still_prints():

    old = {"exact_match": 0.5, "f1": 0.5, "n": 4, "samples": []}
    text = _printed(
        sft_summary(SftResults(steps=1, answers={"validation": {"before": old, "after": old}}), Path("r"))
    )
    assert "50.0% -> 50.0% (n=4)" in text


def test_the_classify_table_shows_accuracy_with_its_interval_and_the_transfer_verdict():
    labels = [0, 1] * 10
    wrong = [1 - y for y in labels]
    tuned = LabelledPredictions(labels, labels, classification_scores(labels, labels))
    scratch = LabelledPredictions(wrong, labels, classification_scores(wrong, labels))
    results = ClassifyResults(
        steps=3,
        validation=tuned.scores,
        from_scratch=scratch.scores,
        transfer=transfer_comparison(tuned, scratch),
    )
    text = _printed(classify_summary(results, Path("run")))
    assert "accuracy, fine-tuned" in text and "100.0% [83.9, 100.0] (n=20)" in text
    assert "accuracy, from scratch" in text and "0.0% [0.0, 16.1] (n=20)" in text
    assert "transfer: accuracy, fine-tuned vs from scratch: better by 100.0 points" in text


def test_the_sft_table_shows_the_task_loss_with_its_interval_and_the_loss_changes():
    results = SftResults(
        steps=10,
        task_val_loss={
            "before": 2.0,
            "after": 1.0,
            "before_ci": [1.9, 2.1],
            "after_ci": [0.9, 1.1],
            "n": 12,
            "change": {"wording": "task validation loss, after vs before: better by 1.000 nats (...)"},
        },
        forgetting={"verdict": "no forgetting", "change": {"wording": "general-text loss: no measurable"}},
    )
    text = _printed(sft_summary(results, Path("run")))
    assert "2.0000 [1.9000, 2.1000] -> 1.0000 [0.9000, 1.1000] (n=12)" in text
    assert "task validation loss, after vs before: better by 1.000 nats" in text
    assert "general-text loss: no measurable" in text


def test_the_dpo_and_reward_tables_show_preference_accuracy_with_intervals():
    before = {"likelihood_accuracy_validation": 0.6, "likelihood_accuracy_validation_ci": [0.4, 0.8]}
    after = {"likelihood_accuracy_validation": 0.7, "likelihood_accuracy_validation_ci": [0.5, 0.9]}
    results = DpoResults(
        steps=4, loss="sigmoid", beta=0.1, pairs={"validation": {"pairs": 20}}, before=before, after=after
    )
    text = _printed(dpo_summary(results, Path("run")))
    assert "policy prefers chosen (validation)" in text
    assert "60.0% [40.0, 80.0] -> 70.0% [50.0, 90.0] (n=20)" in text
    assert "validation_ci" not in text  # an interval is no split of its own
    figures = {"pairs": 90, "accuracy": 0.822, "accuracy_ci": [0.73, 0.89], "mean_margin": 1.8}
    text = _printed(reward_summary(RewardResults(steps=1, validation=figures), Path("run")))
    assert "82.2% [73.0, 89.0] (n=90, mean margin 1.80)" in text


def test_the_rl_table_shows_greedy_reward_and_exact_answer_with_intervals():
    before = {"reward_sampled": 0.1, "reward_greedy": 1.0, "reward_greedy_ci": [0.8, 1.2], "prompts": 24}
    after = {
        **before,
        "reward_greedy": 1.1,
        "reward_greedy_ci": [0.9, 1.3],
        "exact_match_greedy": 0.5,
        "exact_match_greedy_ci": [0.3, 0.7],
    }
    text = _printed(rl_summary(RlResults(steps=2, algorithm="grpo", before=before, after=after), Path("r")))
    assert "1.000 [0.800, 1.200] -> 1.100 [0.900, 1.300] (n=24)" in text
    assert "- -> 50.0% [30.0, 70.0] (n=24)" in text
