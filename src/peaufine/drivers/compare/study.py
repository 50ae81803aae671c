"""The study file of `peaufine compare`: one task recipe, its arms (strategies), the shared budget,
the data fractions, seeds and LR search; validated whole before any folder is made."""

# A study names its task as a recipe (a packaged name, a YAML path relative to the study file, or an
# inline mapping) and, optionally, a `base:` pretraining recipe run once into OUT/base, whose run
# becomes the task's model.source (the world study needs the demo's pretrained model: it makes it);
# or `base:` names a finished run folder (the demo's runs/demo/pretrain), used as it is.

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from peaufine.errors import RecipeError
from peaufine.recipe import Block, read_yaml
from peaufine.rundir import RunDir, finished_with

Strategy = Literal[
    "full", "freeze", "lora", "dora", "bottleneck", "ia3", "prompt_tuning", "few_shot", "scratch"
]
TASK_STAGES = ("sft", "classify")


class Arm(Block):
    """One way to adapt the model: a strategy, with its own recipe overrides and learning rates."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the arm's folder under OUT/arms")
    strategy: Strategy
    k: int = Field(3, ge=1, description="few_shot: training examples put in each prompt")
    lr: float | None = Field(None, gt=0.0, description="the arm's learning rate; null: the strategy's")
    lr_grid: list[float] | None = Field(
        None, min_length=2, description="the arm's LR search grid; null: around its learning rate"
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="recipe keys, dotted (model.adapter.r: 16), applied last: may change stage and method",
    )

    @model_validator(mode="after")
    def _grid_positive(self) -> Arm:
        if self.lr_grid is not None and any(lr <= 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid: learning rates must be positive, got {self.lr_grid}")
        return self


class Budget(Block):
    """The same for every arm: a fair comparison trains each for as many steps on as many examples."""

    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class Search(Block):
    enabled: bool = Field(
        True, description="search unless told not to (--no-search); false: only with --search"
    )
    lrs_per_arm: int = Field(3, ge=2, description="points of each arm's LR grid")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="the data fraction the search runs at")


class Study(Block):
    name: str = "compare"
    base: str | dict[str, Any] | None = Field(
        None,
        description="a pretrain recipe run once into OUT/base, or a finished run folder; that run is "
        "the task's model.source",
    )
    task: str | dict[str, Any] = Field(description="an sft or classify recipe: name, path or mapping")
    arms: list[Arm] = Field(min_length=1)
    budget: Budget
    search: Search | None = None
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    parallel: int = Field(2, ge=1, description="arms run at a time, each a process on one thread")
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation of each arm's run")

    @model_validator(mode="after")
    def _distinct(self) -> Study:
        names = [arm.name for arm in self.arms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"arms: two arms are named {', '.join(twice)}")
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"fractions: each must be in (0, 1], got {bad}")
        if len(set(self.fractions)) != len(self.fractions) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("fractions and seeds: each value once")
        return self


@dataclass
class LoadedStudy:
    """A validated study, where it came from, and its task and base recipes as raw mappings."""

    study: Study
    source: str  # the file, or the packaged name, errors name
    folder: Path  # relative paths in the study start here
    task: dict[str, Any]
    base: dict[str, Any] | None
    base_run: Path | None = None  # `base:` as a finished run folder: every arm's model, not re-made


def _packaged(name: str) -> Path | None:
    resource = resources.files("peaufine") / "recipes" / f"{name}.yaml"
    if not resource.is_file():
        return None
    with resources.as_file(resource) as path:
        return Path(path)


def _recipe_mapping(value: str | dict[str, Any], folder: Path, source: str, key: str) -> dict[str, Any]:
    """A recipe given as a mapping, a YAML path (relative to the study) or a packaged name."""
    if isinstance(value, dict):
        return copy.deepcopy(value)
    candidate = Path(value)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        path = candidate if candidate.is_absolute() else folder / candidate
        if not path.is_file():
            raise RecipeError(f"{source}: {key}: recipe file {path} not found")
        return read_yaml(path)
    packaged = _packaged(value)
    if packaged is None:
        raise RecipeError(f"{source}: {key}: '{value}' is neither a YAML path nor a packaged recipe")
    return read_yaml(packaged)


def _finished_run(base: Any, folder: Path, source: str) -> Path | None:
    """`base:` as a run folder (relative to the current folder, else to the study's): a finished one is
    the arms' model; one that did not finish is refused; None when `base` names no run folder."""
    if not isinstance(base, str):
        return None
    for candidate in (Path(base), folder / base):
        recipe = RunDir(candidate).recipe
        if not recipe.is_file():
            continue
        if not finished_with(candidate, recipe.read_text(encoding="utf-8")):
            raise RecipeError(
                f"{source}: base: {candidate} is a run that has not finished; finish it (--resume) or "
                "give a pretrain recipe to make the base here"
            )
        return candidate.resolve()
    return None


def locate_study(study: Path | str, smoke: bool = False) -> Path:
    """The study file: a path, or a packaged study's name (world-compare); `smoke` its -smoke size."""
    given = Path(study)
    if given.exists() and not smoke:
        return given
    if given.exists() or given.suffix or len(given.parts) > 1:
        if smoke:
            raise RecipeError(f"--smoke picks a packaged study's smoke size; {study} is a file")
        raise RecipeError(f"{study}: study file not found")
    name = f"{given.name}-smoke" if smoke else given.name
    packaged = _packaged(name)
    if packaged is None:
        raise RecipeError(f"'{name}' is neither a study file nor a packaged study")
    return packaged


def load_study(path: Path) -> LoadedStudy:
    """The validated study in `path`: every problem one RecipeError naming the file and the key."""
    data = read_yaml(path)
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "study"
            if error["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key '{where}'")
            else:
                given = f" ({error['input']!r})" if not isinstance(error.get("input"), dict | list) else ""
                problems.append(f"{path}: bad value for '{where}'{given}: {error['msg']}")
        raise RecipeError("\n".join(problems)) from None
    source, folder = str(path), Path(path).parent
    task = _recipe_mapping(study.task, folder, source, "task")
    stage = task.get("stage")
    if stage not in TASK_STAGES:
        raise RecipeError(
            f"{source}: task: the task recipe's stage is {stage!r}; a study compares sft or classify "
            "tasks (set stage: sft or stage: classify)"
        )
    base_run = _finished_run(study.base, folder, source)
    if base_run is not None:
        return LoadedStudy(study, source, folder, task, None, base_run)
    base = None if study.base is None else _recipe_mapping(study.base, folder, source, "base")
    if base is not None and base.setdefault("stage", "pretrain") != "pretrain":
        raise RecipeError(f"{source}: base: a base is a pretrain recipe, this one is {base['stage']!r}")
    return LoadedStudy(study, source, folder, task, base)
