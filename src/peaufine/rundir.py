"""The run directory: its frozen layout, and the rules for starting, refusing, replacing or resuming it.

A fresh run is prepared in a staging folder beside the target and renamed into place only once its
inputs are valid, so bad input never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.errors import RunDirError

if TYPE_CHECKING:
    from peaufine.engine.runtime import Runtime
    from peaufine.engine.track import Tracker
    from peaufine.recipe import Recipe


@dataclass(frozen=True)
class RunDir:
    """Names of everything a run leaves; later stages read these paths, so they do not change."""

    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

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
        return self.path / "eval.json"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"


def _is_run(path: Path) -> bool:
    return (path / "recipe.yaml").is_file()


def finished_with(path: Path, recipe_yaml: str) -> bool:
    """A run in `path` finished (it has eval.json) and was started from exactly this recipe."""
    recipe_file, eval_file = path / "recipe.yaml", path / "eval.json"
    return (
        eval_file.is_file()
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


def refuse_strangers(path: Path, owner: str, ours: Callable[[str], bool]) -> None:
    """Refuse an output folder holding entries that are not `owner`'s (`ours` tells by name): a
    cross-validation or a pipeline writes its runs beside them, and cannot tell what is safe to replace."""
    strangers = sorted(entry.name for entry in folder_entries(path) or [] if not ours(entry.name))
    if strangers:
        more = ", ..." if len(strangers) > 3 else ""
        raise RunDirError(
            f"{path} holds files that are not {owner} ({', '.join(strangers[:3])}{more}); "
            "choose another output folder (peaufine never deletes folders it did not write)"
        )


def check_target(path: Path, recipe_yaml: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse a target that holds something else, before any work is done."""
    if overwrite and resume:
        raise RunDirError("--overwrite and --resume contradict each other: choose one")
    entries = folder_entries(path)
    if not entries:
        if resume:
            missing = "does not exist" if entries is None else "is empty"
            raise RunDirError(f"--resume: {path} {missing}; start the run without --resume")
        return
    if not _is_run(path):
        raise RunDirError(
            f"{path} is not empty and holds no peaufine run (no recipe.yaml); "
            "choose another output folder (peaufine never deletes folders it did not write)"
        )
    if resume:
        stored = (path / "recipe.yaml").read_text(encoding="utf-8")
        if stored != recipe_yaml:
            raise RunDirError(
                f"--resume: {path} was started with a different recipe; resume with the same "
                f"recipe (see {path / 'recipe.yaml'}), or use --overwrite to start over"
            )
        return
    if not overwrite:
        raise RunDirError(
            f"{path} already holds a run; use --resume to continue it or --overwrite to replace it"
        )


def staging_dir(target: Path) -> Path:
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_staging(staging: Path, target: Path) -> None:
    """Put a fully prepared run in place, replacing an old run only now that the new one is valid."""
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)


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


def write_json(path: Path, data: Any) -> None:
    from peaufine.engine.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def start_run(
    out: Path,
    recipe_yaml: str,
    runtime: Runtime,
    prepare: Callable[[Path], dict[str, Any]],
    *,
    seed: int,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Open the run folder: refuse a wrong target, or prepare a fresh run in staging and commit it.

    `prepare(staging)` does everything that can fail on bad input and returns facts for eval.json;
    it runs on rank 0 only, and the other processes read what it wrote once it is in place.
    """
    if runtime.is_main:
        check_target(out, recipe_yaml, overwrite=overwrite, resume=resume)
        if not resume:
            staging = staging_dir(out)
            try:
                prepared = prepare(staging)
                RunDir(staging).recipe.write_text(recipe_yaml, encoding="utf-8")
                env = environment(str(runtime.device), runtime.precision, runtime.world_size, seed)
                write_json(RunDir(staging).env, env)
                write_json(staging / "prepared.json", prepared)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            commit_staging(staging, out)
    runtime.barrier()
    return json.loads((out / "prepared.json").read_text(encoding="utf-8"))


@dataclass
class OpenedRun:
    """A stage's run folder, ready to train in: where it runs, who speaks, what preparation found."""

    run: RunDir
    runtime: Runtime
    tracker: Tracker
    prepared: dict[str, Any]


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
    from peaufine.engine.integrations import TRACKING_SINKS, check_tracking, open_tracking
    from peaufine.engine.runtime import make_runtime
    from peaufine.engine.track import Tracker, add_sink, detach_sinks

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
        overwrite=overwrite,
        resume=resume,
    )
    run = RunDir(out)
    if runtime.is_main:
        # a run that died in this process earlier left its tracking sinks behind (a driver's own
        # sinks, such as a search's pruner, were attached for this run and stay)
        detach_sinks(run.metrics, TRACKING_SINKS)
        for sink in open_tracking(recipe, out):
            add_sink(run.metrics, sink)
    return OpenedRun(run, runtime, tracker, prepared)


def finish_run(run: RunDir, evaluation: dict[str, Any]) -> None:
    """Every stage's ending, on rank 0: eval.json, the tracking sinks closed with the final numbers,
    and report.html. eval.json is written first: it is what marks the run as finished."""
    from peaufine.engine.track import close_sinks
    from peaufine.report.pages.write import write_report
    from peaufine.stages.dispatch import flatten_numbers

    write_json(run.eval, evaluation)
    close_sinks(run.metrics, flatten_numbers(evaluation))
    write_report(run.path)
