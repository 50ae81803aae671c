"""The Optuna study: samplers, pruners, storage (a journal file, or an RDB), the search a resumed study
must match, and heartbeats and retry for the trials whose worker died."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from peaufine.drivers.search.space import Space
from peaufine.errors import RecipeError, RunDirError
from peaufine.nested import dotted_items
from peaufine.rundir import pid_alive

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "peaufine-search"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")

# Trial attributes the search keeps in the study (user attrs: Optuna's public per-trial store).
CONFIG_ATTR = "peaufine:search"  # study attr: what this study searches, to refuse a different search
HOST_ATTR, PID_ATTR, HEARTBEAT_ATTR = "peaufine:host", "peaufine:pid", "peaufine:heartbeat"
ERROR_ATTR = "peaufine:error"  # a trial that failed because of its parameters (it counts as finished)
RETRY_ATTR = "peaufine:retry_of"  # the trial whose parameters this one runs again
METRICS_ATTR = "peaufine:metrics"


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial and warns about experimental features; the tracker reports instead."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # trial 0 runs the recipe's own values, which may lie outside the space on purpose
            warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def make_sampler(
    name: str, space: Space, *, seed: int, trials: int, startup_trials: int | None = None
) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "grid":
        # every worker must shuffle the grid the same way, so the seed is the user's as is
        return optuna.samplers.GridSampler({k: d.grid_values() for k, d in space.items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # Optuna's default of 10 random start-up trials would make a 20-trial search half random
        startup = startup_trials if startup_trials is not None else max(2, min(5, trials // 4))
        with quiet_optuna():
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    raise RecipeError(f"--sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, warmup_steps: int = 0) -> optuna.pruners.BasePruner:
    """The pruner; no trial is judged before `warmup_steps` (losses early in training, during the
    learning-rate warm-up, rank runs by their step size more than by where they end)."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, warmup_steps) if warmup_steps else "auto"
        )
    raise RecipeError(f"--prune {name!r}: use one of {', '.join(PRUNERS)}")


def open_storage(
    out: Path, storage: str | None, *, heartbeat: float, grace: float
) -> optuna.storages.BaseStorage:
    """Journal file storage by default (several worker processes on one machine or a shared disk);
    an RDB URL for workers on several machines. Only the RDB storage has Optuna's heartbeats; the
    journal gets ours (see `Heartbeat`)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is not None and "://" in storage:
        with quiet_optuna():
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(1, round(grace)),
                heartbeat_stale_trial_callback=retry_trial,
            )
    path = Path(storage) if storage is not None else Path(out) / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _normal(data: Any) -> Any:
    """As the storage gives it back (JSON): tuples become lists, keys strings."""
    return json.loads(json.dumps(data))


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    parts = [
        name for name in ("metric", "direction", "sampler", "space") if stored.get(name) != wanted.get(name)
    ]
    if stored.get("recipe") != wanted.get("recipe"):
        old = dict(dotted_items(yaml.safe_load(stored.get("recipe") or "") or {}))
        new = dict(dotted_items(yaml.safe_load(wanted["recipe"]) or {}))
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        parts.append("recipe (" + ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "") + ")")
    return ", ".join(parts)


def storage_of(study: optuna.Study) -> Any:
    # Optuna has no public handle on a study's storage; failing a dead worker's trial needs it
    return study._storage


def open_study(
    storage: optuna.storages.BaseStorage,
    config: dict[str, Any],
    *,
    direction: str,
    baseline: dict[str, Any] | None,
    out: Path,
    wait: float = 10.0,
) -> tuple[optuna.Study, bool]:
    """Create the study, or join the one in `storage`; returns it and whether this call created it.

    The creator enqueues trial 0 (the baseline) and then stores the configuration, so a worker that
    joins waits for the configuration and finds trial 0 in place. A study holding another search
    is refused, unless nothing in it finished (a typo in --metric is fixed by running again).
    """
    import optuna

    config = _normal(config)
    with quiet_optuna():
        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        except KeyError:
            study = None
        if study is not None:
            deadline = time.monotonic() + wait
            while CONFIG_ATTR not in study.user_attrs and time.monotonic() < deadline:
                time.sleep(0.2)
            stored = study.user_attrs.get(CONFIG_ATTR)
            if stored == config:
                return study, False
            if any(counts_toward_target(t) for t in study.get_trials(deepcopy=False)):
                if stored is None:
                    raise RunDirError(
                        f"{out}: its study '{STUDY_NAME}' was not made by peaufine search; use another --out"
                    )
                raise RunDirError(
                    f"{out} holds a search over another {_differences(stored, config)}; use another "
                    "--out, or the same recipe, space, metric and sampler to continue it"
                )
            optuna.delete_study(study_name=STUDY_NAME, storage=storage)  # nothing in it finished
        try:
            study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            return open_study(storage, config, direction=direction, baseline=baseline, out=out, wait=wait)
        if baseline:
            study.enqueue_trial(baseline)
        study.set_user_attr(CONFIG_ATTR, config)
    return study, True


def counts_toward_target(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the search's target: it completed, was pruned, or failed
    because of its parameters. A trial whose worker died does not count; it is run again."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_target(t)]


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial whose worker stopped, with the same parameters (and grid point)."""
    import optuna

    system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith("peaufine:")}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_ATTR: trial.number},
            system_attrs=system_attrs,
        )
    )


def _abandoned(trial: optuna.trial.FrozenTrial, grace: float, own_heartbeat: bool) -> bool:
    """A running trial whose worker is gone: a dead process on this machine (known at once), or
    no heartbeat for `grace` seconds (journal storage; Optuna watches the RDB storage's)."""
    attrs = trial.user_attrs
    pid = attrs.get(PID_ATTR)
    same_host = attrs.get(HOST_ATTR) == socket.gethostname()
    if same_host and isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
        return True
    if not own_heartbeat:
        return False
    last = attrs.get(HEARTBEAT_ATTR)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    return last is not None and time.time() - last > grace


def recover_abandoned_trials(study: optuna.Study, *, grace: float) -> list[int]:
    """Fail the running trials whose worker is gone and queue each again; returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_of(study)
    native = has_native_heartbeat(storage)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _abandoned(trial, grace, own_heartbeat=not native):
            continue
        try:  # FrozenTrial has no public id; Optuna's own fail_stale_trials does the same
            failed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            failed = False  # another worker got there first, and queued the retry
        if failed:
            retry_trial(study, trial)
            recovered.append(trial.number)
    if native:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)  # calls retry_trial for each (see open_storage)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        recovered += [t.number for t in failed if t.number in running and ERROR_ATTR not in t.user_attrs]
    return recovered


def has_native_heartbeat(storage: Any) -> bool:
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


class Heartbeat:
    """Stamps a running trial with the time every `interval` seconds, so other workers can tell a
    live trial from one whose worker was killed: Optuna's journal storage has no heartbeat (only
    its RDB storage does), and the journal is what several workers on one machine share."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial = trial
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="peaufine-heartbeat", daemon=True)

    def _beat(self) -> None:
        import optuna

        try:
            self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            self.stop.set()  # another worker declared this trial abandoned; nothing left to stamp
        except Exception:  # a storage hiccup: the next beat tries again
            pass

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._beat()

    def __enter__(self) -> Heartbeat:
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
