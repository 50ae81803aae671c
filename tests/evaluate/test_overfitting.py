"""The overfitting onset read off curves: validation stops improving while training loss keeps falling."""

from __future__ import annotations

from peaufine.evaluate.overfitting import overfitting_report


def rows(train: dict[int, float], val: dict[int, float]) -> list[dict]:
    steps = sorted(set(train) | set(val))
    out = []
    for step in steps:
        row = {"step": step}
        if step in train:
            row["train_loss"] = train[step]
        if step in val:
            row["val_loss"] = val[step]
        out.append(row)
    return out


def test_the_onset_is_the_best_step_when_train_keeps_falling_after_it():
    history = rows({10: 3.0, 20: 2.0, 30: 1.0, 40: 0.5}, {10: 3.1, 20: 2.5, 30: 2.7, 40: 3.0})
    report = overfitting_report(history)
    assert report.overfit and report.onset_step == 20 and report.best_step == 20
    assert report.generalisation_gap == 3.0 - 0.5
    assert "step 20" in report.verdict()


def test_training_loss_logged_on_another_cadence_is_carried_forward():
    history = rows({10: 3.0, 30: 1.0, 50: 0.4}, {25: 2.0, 45: 2.6})
    report = overfitting_report(history)
    assert report.onset_step == 25


def test_no_onset_while_validation_improves_or_training_stalls():
    improving = rows({10: 3.0, 20: 2.0}, {10: 3.0, 20: 2.1})
    assert not overfitting_report(improving).overfit
    both_worse = rows({10: 2.0, 20: 2.5}, {10: 2.0, 20: 2.6})
    assert not overfitting_report(both_worse).overfit
    assert overfitting_report(rows({10: 1.0}, {})).verdict().startswith("not measured")
