"""The study: a trial whose worker died (no heartbeat, a dead process, Optuna's own RDB heartbeat) is
failed and its values run again; two worker processes share one search."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from search_files import journal_study, write

from peaufine.drivers.search.loop import optimize
from peaufine.drivers.search.space import Space, load_space
from peaufine.drivers.search.study import (
    ERROR_ATTR,
    HEARTBEAT_ATTR,
    HOST_ATTR,
    PID_ATTR,
    RETRY_ATTR,
    finished_trials,
    open_storage,
)


def optimize_within(seconds: float, *args, **kwargs) -> None:
    """`optimize`, failing the test if it is still waiting after `seconds`."""
    errors = []

    def target():
        try:
            optimize(*args, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"optimize still waiting after {seconds} s"
    if errors:
        raise errors[0]


def running_trial_elsewhere(path: Path, space: Space, **attrs) -> optuna.trial.FrozenTrial:
    """A trial another worker (its own storage handle on the same journal) started and left running."""
    other = optuna.load_study(
        study_name="t", storage=open_storage(path.parent, str(path), heartbeat=1, grace=2)
    )
    trial = other.ask()
    for dim in space.values():
        dim.suggest(trial)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return next(t for t in other.get_trials() if t.number == trial.number)


def test_a_trial_whose_worker_stops_beating_is_retried_after_the_grace_period(tmp_path):
    space = load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    journal = tmp_path / "hb.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    # a worker on another machine: no process to look up, only its heartbeat tells it is alive
    lost = running_trial_elsewhere(
        journal,
        space,
        **{HOST_ATTR: "elsewhere", PID_ATTR: 1, HEARTBEAT_ATTR: time.time()},
    )
    seen = []
    start = time.monotonic()
    optimize_within(
        20, study, space, lambda p, t: seen.append((t.number, p["x"])) or p["x"], 1, heartbeat=0.2, grace=1.0
    )
    waited = time.monotonic() - start
    assert waited >= 1.0  # it waited for the running trial until its heartbeat was stale
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    retry = trials[-1]
    assert retry.user_attrs[RETRY_ATTR] == lost.number and retry.state.name == "COMPLETE"
    assert seen == [(retry.number, lost.params["x"])]  # the same values, run again
    assert ERROR_ATTR not in trials[lost.number].user_attrs  # it does not count as finished
    assert len(finished_trials(study)) == 1


def test_a_trial_of_a_dead_process_on_this_machine_is_retried_at_once(tmp_path):
    import socket

    space = load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    journal = tmp_path / "dead.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = running_trial_elsewhere(
        journal,
        space,
        **{
            HOST_ATTR: socket.gethostname(),
            PID_ATTR: dead.pid,
            HEARTBEAT_ATTR: time.time(),
        },
    )
    start = time.monotonic()
    optimize_within(20, study, space, lambda p, t: p["x"], 1, heartbeat=5.0, grace=60.0)
    assert time.monotonic() - start < 5.0  # no waiting for the 60-second grace
    assert study.get_trials()[-1].params == lost.params


def test_an_rdb_storage_retries_a_stale_trial_through_optunas_own_heartbeat(tmp_path):
    space = load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(tmp_path, url, heartbeat=1.0, grace=1.0)
    study = optuna.create_study(
        storage=storage, study_name="t", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    # a worker elsewhere that beat once, through Optuna's heartbeat table, and then went silent
    other = optuna.load_study(study_name="t", storage=open_storage(tmp_path, url, heartbeat=1, grace=1))
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # asked outside study.optimize
        lost = other.ask()
    x = space["x"].suggest(lost)
    lost.set_user_attr(HOST_ATTR, "elsewhere")
    lost.storage.record_heartbeat(lost._trial_id)
    seen = []
    optimize_within(20, study, space, lambda p, t: seen.append(p["x"]) or p["x"], 1, heartbeat=1.0, grace=1.0)
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    assert seen == [x] and trials[-1].user_attrs[RETRY_ATTR] == lost.number


WORKER = """
import os, sys, time
from pathlib import Path
import optuna
from peaufine.drivers.search.loop import optimize
from peaufine.drivers.search.space import load_space
from peaufine.drivers.search.study import open_storage
ready = Path(sys.argv[2]).parent / "ready"
ready.mkdir(exist_ok=True)
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:  # start together, whatever each one's import time
    time.sleep(0.02)
space = load_space(Path(sys.argv[1]))
storage = open_storage(Path(sys.argv[2]).parent, sys.argv[2], heartbeat=1.0, grace=5.0)
study = optuna.load_study(study_name="t", storage=storage, sampler=optuna.samplers.RandomSampler())
optimize(study, space, lambda p, t: time.sleep(0.1) or p["x"], int(sys.argv[3]))
"""


def test_two_worker_processes_share_one_search(tmp_path):
    space_file = write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}")
    journal = tmp_path / "workers.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(space_file), str(journal), "16"])
        for _ in range(2)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    trials = study.get_trials()
    assert 16 <= len(finished_trials(study)) <= 17  # two workers may both start the last one
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs[PID_ATTR] for t in trials}) == 2  # both took a share
