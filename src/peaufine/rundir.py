"""The run folder: its frozen layout (the only code that names its files), the rules for starting,
refusing, replacing or resuming it, and the reading of what a run logged."""

# A fresh run is prepared in a staging folder beside the target and renamed into place only once its
# inputs are valid, so bad input never leaves a half-written run behind.

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peaufine.atomic import write_text_atomic
from peaufine.errors import RunDirError

# The files of a run folder, by name: only this module spells them.
RECIPE = "recipe.yaml"  # the resolved recipe
ENV = "env.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"  # the stage's results
PREPARED = "prepared.json"
BUDGET = "budget.json"
LOSS_PLOT = "loss.png"
MARKER = ".peaufine-run.json"  # the run marker (RunMarker): only peaufine writes it; it makes a folder a run
RUN_FILES = (RECIPE, ENV, METRICS, EVAL, PREPARED, BUDGET, LOSS_PLOT, MARKER)
# the layout's folders, and the report: with RUN_FILES, what any run may hold whatever its stage
RUN_FOLDERS = ("model", "adapter", "checkpoints", "tokenizer", "data", "world", "tensorboard")
REPORT = "report.html"
# per-example outcomes, which paired tests (before/after, arm against arm) pair question by question:
# sft's answers (split, when, question, answer, prediction, exact, f1) and classify's predictions
# (split, index, label, prediction, correct)
ANSWERS = "answers.jsonl"
PREDICTIONS = "predictions.jsonl"
# what some stages and the tracking sinks write beside the layout (mlflow.db: track.mlflow's default
# store; rl: samples, its plot and PPO's value head; sft: its chat template and first example; sft and
# classify: their per-example outcomes); the report's plots
STAGE_FILES = (
    "mlflow.db",
    "samples.jsonl",
    "rl.png",
    "value_head.safetensors",
    "chat_template.jinja",
    "first_example.txt",
    ANSWERS,
    PREDICTIONS,
)
_REPORT_PLOT = re.compile(r"^report-[\w-]+\.png$")
# what a write renamed into place leaves while it writes (atomic.write_text_atomic, the model and
# adapter folders, the plots): `.NAME.tmp-PID`, or `.STEM.tmp-PID.SUFFIX`
_WRITING = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(\.\w+)?$")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
HEARTBEAT_SECONDS = 30.0  # a training run's marker is refreshed about this often


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def process_alive(pid: int, host: str) -> bool:
    """Whether process `pid` of `host` is alive; a process of another host is taken as gone (its host
    cannot be asked from here)."""
    return host == socket.gethostname() and pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


