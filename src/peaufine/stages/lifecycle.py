"""A stage run's opening and ending: the runtime, the tracker, the run folder prepared in staging and
committed; at the end eval.json, the tracking sinks closed and report.html, on rank 0."""

from __future__ import annotations

import json
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import crash_point
from peaufine.engine.fit import fit
from peaufine.engine.integrations import TRACKING_SINKS, check_tracking, open_tracking
from peaufine.engine.runtime import make_runtime
from peaufine.engine.track import Tracker, add_sink, close_sinks, detach_sinks
from peaufine.errors import RecipeError, RunDirError
from peaufine.models.budget import training_budget
from peaufine.models.build import check_recipe_models
from peaufine.report.pages.write import write_report
from peaufine.report.plots import plot_losses
from peaufine.results import StageResults, write_results
from peaufine.rundir import (
    HEARTBEAT_SECONDS,
    RunDir,
    RunMarker,
    check_target,
    commit_staging,
    mark_run,
    read_metrics,
    remove_stale_staging,
    remove_stale_writes,
    staging_dir,
    write_json,
)

if TYPE_CHECKING:
    from peaufine.engine.fit import FitResult, StepHook
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import Recipe


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str, precision: str, world_size: int, seed: int) -> dict[str, Any]:
    import torch

    packages = [
        "peaufine",
        "torch",
        "transformers",
        "tokenizers",
        "peft",
        "accelerate",
        "datasets",
        "safetensors",
        "numpy",
    ]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in packages},
        "device": device,
        "precision": precision,
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "seed": seed,
        "cuda": torch.version.cuda,
    }


