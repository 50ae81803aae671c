"""The run folder: its frozen layout (the only code that names its files), the rules for starting,
refusing, replacing or resuming it, and the reading of what a run logged."""

# A fresh run is prepared in a staging folder beside the target and renamed into place only once its
# inputs are valid, so bad input never leaves a half-written run behind.

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import write_text_atomic
from peaufine.errors import RunDirError

if TYPE_CHECKING:
    pass


# The files of a run folder, by name: only this module spells them.
RECIPE = "recipe.yaml"  # the resolved recipe; its presence makes a folder a run
ENV = "env.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"  # the stage's results; its presence marks the run finished
PREPARED = "prepared.json"
BUDGET = "budget.json"
LOSS_PLOT = "loss.png"
RUN_FILES = (RECIPE, ENV, METRICS, EVAL, PREPARED, BUDGET, LOSS_PLOT)


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


def _is_run(path: Path) -> bool:
    return RunDir(path).recipe.is_file()


def finished_with(path: Path, recipe_yaml: str) -> bool:
    """A run in `path` finished (it has eval.json) and was started from exactly this recipe."""
    recipe_file, eval_file = RunDir(path).recipe, RunDir(path).eval
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
        stored = RunDir(path).recipe.read_text(encoding="utf-8")
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


def write_json(path: Path, data: Any) -> None:

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
