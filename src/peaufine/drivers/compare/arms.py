"""Each arm of a study as recipes: its strategy's settings on the task recipe, the study's budget and
data fraction, its learning rate and seed; checked through the recipe's own validation."""

# The strategies only set recipe keys, so an arm is an ordinary run of the stage (sft or classify):
# a kind the installed peaufine does not train yet fails in that run, not here.

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.drivers.crossval import fold_recipe
from peaufine.errors import RecipeError
from peaufine.recipe import set_dotted, validate_recipe

if TYPE_CHECKING:
    from peaufine.drivers.compare.study import Arm, LoadedStudy
    from peaufine.recipe import Recipe

# The packaged learning rate of each strategy: every weight moves, so full fine-tuning and frozen
# layers take small steps; LoRA and adapters start at zero and take steps ten times larger; a soft
# prompt or (IA)3's scales larger still; from scratch, a pretraining-sized step.
DEFAULT_LR: dict[str, float] = {
    "full": 1e-4,
    "freeze": 1e-4,
    "lora": 1e-3,
    "dora": 1e-3,
    "bottleneck": 1e-3,
    "ia3": 1e-2,
    "prompt_tuning": 3e-2,
    "scratch": 1e-3,
}
GRID_STEP = 3.0  # consecutive LR grid points differ by this factor

# What each strategy sets; `model.adapter` replaces the task's adapter block whole (a task's LoRA rank
# is no setting of a bottleneck adapter).
STRATEGY_KEYS: dict[str, dict[str, Any]] = {
    "full": {"model.adapter": {"kind": "none"}},
    "freeze": {"model.adapter": {"kind": "none"}},  # + the lower half of the layers, see freeze_block
    "lora": {"model.adapter": {"kind": "lora", "r": 8, "alpha": 16}},
    "dora": {"model.adapter": {"kind": "lora", "r": 8, "alpha": 16, "dora": True}},
    "bottleneck": {"model.adapter": {"kind": "bottleneck"}},
    "ia3": {"model.adapter": {"kind": "ia3"}},
    "prompt_tuning": {"model.adapter": {"kind": "prompt_tuning"}, "data.packing": False},
    "scratch": {"model.adapter": {"kind": "none"}, "model.init": "scratch"},
    "few_shot": {"model.adapter": {"kind": "none"}},
}
# How each strategy reads in a table and a verdict.
LABELS: dict[str, str] = {
    "full": "full fine-tuning",
    "freeze": "frozen embeddings and lower half",
    "lora": "LoRA r=8",
    "dora": "DoRA r=8",
    "bottleneck": "bottleneck adapters",
    "ia3": "(IA)3",
    "prompt_tuning": "prompt tuning",
    "scratch": "from scratch",
    "few_shot": "few-shot",
}


def arm_lr(arm: Arm) -> float | None:
    """The arm's learning rate when it does not search: its own, else its strategy's (None: no training)."""
    if arm.strategy == "few_shot":
        return None
    return arm.lr if arm.lr is not None else DEFAULT_LR[arm.strategy]


def lr_grid(arm: Arm, points: int) -> list[float]:
    """The arm's LR search grid: its own, else `points` values a factor GRID_STEP apart around its LR."""
    if arm.lr_grid is not None:
        return sorted(arm.lr_grid)
    centre = arm_lr(arm)
    if centre is None:
        return []
    middle = (points - 1) / 2
    return [float(f"{centre * GRID_STEP ** (i - middle):.3g}") for i in range(points)]


