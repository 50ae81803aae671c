"""The runs of a study as child processes, `parallel` at a time on one thread each: each child's peak
memory measured on its own, finished runs skipped, half-done ones resumed, failures kept apart."""

# A child is `python -m peaufine.cli <stage> RECIPE --out RUN` (the few-shot arm: this package's
# fewshot module). Its peak resident memory is the kernel's rusage of that one child (ru_maxrss, from
# os.wait4), so every arm's memory is its own process's. What each child did is kept beside its run
# (OUT/processes/<run>.json): a later invocation that skips the finished run still knows its memory.

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import write_text_atomic
from peaufine.engine.checkpoint import CheckpointStore
from peaufine.rundir import RunDir, RunMarker, finished_with, write_json

if TYPE_CHECKING:
    from peaufine.drivers.compare.arms import ArmRun
    from peaufine.engine.track import Tracker

FEW_SHOT_MODULE = "peaufine.drivers.compare.fewshot"


@dataclass
class ProcessRecord:
    """What one child process did: finished or failed (with its error), its time and peak memory."""

    key: str
    status: str  # finished | failed | skipped (finished earlier: the numbers are the earlier run's)
    seconds: float | None = None
    peak_rss_mb: float | None = None
    returncode: int | None = None
    error: str | None = None
    log: str | None = None


def slug(key: str) -> str:
    return key.replace("/", "__")


def _record_path(out: Path, key: str) -> Path:
    return Path(out) / "processes" / f"{slug(key)}.json"


def read_record(out: Path, key: str) -> ProcessRecord | None:
    path = _record_path(out, key)
    if not path.is_file():
        return None
    return ProcessRecord(**json.loads(path.read_text(encoding="utf-8")))


def start_flag(folder: Path, recipe_yaml: str) -> str | None:
    """How a run that is not finished starts: --resume from its latest checkpoint when the folder holds
    this recipe's half-done run; --overwrite when it holds anything else of peaufine's; nothing when
    the folder does not exist."""
    if not folder.exists():
        return None
    marker = RunMarker.read(folder)
    run = RunDir(folder)
    same = run.recipe.is_file() and run.recipe.read_text(encoding="utf-8") == recipe_yaml
    # a run killed before its first checkpoint has a checkpoints/ folder but nothing to resume from
    if marker is not None and same and CheckpointStore(run.checkpoints).checkpoints():
        return "--resume"
    return "--overwrite"


def child_command(run: ArmRun, recipe_file: Path, flag: str | None) -> list[str]:
    entry = ["-m", FEW_SHOT_MODULE] if run.command == "few-shot" else ["-m", "peaufine.cli", run.command]
    folds = ["--folds", str(run.folds)] if run.folds is not None else []
    return [
        sys.executable,
        *entry,
        str(recipe_file),
        "--out",
        str(run.folder),
        *folds,
        *([flag] if flag else []),
    ]


def is_finished(run: ArmRun) -> bool:
    """The run (each of its folds, under k-fold) finished with its recipe."""
    return all(
        finished_with(folder, recipe.to_yaml())
        for folder, recipe in zip(run.fold_folders, run.fold_recipes(), strict=True)
    )


def child_environment() -> dict[str, str]:
    """One thread per child: the study runs `parallel` of them side by side on as many cores."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def last_error(log: Path) -> str:
    """The child's error: its `error:` line (a user's mistake) or its last line (a traceback's)."""
    if not log.is_file():
        return "no log"
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    marked = [line for line in lines if line.startswith("error:")]
    return (marked or lines or ["exited without output"])[-1]


def run_child(run: ArmRun, out: Path) -> ProcessRecord:
    """Run one arm's run in a child process and wait for it, measuring its peak resident memory."""
    recipe_yaml = run.recipe.to_yaml()
    recipe_file = Path(out) / "recipes" / f"{slug(run.key)}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(recipe_file, recipe_yaml)
    log = Path(out) / "logs" / f"{slug(run.key)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # a cross-validation reuses its finished folds and restarts the others by itself
    flag = None if run.folds is not None else start_flag(run.folder, recipe_yaml)
    command = child_command(run, recipe_file, flag)
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=child_environment())
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    finished = process.returncode == 0 and is_finished(run)
    record = ProcessRecord(
        key=run.key,
        status="finished" if finished else "failed",
        seconds=seconds,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        returncode=process.returncode,
        error=None if finished else last_error(log),
        log=str(log.relative_to(out)),
    )
    _record_path(out, run.key).parent.mkdir(exist_ok=True)
    write_json(_record_path(out, run.key), asdict(record))
    return record


def run_all(runs: list[ArmRun], out: Path, parallel: int, tracker: Tracker) -> dict[str, ProcessRecord]:
    """Every run not finished with its recipe, `parallel` at a time; a failure is recorded, the others
    go on. Returns each run's record by key (a skipped run's is the one its process left)."""
    records: dict[str, ProcessRecord] = {}
    pending = []
    for run in runs:
        if is_finished(run):
            earlier = read_record(out, run.key)
            records[run.key] = ProcessRecord(
                run.key,
                "skipped",
                earlier.seconds if earlier else None,
                earlier.peak_rss_mb if earlier else None,
                0,
            )
        else:
            pending.append(run)
    if len(records):
        tracker.say(f"{len(records)} run(s) finished earlier with the same recipe, skipped")
    if not pending:
        return records
    lock = threading.Lock()
    done = [0]

    def one(run: ArmRun) -> None:
        with lock:
            tracker.say(f"{run.command} -> {run.folder}", heading=f"{run.key}:")
        record = run_child(run, out)
        with lock:
            done[0] += 1
            records[run.key] = record
            state = (
                f"finished in {record.seconds:.0f} s, peak memory {record.peak_rss_mb:.0f} MB"
                if record.status == "finished"
                else f"FAILED: {record.error} (log: {Path(out) / str(record.log)})"
            )
            tracker.say(f"[{done[0]}/{len(pending)}] {state}", heading=f"{run.key}:")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(one, run) for run in pending]:
            future.result()
    return records


def records_json(records: dict[str, ProcessRecord]) -> dict[str, Any]:
    return {key: asdict(record) for key, record in records.items()}
