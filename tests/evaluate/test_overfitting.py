"""The overfitting onset read off curves: validation stops improving while training loss keeps falling."""

from __future__ import annotations

import pytest

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


def test_the_onset_is_the_best_step_not_the_step_it_was_detected_at():
    # best val at 10 (train 2.0); at 20 val is worse but train rose (2.5): no onset yet;
    # at 30 val is worse and train 1.0 < 2.0: the onset is the best step, 10
    history = rows({10: 2.0, 20: 2.5, 30: 1.0}, {10: 1.0, 20: 1.5, 30: 1.2})
    report = overfitting_report(history)
    assert (report.best_step, report.onset_step, report.overfit) == (10, 10, True)
    assert (report.best_val_loss, report.final_step, report.final_val_loss) == (1.0, 30, 1.2)


def test_no_onset_when_validation_rises_but_training_rises_too():
    history = rows({10: 1.0, 20: 1.5, 30: 2.0}, {10: 2.0, 20: 2.5, 30: 3.0})
    report = overfitting_report(history)
    assert report.best_step == 10 and report.onset_step is None and not report.overfit
    assert report.generalisation_gap == 3.0 - 2.0


def test_no_onset_when_training_loss_only_equals_the_best_steps():
    history = rows({10: 1.0, 20: 1.0}, {10: 2.0, 20: 3.0})
    assert not overfitting_report(history).overfit  # "lower", strictly


def test_both_conditions_must_hold_at_the_same_later_step():
    # best val 1.0 at 10 (train 2.0); at 20 val is worse but train higher; at 30 train is lower but
    # val 1.0005 is within the tolerance (1.0 * 1.001 = 1.001): no step has both
    history = rows({10: 2.0, 20: 2.5, 30: 1.0}, {10: 1.0, 20: 1.5, 30: 1.0005})
    report = overfitting_report(history)
    assert report.onset_step is None and not report.overfit


def test_a_rise_within_the_relative_tolerance_is_not_an_onset():
    # default tolerance 1e-3: the bar is 2.0 * 1.001 = 2.002
    within = rows({10: 2.0, 20: 1.0}, {10: 2.0, 20: 2.0019})
    assert not overfitting_report(within).overfit
    beyond = rows({10: 2.0, 20: 1.0}, {10: 2.0, 20: 2.0021})
    assert overfitting_report(beyond).onset_step == 10


def test_a_rise_exactly_at_a_custom_tolerance_is_not_an_onset():
    history = rows({10: 2.0, 20: 1.0}, {10: 2.0, 20: 3.0})
    # tolerance 0.5: the bar is 2.0 * 1.5 = 3.0 exactly, and the rise must exceed it
    assert not overfitting_report(history, tolerance=0.5).overfit
    assert overfitting_report(history, tolerance=0.49).overfit
    assert overfitting_report(history).overfit  # default tolerance


def test_evaluations_before_the_best_step_never_count():
    # step 10's val 3.0 is worse than the best (2.0 at 20) and its train 1.0 lower, but it comes before
    history = rows({10: 1.0, 20: 2.0}, {10: 3.0, 20: 2.0})
    report = overfitting_report(history)
    assert report.best_step == 20 and not report.overfit


def test_a_tie_for_the_best_validation_loss_takes_the_first_step():
    history = rows({10: 3.0, 20: 2.0, 30: 1.0}, {10: 2.0, 20: 2.0, 30: 2.5})
    report = overfitting_report(history)
    assert report.best_step == 10 and report.onset_step == 10


def test_evaluation_rows_use_the_latest_training_loss_seen():
    # val at 15 takes train 3.0 (step 10); val at 35 takes train 1.0 (step 30, not 40 which comes later)
    history = rows({10: 3.0, 30: 1.0, 40: 0.2}, {15: 2.0, 35: 2.5})
    report = overfitting_report(history)
    assert report.onset_step == 15
    # and with train rising in between, carried forward, no onset: 15 takes 1.0, 35 takes 3.0
    rising = rows({10: 1.0, 30: 3.0}, {15: 2.0, 35: 2.5})
    assert not overfitting_report(rising).overfit