@dataclass
class RunMarker:
    """The run marker, `.peaufine-run.json` in a run folder: the one file that makes a folder a
    peaufine run (only peaufine writes it), and how the run stands. The web studio reads a run's status
    from it. Schema 1, a JSON object with these keys:

    - `schema`: 1. A peaufine that changes a key's meaning raises it.
    - `run_id`: 32 hex digits drawn when the run is started; a resume keeps it, --overwrite draws anew.
    - `stage`: the recipe's stage ("pretrain", "sft", ...).
    - `status`: "running" (started or resumed and not ended: if its process is gone, it was killed),
      "finished" (eval.json and report.html written), "failed" (stopped by an error, see `detail`),
      "interrupted" (stopped by Ctrl-C or SIGTERM).
    - `pid`, `host`: the process (rank 0 of a distributed run) and host that last ran it.
    - `started`: when the run was started; `heartbeat`: its last sign of life (at the start, about every
      HEARTBEAT_SECONDS while it trains, at the end). Both UTC, ISO 8601: they sort as times do.
    - `detail`: for "failed", the error in one line; otherwise null.
    - `entries`: the top-level names peaufine put in the folder, listed when the run was prepared and
      when it ended; --overwrite removes those and the layout's (RUN_FILES, RUN_FOLDERS, REPORT) only.
    """

    run_id: str
    stage: str
    status: str
    pid: int
    host: str
    started: str
    heartbeat: str
    detail: str | None = None
    entries: list[str] = field(default_factory=list)
    schema: int = 1

    @classmethod
    def new(cls, stage: str, entries: list[str]) -> RunMarker:
        """The marker of a run starting now in this process."""
        now = _now()
        names = sorted({*entries, MARKER})
        return cls(
            uuid.uuid4().hex, stage, "running", os.getpid(), socket.gethostname(), now, now, None, names
        )

    @classmethod
    def read(cls, folder: Path) -> RunMarker | None:
        """The marker of the run in `folder`; None when there is none."""
        path = Path(folder) / MARKER
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise RunDirError(
                f"{path} is damaged ({exc}); peaufine cannot tell how this run stands: move the folder "
                "aside or choose another output folder"
            ) from exc

    def write(self, folder: Path) -> None:
        write_text_atomic(Path(folder) / MARKER, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def running_elsewhere(self) -> bool:
        """Still running, in a live process other than this one."""
        return self.status == "running" and self.pid != os.getpid() and process_alive(self.pid, self.host)


def mark_run(folder: Path, status: str, *, detail: str | None = None, list_entries: bool = False) -> None:
    """Set the status of the run in `folder` (run by this process, now), its heartbeat to now; with
    `list_entries`, add the names peaufine writes that the folder holds now to the entries (a file the
    user put there while the run ran stays the user's: --overwrite refuses it rather than delete it)."""
    marker = RunMarker.read(folder)
    if marker is None:
        return
    assert status in RUN_STATUSES, status
    entries = marker.entries
    if list_entries:
        written = _ours(marker)
        entries = sorted({*entries, *(p.name for p in Path(folder).iterdir() if written(p.name))})
    replaced = dataclasses.replace(
        marker,
        status=status,
        pid=os.getpid(),
        host=socket.gethostname(),
        heartbeat=_now(),
        detail=detail,
        entries=entries,
    )
    replaced.write(folder)


@dataclass(frozen=True)
class RunDir:
    """Names of everything a run leaves; later stages read these paths, so they do not change."""

    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def env(self) -> Path:
        return self.path / ENV

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def world(self) -> Path:
        return self.path / "world"

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def prepared(self) -> Path:
        return self.path / PREPARED

    @property
    def budget(self) -> Path:
        return self.path / BUDGET

    @property
    def loss_plot(self) -> Path:
        return self.path / LOSS_PLOT

    @property
    def answers(self) -> Path:
        return self.path / ANSWERS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS


def finished_with(path: Path, recipe_yaml: str) -> bool:
    """A run in `path` finished (its marker says so) and was started from exactly this recipe."""
    recipe_file = RunDir(path).recipe
    marker = RunMarker.read(path) if Path(path).is_dir() else None
    return (
        marker is not None
        and marker.status == "finished"
        and recipe_file.is_file()
        and recipe_file.read_text(encoding="utf-8") == recipe_yaml
    )


def folder_entries(path: Path) -> list[Path] | None:
    """What an output folder holds; None while nothing is there. A file in its place is refused."""
    if not path.exists():
        return None
    if not path.is_dir():
        raise RunDirError(f"{path} exists and is not a folder; choose another output folder")
    return list(path.iterdir())


def stranger_names(path: Path, ours: Callable[[str], bool]) -> list[str]:
    """The entries of an output folder that are not ours (`ours` tells by name), sorted."""
    return sorted(entry.name for entry in folder_entries(path) or [] if not ours(entry.name))


def refuse_strangers(path: Path, owner: str, ours: Callable[[str], bool]) -> None:
    """Refuse an output folder holding entries that are not `owner`'s (`ours` tells by name): a
    cross-validation or a pipeline writes its runs beside them, and cannot tell what is safe to replace."""
    strangers = stranger_names(path, ours)
    if strangers:
        more = ", ..." if len(strangers) > 3 else ""
        raise RunDirError(
            f"{path} holds files that are not {owner} ({', '.join(strangers[:3])}{more}); "
            "choose another output folder (peaufine never deletes folders it did not write)"
        )


def _ours(marker: RunMarker) -> Callable[[str], bool]:
    """Whether a top-level name of a marked run folder is one peaufine wrote there."""
    known = {*RUN_FILES, *RUN_FOLDERS, REPORT, *STAGE_FILES, *marker.entries}
    return lambda name: name in known or bool(_WRITING.match(name) or _REPORT_PLOT.match(name))


def check_target(path: Path, recipe_yaml: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse a target that holds something else, before any work is done: peaufine resumes or
    replaces only the runs its marker names, and replaces one only when it holds nothing else."""
    if overwrite and resume:
        raise RunDirError("--overwrite and --resume contradict each other: choose one")
    entries = folder_entries(path)
    if not entries:
        if resume:
            missing = "does not exist" if entries is None else "is empty"
            raise RunDirError(f"--resume: {path} {missing}; start the run without --resume")
        return
    marker = RunMarker.read(path)
    if marker is None:
        if RunDir(path).recipe.is_file():
            raise RunDirError(
                f"{path} holds a recipe.yaml but no run marker ({MARKER}): it is a run made by an older "
                "peaufine, or not a run at all, and peaufine resumes or replaces only the runs it marked. "
                "Choose another output folder, or move this one aside (or delete it yourself) and start "
                "the run again"
            )
        raise RunDirError(
            f"{path} is not empty and holds no peaufine run (no {MARKER}); "
            "choose another output folder (peaufine never deletes folders it did not write)"
        )
    if marker.running_elsewhere():
        raise RunDirError(
            f"{path}: the run is still running (pid {marker.pid} on {marker.host}, last heartbeat "
            f"{marker.heartbeat}); wait for it to end, or stop it, before --resume or --overwrite"
        )
    if resume:
        stored = RunDir(path).recipe
        if not stored.is_file() or stored.read_text(encoding="utf-8") != recipe_yaml:
            raise RunDirError(
                f"--resume: {path} was started with a different recipe; resume with the same "
                f"recipe (see {stored}), or use --overwrite to start over"
            )
        return
    if not overwrite:
        raise RunDirError(
            f"{path} already holds a run; use --resume to continue it or --overwrite to replace it"
        )
    refuse_foreign(path, marker)


def refuse_foreign(path: Path, marker: RunMarker) -> None:
    """--overwrite: refuse a marked run that holds entries peaufine did not write, naming them."""
    strangers = stranger_names(path, _ours(marker))
    if strangers:
        raise RunDirError(
            f"--overwrite: {path} holds files peaufine did not write ({', '.join(strangers)}); move them "
            "out of the run folder first (peaufine deletes only what it wrote)"
        )


def owned_name(prefix: str) -> str:
    """`prefix-HOST-PID`: the name of a folder this process writes and renames into place once whole;
    if the process dies first, `remove_stale` knows it for a dead one's."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}"


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of `folder` named `owned_name(p)`, for any `p` the regular expression `prefix`
    matches whole, by processes of this host that are no longer alive (killed while writing); a live
    process's and another host's are left. Returns what it removed."""
    named = re.compile(f"^(?:{prefix})-(?P<host>.+)-(?P<pid>\\d+)$")
    removed = []
    for entry in Path(folder).iterdir():
        found = named.match(entry.name)
        if found is None:
            continue
        host, pid = found["host"], int(found["pid"])
        if host == socket.gethostname() and not pid_alive(pid):
            _remove(entry)
            removed.append(entry)
    return removed


def remove_stale_staging(target: Path) -> list[Path]:
    """The staging folders a dead process of this host left beside the run folder `target`."""
    parent = target.parent
    return remove_stale(parent, re.escape(f".{target.name}.staging")) if parent.is_dir() else []


def remove_stale_writes(run: Path) -> list[Path]:
    """The partial writes (`.NAME.tmp-PID`) that dead processes left in the run folder `run`. Their names
    carry no host: the run's marker does, and only a run last run on this host is cleared."""
    marker = RunMarker.read(run)
    host = socket.gethostname()
    if marker is None or marker.host != host:
        return []
    removed = []
    for entry in Path(run).iterdir():
        found = _WRITING.match(entry.name)
        if found is not None and not pid_alive(int(found["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def staging_dir(target: Path) -> Path:
    """The folder a fresh run is prepared in, beside `target`: `.NAME.staging-HOST-PID`."""
    staging = target.with_name(owned_name(f".{target.name}.staging"))
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_staging(staging: Path, target: Path) -> None:
    """Put a fully prepared run in place, replacing an old run only now that the new one is valid: its
    entries are removed one by one (the marker last), and the folder only once it is empty."""
    if target.exists():
        marker = RunMarker.read(target)
        if marker is not None:
            refuse_foreign(target, marker)  # checked again: the preparation took a while
            for entry in sorted(target.iterdir(), key=lambda p: p.name == MARKER):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        target.rmdir()  # fails, leaving it, if anything is left
    os.rename(staging, target)


def write_json(path: Path, data: Any) -> None:

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object a line, atomically (per-example outcomes: answers.jsonl, predictions.jsonl)."""
    write_text_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_metrics(path: Path, *, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl. With `torn_tail` (a resume reads it so), a last line that has no
    newline and is not JSON, a row a kill cut short while it was appended, is dropped."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if torn_tail and k == len(lines) - 1 and not text.endswith("\n"):
                break
            raise
    return rows