def layer_count(model_dir: Path | None) -> int | None:
    """num_hidden_layers (or n_layer) of the model folder's config.json; None while it does not exist."""
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def freeze_block(layers: int | None) -> dict[str, Any]:
    """The freeze strategy: the embeddings and the lower half of the layers (rounded down, at least
    one) frozen; the upper half and the head train. Before the model exists (a base not yet made),
    layer 0 stands in, so the recipe can be validated."""
    count = max(1, (layers or 2) // 2)
    return {"layers": list(range(count)), "embeddings": True}


@dataclass(frozen=True)
class ArmRun:
    """One run of an arm: its folder under OUT/arms, its recipe, and what runs it."""

    arm: str
    strategy: str
    fraction: float
    seed: int
    lr: float | None
    folder: Path
    recipe: Recipe
    searching: bool = False
    folds: int | None = None  # k-fold: the folder is a cross-validation of k runs, fold-<i>

    @property
    def fold_folders(self) -> list[Path]:
        """The run folders that hold the run's numbers: itself, or its k folds."""
        if self.folds is None:
            return [self.folder]
        return [self.folder / f"fold-{i}" for i in range(self.folds)]

    def fold_recipes(self) -> list[Recipe]:
        """The recipe of each folder in fold_folders (crossval.fold_recipe's, for k folds)."""
        if self.folds is None:
            return [self.recipe]
        return [fold_recipe(self.recipe, self.folds, i) for i in range(self.folds)]

    @property
    def command(self) -> str:
        """The peaufine command that makes the run: the stage's, or few-shot (no training)."""
        return "few-shot" if self.strategy == "few_shot" else self.recipe.stage

    @property
    def key(self) -> str:
        lr = f"/lr-{self.lr:g}" if self.searching else ""
        return f"{self.arm}/{self.fraction:g}/{self.seed}{lr}"


def run_folder(out: Path, arm: str, fraction: float, seed: int, lr: float | None, searching: bool) -> Path:
    folder = Path(out) / "arms" / arm / f"{fraction:g}" / str(seed)
    return folder / f"lr-{lr:g}" if searching and lr is not None else folder


def arm_recipe(
    loaded: LoadedStudy,
    arm: Arm,
    *,
    fraction: float,
    seed: int,
    lr: float | None,
    model_source: str | None,
    layers: int | None,
) -> Recipe:
    """The arm's recipe: the task, the strategy's keys, the budget, the fraction, LR and seed, then the
    arm's own overrides; validated, errors naming the study file and the arm."""
    study = loaded.study
    data = copy.deepcopy(loaded.task)
    where = f"{loaded.source}: arm '{arm.name}' ({arm.strategy})"
    keys: dict[str, Any] = copy.deepcopy(STRATEGY_KEYS[arm.strategy])
    if arm.strategy == "freeze":
        keys["model.freeze"] = freeze_block(layers)
    if model_source is not None:
        keys["model.source"] = model_source
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    steps = study.budget.steps
    keys["train.max_steps"] = steps
    keys["train.batch_size"] = study.budget.batch_size
    keys["train.seed"] = seed
    # the task's warmup and floor were set for its own length and LR: scaled to the budget's
    keys["train.warmup_steps"] = min(int(train.get("warmup_steps", steps // 10)), steps // 10)
    if lr is not None:
        keys["train.lr"] = lr
        keys["train.min_lr"] = lr / 10
    # a fraction of the task's training set: of its data.train_fraction when the task caps it (the
    # SST-2 study trains on 3,000 of its 67,349 sentences)
    task_fraction = (data.get("data") or {}).get("train_fraction", 1.0)
    if fraction < 1.0 and isinstance(task_fraction, (int, float)):
        keys["data.train_fraction"] = task_fraction * fraction
    # arms are compared on each one's own numbers: the stage's built-in baselines are arms of their own
    keys["eval.transfer.from_scratch"] = False
    if arm.strategy == "few_shot":
        keys["eval.transfer.few_shot"] = arm.k
    elif data.get("stage") == "sft":
        keys["eval.transfer.few_shot"] = 0
    for key, value in [*keys.items(), *arm.overrides.items()]:
        set_dotted(data, key.split("."), copy.deepcopy(value), f"{where}: {key}")
    recipe = validate_recipe(data, source=where)
    if arm.strategy == "few_shot" and recipe.stage != "sft":
        raise RecipeError(f"{where}: few_shot answers questions in context; it needs an sft task")
    return recipe
