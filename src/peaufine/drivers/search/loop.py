"""The trial loop: `optimize` runs trials until enough have finished; it knows nothing of training and
takes any `objective(params, trial)`. Pruning: a trial stopped by its validation loss."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from peaufine.drivers.search.outputs import short_value
from peaufine.drivers.search.space import Space
from peaufine.drivers.search.study import (
    ERROR_ATTR,
    HOST_ATTR,
    PID_ATTR,
    RETRY_ATTR,
    Heartbeat,
    counts_toward_target,
    has_native_heartbeat,
    quiet_optuna,
    recover_abandoned_trials,
    retry_trial,
    storage_of,
)
from peaufine.errors import TrainingError

if TYPE_CHECKING:
    import optuna

    from peaufine.engine.track import Tracker

Objective = Callable[[dict[str, Any], "optuna.Trial"], float]


class TrialFailed(Exception):
    """A trial failed because of its parameters (a diverged loss, an invalid combination, out of
    memory): recorded as FAIL with its reason, counted as finished, and the search goes on."""


def _is_param_failure(exc: BaseException) -> bool:
    """Errors a trial's own values cause: a diverged loss, or a size that does not fit in memory."""
    return isinstance(exc, TrialFailed | TrainingError) or type(exc).__name__ == "OutOfMemoryError"


def optimize(
    study: optuna.Study,
    space: Space,
    objective: Objective,
    n_trials: int,
    *,
    heartbeat: float = 10.0,
    grace: float | None = None,
    tracker: Tracker | None = None,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """Run trials until `n_trials` of them have finished (completed, pruned, or failed because of
    their values), counting those already in the study: a rerun resumes, and several processes on
    the same study share the work. A trial whose worker died is failed and its values run again.

    `objective(params, trial)` returns the trial's value; it may raise `optuna.TrialPruned` (after
    `trial.report`) or `TrialFailed`. Any other exception stops the search, and the trial it
    interrupted is queued to run again on the next call.
    """
    import optuna
    from optuna.trial import TrialState

    grace = grace if grace is not None else 2 * heartbeat
    own_heartbeat = not has_native_heartbeat(storage_of(study))
    grid = isinstance(study.sampler, optuna.samplers.GridSampler)
    host, pid = socket.gethostname(), os.getpid()

    ran: list[int] = []

    def run_one(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        params = {key: dim.suggest(trial, grid=grid) for key, dim in space.items()}
        trial.set_user_attr(HOST_ATTR, host)
        trial.set_user_attr(PID_ATTR, pid)
        if tracker is not None:
            shown = "  ".join(f"{k}={short_value(v)}" for k, v in params.items())
            retry = trial.user_attrs.get(RETRY_ATTR)
            again = f" (trial {retry} again)" if retry is not None else ""
            tracker.say(shown, heading=f"trial {trial.number}{again}:")
        beat = Heartbeat(trial, heartbeat) if own_heartbeat else contextlib.nullcontext()
        with beat:
            try:
                value = float(objective(params, trial))
            except optuna.TrialPruned:
                raise
            except BaseException as exc:
                if _is_param_failure(exc):
                    trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:500])
                    raise TrialFailed(str(exc)) from exc
                # interrupted, or an error unrelated to its values: run these values again next time
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
                retry_trial(study, frozen)
                raise
        if not math.isfinite(value):
            trial.set_user_attr(ERROR_ATTR, f"the objective is {value}")
            raise TrialFailed(f"the objective is {value}")
        return value

    poll = max(0.2, min(heartbeat, 5.0))
    waiting_for: set[int] = set()
    with quiet_optuna():
        while True:
            for number in recover_abandoned_trials(study, grace=grace):
                if tracker is not None:
                    tracker.warn(f"trial {number} was left running by a worker that stopped; it runs again")
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_target(t) for t in trials)
            running = {t.number for t in trials if t.state == TrialState.RUNNING}
            if done >= n_trials:
                return
            if done + len(running) >= n_trials:
                # the rest is running elsewhere: wait, and take over any trial whose worker dies
                if tracker is not None and running - waiting_for:
                    listed = ", ".join(map(str, sorted(running)))
                    tracker.say(f"waiting for trial(s) {listed}, running in another worker")
                waiting_for = running
                time.sleep(poll)
                continue
            ran.clear()
            try:
                study.optimize(run_one, n_trials=1, catch=(TrialFailed,))
            except optuna.exceptions.UpdateFinishedTrialError:
                # another worker declared this trial abandoned while it ran, and queued it again
                if tracker is not None:
                    tracker.warn("a trial ran past its heartbeat grace and was given to another worker")
            if on_trial_end is not None and ran:
                on_trial_end(study, next(t for t in study.get_trials(deepcopy=False) if t.number == ran[0]))


# -- pruning ----------------------------------------------------------------------------------------


def report_and_prune(trial: optuna.Trial, value: float, step: int) -> None:
    """Tell the pruner a trial's validation loss at `step`; stop the trial if the pruner says so."""
    import optuna

    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step}: val_loss {value:.4f}")


class PruningSink:
    """A metric sink that feeds a trial's validation losses to its pruner; raising TrialPruned from
    `write` stops the run (the engine lets a sink's exception through)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def write(self, row: dict[str, Any]) -> None:
        value = row.get("val_loss")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            report_and_prune(self.trial, float(value), int(row.get("step", 0)))

    def close(self, summary: dict[str, float]) -> None:
        pass