def start_run(
    out: Path,
    recipe_yaml: str,
    runtime: Runtime,
    prepare: Callable[[Path], dict[str, Any]],
    *,
    seed: int,
    stage: str,
    overwrite: bool = False,
    resume: bool = False,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Open the run folder: refuse a wrong target, or prepare a fresh run in staging and commit it,
    marked running (a resumed run is marked running again).

    `prepare(staging)` does everything that can fail on bad input and returns facts for eval.json;
    it runs on rank 0 only, and the other processes read what it wrote once it is in place.
    """
    if runtime.is_main:
        check_target(out, recipe_yaml, overwrite=overwrite, resume=resume)
        for stale in remove_stale_staging(out):
            say(f"removed {stale}: a run killed while it was prepared left it")
        if resume:
            for stale in remove_stale_writes(out):
                say(f"removed {stale}: a run killed while it wrote it left it")
            mark_run(out, "running")
        else:
            staging = staging_dir(out)
            try:
                prepared = prepare(staging)
                RunDir(staging).recipe.write_text(recipe_yaml, encoding="utf-8")
                env = environment(str(runtime.device), runtime.precision, runtime.world_size, seed)
                write_json(RunDir(staging).env, env)
                write_json(RunDir(staging).prepared, prepared)
                RunMarker.new(stage, [p.name for p in staging.iterdir()]).write(staging)
                crash_point("prepare")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            commit_staging(staging, out)
    runtime.barrier()
    return json.loads(RunDir(out).prepared.read_text(encoding="utf-8"))


@dataclass
class StageOutcome:
    """What a stage run returns: its run folder, what fit() reported, and its evaluation (eval.json's
    contents, on rank 0; {} on the other processes)."""

    run: RunDir
    fit: FitResult
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.fit.steps


@dataclass
class OpenedRun:
    """A stage's run folder, ready to train in: where it runs, who speaks, what preparation found."""

    run: RunDir
    runtime: Runtime
    tracker: Tracker
    prepared: dict[str, Any]
    recipe: Recipe


def open_run(
    recipe: Recipe,
    out: Path,
    prepare: Callable[[Recipe, Path, Tracker], dict[str, Any]],
    *,
    overwrite: bool = False,
    resume: bool = False,
    tracker: Tracker | None = None,
) -> OpenedRun:
    """Every stage's opening: the runtime, a tracker that only rank 0 lets speak, and `start_run`."""

    out = Path(out)
    check_tracking(recipe.track)
    runtime = make_runtime(recipe.train)
    tracker = tracker or Tracker(enabled=runtime.is_main)
    prepared = start_run(
        out,
        recipe.to_yaml(),
        runtime,
        lambda staging: prepare(recipe, staging, tracker),
        seed=recipe.train.seed,
        stage=recipe.stage,
        overwrite=overwrite,
        resume=resume,
        say=tracker.say,
    )
    run = RunDir(out)
    if runtime.is_main:
        # a run that died in this process earlier left its tracking sinks behind (a driver's own
        # sinks, such as a search's pruner, were attached for this run and stay)
        detach_sinks(run.metrics, TRACKING_SINKS)
        for sink in open_tracking(recipe, out):
            add_sink(run.metrics, sink)
    return OpenedRun(run, runtime, tracker, prepared, recipe)


def finish_run(run: RunDir, results: StageResults) -> None:
    """Every stage's ending, on rank 0: eval.json, the tracking sinks closed with the final numbers,
    report.html, and the run marked finished (with the entries it wrote)."""
    write_results(run, results)
    close_sinks(run.metrics, results.numbers())
    crash_point("report")
    write_report(run.path)
    mark_run(run.path, "finished", list_entries=True)


class Heartbeat:
    """A step hook that refreshes the run marker's heartbeat about every HEARTBEAT_SECONDS (rank 0)."""

    def __init__(self, run: RunDir, enabled: bool) -> None:
        self.run, self.enabled, self.last = run, enabled, time.monotonic()

    def __call__(self, step: int) -> None:
        if self.enabled and time.monotonic() - self.last >= HEARTBEAT_SECONDS:
            mark_run(self.run.path, "running")
            self.last = time.monotonic()


class Terminated(SystemExit):
    """SIGTERM, turned into an exit (code 143, as the signal's) that unwinds the run and marks it."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def _mark_stopped(opened: OpenedRun, status: str, detail: str | None = None) -> None:
    """Mark a run that is stopping; a marker that cannot be read or written now (damaged, a full disk)
    is warned about, so the error that stopped the run is the one the user sees."""
    try:
        mark_run(opened.run.path, status, detail=detail, list_entries=True)
    except (OSError, RunDirError) as exc:
        opened.tracker.warn(f"the run could not be marked {status}: {exc}")


@contextmanager
def marked_outcome(opened: OpenedRun) -> Iterator[None]:
    """Mark the run failed on an error and interrupted on Ctrl-C or SIGTERM (rank 0; finish_run marks
    it finished). SIGTERM is caught meanwhile, in the main thread only, and the old handler put back."""
    if not opened.runtime.is_main:
        yield
        return
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        _mark_stopped(opened, "interrupted")
        raise
    except BaseException as exc:
        _mark_stopped(opened, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def record_budget(run: RunDir, runtime: Runtime, recipe: Recipe, model: Any) -> None:
    """budget.json, on rank 0: the parameters and training memory of the model as the stage trains it,
    so the report shows the run's own counts instead of rebuilding the model."""
    if runtime.is_main:
        write_json(run.budget, training_budget(model, recipe, runtime.precision))


def require_stage(recipe: Recipe, stage: str) -> None:
    """A stage's command runs that stage's recipes only."""
    if recipe.stage != stage:
        raise RecipeError(f"stage: this command runs stage '{stage}', the recipe says '{recipe.stage}'")


def fit_in_run(
    opened: OpenedRun,
    model: Any,
    objective: Any,
    train_set: Any,
    val_set: Any,
    *,
    resume: bool,
    hooks: list[StepHook] | None,
) -> FitResult:
    """The engine's loop in the stage's run folder, with the recipe's train and eval blocks and the run's
    tracker; `train_set` is a dataset or a step source."""
    recipe = opened.recipe
    result = fit(
        model,
        objective,
        train_set,
        val_set,
        recipe.train,
        recipe.eval,
        opened.runtime,
        run_dir=opened.run.path,
        tracker=opened.tracker,
        resume=resume,
        hooks=hooks,
    )
    crash_point("finish")
    return result


def plot_training(run: RunDir, result: FitResult) -> None:
    """loss.png: the run's training and validation losses, the best step marked."""
    if run.metrics.exists():
        plot_losses(read_metrics(run.metrics), run.loss_plot, result.best_step)


@dataclass(frozen=True)
class StageSpec:
    """One stage: what it checks of a recipe before any folder exists, how it prepares its run folder (in
    staging), and how it trains and measures there; `run` is the stage's command."""

    name: str
    prepare: Callable[[Recipe, Path, Tracker], dict[str, Any]]
    train_and_measure: Callable[[OpenedRun, bool, list[StepHook] | None], StageOutcome]
    check: Callable[[Recipe], None] | None = None

    def refuse(self, recipe: Recipe) -> None:
        """Everything the stage refuses of `recipe` before any folder exists: its model folders
        (models/build.check_recipe_models) and the stage's own `check`."""
        check_recipe_models(recipe)
        if self.check is not None:
            self.check(recipe)

    def run(
        self,
        recipe: Recipe,
        out: Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        tracker: Tracker | None = None,
        hooks: list[StepHook] | None = None,
    ) -> StageOutcome:
        """Run `recipe` into the run folder `out`: checked (its model folders too), prepared in staging
        (bad input leaves no folder), trained, measured and finished; `hooks` are called after every step."""
        self.refuse(recipe)
        opened = open_run(
            recipe, Path(out), self.prepare, overwrite=overwrite, resume=resume, tracker=tracker
        )
        heartbeat = Heartbeat(opened.run, enabled=opened.runtime.is_main)
        with marked_outcome(opened):
            after_step = [*(hooks or []), heartbeat, partial(crash_point, "step")]
            return self.train_and_measure(opened, resume, after_step)