def test_no_onset_when_the_best_step_has_no_training_loss_yet():
    history = [{"step": 10, "val_loss": 1.0}, {"step": 20, "train_loss": 0.5, "val_loss": 2.0}]
    report = overfitting_report(history)
    assert report.best_step == 10 and not report.overfit
    assert report.generalisation_gap == 2.0 - 0.5


def test_the_gap_is_the_last_validation_minus_the_final_training_loss():
    # final train is the last logged (1.0 at 30), after the last evaluation (2.6 at 20): gap 2.6 - 1.0
    history = rows({10: 3.0, 20: 2.0, 30: 1.0}, {10: 2.5, 20: 2.6})
    report = overfitting_report(history)
    assert report.generalisation_gap == pytest.approx(1.6)
    assert (report.final_step, report.final_train_loss, report.final_val_loss) == (20, 1.0, 2.6)
    below = overfitting_report(rows({10: 2.0}, {10: 1.5}))
    assert below.generalisation_gap == -0.5  # validation may sit below training
    no_train = overfitting_report(rows({}, {10: 2.0}))
    assert no_train.generalisation_gap is None and no_train.final_train_loss is None
    assert no_train.best_step == 10 and not no_train.overfit


def test_missing_values_are_skipped():
    history = [
        {"step": 10, "train_loss": 2.0, "val_loss": 1.0},
        {"step": 20, "train_loss": 1.0, "val_loss": None},
        {"step": 30, "train_loss": None, "val_loss": 1.5},
    ]
    # step 30's missing train loss does not replace the 1.0 of step 20, which is below 2.0: an onset
    report = overfitting_report(history)
    assert report.onset_step == 10 and report.final_val_loss == 1.5
    assert (report.final_step, report.final_train_loss) == (30, 1.0)


@pytest.mark.parametrize("restored", [False, True])
def test_no_validation_rows_is_not_measured(restored):
    report = overfitting_report(rows({10: 3.0, 20: 2.0}, {}), restored_best=restored)
    assert report.as_dict() == {
        "best_step": None,
        "best_val_loss": None,
        "final_step": 20,
        "final_train_loss": 2.0,
        "final_val_loss": None,
        "generalisation_gap": None,
        "onset_step": None,
        "overfit": False,
        "restored_best": restored,
        "examples": None,
        "saved_step": None,
        "saved_val_loss": None,
        "meaningful": None,
    }
    assert report.verdict() == "not measured: no validation set"
    empty = overfitting_report([], restored_best=restored)
    assert empty.final_step is None and empty.final_train_loss is None and empty.restored_best is restored
    assert empty.verdict() == "not measured: no validation set"


def test_verdict_strings():
    history = rows({10: 3.0, 20: 2.0, 30: 1.0, 40: 0.5}, {10: 3.1, 20: 2.5, 30: 2.7, 40: 3.0})
    assert overfitting_report(history).verdict() == (
        "overfitting from step 20: validation loss rose from 2.5000 to 3.0000 while training loss kept "
        "falling"
    )
    restored = overfitting_report(history, restored_best=True)
    assert restored.restored_best
    assert restored.verdict() == (
        "overfitting from step 20: validation loss rose from 2.5000 to 3.0000 while training loss kept "
        "falling; the best weights were restored"
    )
    fine = rows({10: 3.0, 20: 2.0}, {10: 3.0, 20: 2.1})
    for restored_best in (False, True):
        report = overfitting_report(fine, restored_best=restored_best)
        assert report.restored_best is restored_best
        assert report.verdict() == "no overfitting seen: validation loss was still at its best at the end"


@pytest.mark.parametrize("restored", [False, True])
def test_the_saved_weights_validation_loss_is_the_best_when_restored(restored):
    history = rows({10: 3.0, 20: 2.0, 30: 1.0}, {10: 3.1, 20: 2.5, 30: 2.7})
    report = overfitting_report(history, restored_best=restored)
    assert (report.saved_step, report.saved_val_loss) == ((20, 2.5) if restored else (30, 2.7))
    assert report.final_val_loss == 2.7  # the last evaluation stays what it is
