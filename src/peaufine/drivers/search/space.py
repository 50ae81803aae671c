"""The search space file: each searched recipe key as a float or int range or a list of choices, read,
checked, and checked again against the recipe schema; trial 0's values, read from the recipe itself."""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peaufine.errors import RecipeError
from peaufine.recipe import Recipe, read_yaml, set_dotted, validate_recipe

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Dimension:
    """One searched recipe key: a float or int range, or a list of choices."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] | None = None
    source: str = field(default="space", compare=False)

    def suggest(self, trial: optuna.Trial, *, grid: bool = False) -> Any:
        if grid:
            # the grid sampler hands out grid points; a categorical distribution holds exactly them
            return trial.suggest_categorical(self.key, self.grid_values())
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise RecipeError(
                f"{self.source}: '{self.key}' is a continuous range; --sampler grid needs its `step` "
                "or an explicit `grid: [values]`"
            )
        count = round((self.high - self.low) / self.step) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high
        )

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        scale = ", log scale" if self.log else ""
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.kind} from {self.low} to {self.high}{scale}{step}"

    def spec(self) -> dict[str, Any]:
        """The dimension as stored in the study (what a resumed search must match), in the space
        file's own terms."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            spec["step"] = self.step
        if self.grid is not None:
            spec["grid"] = list(self.grid)
        return spec


Space = dict[str, Dimension]

_SPEC_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "grid"},
    "int": {"type", "low", "high", "log", "step", "grid"},
    "categorical": {"type", "choices"},
}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _dimension(key: str, spec: Any, source: str) -> Dimension:
    where = f"{source}: '{key}'"
    if not isinstance(spec, dict):
        raise RecipeError(
            f"{where}: expected a mapping such as {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}, "
            f"got {spec!r}"
        )
    kind = spec.get("type")
    if kind not in _SPEC_FIELDS:
        raise RecipeError(f"{where}: unknown type {kind!r}; use float, int or categorical")
    unknown = sorted(set(spec) - _SPEC_FIELDS[kind])
    if unknown:
        valid = ", ".join(sorted(_SPEC_FIELDS[kind]))
        raise RecipeError(f"{where}: unknown field '{unknown[0]}' for type {kind} (valid: {valid})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RecipeError(f"{where}: `choices` must be a non-empty list")
        for choice in choices:
            if choice is not None and not isinstance(choice, str | int | float | bool):
                raise RecipeError(f"{where}: choice {choice!r} is not a number, string, boolean or null")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise RecipeError(f"{where}: `choices` lists a value twice")
        return Dimension(key, "categorical", choices=tuple(choices), source=source)

    low, high = _as_number(spec.get("low")), _as_number(spec.get("high"))
    if low is None or high is None:
        raise RecipeError(f"{where}: `low` and `high` must both be numbers")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise RecipeError(f"{where}: `log` must be true or false")
    step = None if spec.get("step") is None else _as_number(spec.get("step"))
    if spec.get("step") is not None and (step is None or step <= 0):
        raise RecipeError(f"{where}: `step` must be a positive number")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise RecipeError(f"{where}: an int range needs whole-number `low` and `high`")
        low, high = int(low), int(high)
        if step is not None and not float(step).is_integer():
            raise RecipeError(f"{where}: an int range needs a whole-number `step`")
        step = None if step is None else int(step)
    if low >= high:
        raise RecipeError(f"{where}: `low` ({low}) must be below `high` ({high})")
    if log and low <= 0:
        raise RecipeError(f"{where}: a log-scale range needs `low` > 0 (got {low})")
    if log and step not in (None, 1):
        raise RecipeError(f"{where}: `step` and `log` cannot be combined; drop one")
    if step is not None and kind == "float":
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise RecipeError(f"{where}: `high - low` ({high - low}) must be a multiple of `step` ({step})")
    grid = spec.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid:
            raise RecipeError(f"{where}: `grid` must be a non-empty list of values")
        values = [_as_number(v) for v in grid]
        for raw, value in zip(grid, values, strict=True):
            if value is None or not low <= value <= high:
                raise RecipeError(f"{where}: grid value {raw!r} is not a number from {low} to {high}")
            if kind == "int" and not float(value).is_integer():
                raise RecipeError(f"{where}: grid value {raw!r} is not a whole number")
        grid = tuple(int(v) if kind == "int" else float(v) for v in values)
    return Dimension(key, kind, low=low, high=high, log=log, step=step, grid=grid, source=source)


def load_space(path: Path) -> Space:
    """Read a space file: recipe key -> {type: float|int|categorical, ...}. Checks the specs only;
    `check_space_keys` checks them against a recipe."""
    if not Path(path).is_file():
        raise RecipeError(f"{path}: search space file not found")
    data = read_yaml(Path(path))
    if not isinstance(data, dict) or not data:
        raise RecipeError(f"{path}: a search space is a mapping of recipe keys to ranges; found none")
    return {str(key): _dimension(str(key), spec, str(path)) for key, spec in data.items()}


def recipe_with(base: dict[str, Any], params: dict[str, Any], source: str) -> Recipe:
    """The recipe mapping `base` with each searched key set to its value, validated."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key.split("."), value, f"{source}: '{key}'")
    return validate_recipe(data, source)


def check_space_keys(space: Space, base: dict[str, Any], source: str) -> None:
    """Every bound and choice of the space must make a valid recipe: a misspelt key, or a range the
    recipe refuses (lr below its min_lr, say), fails here rather than in trial 12."""
    for key, dim in space.items():
        values = list(dim.choices) if dim.kind == "categorical" else [dim.low, dim.high]
        for value in values:
            recipe_with(base, {key: value}, f"{source}: '{key}: {value!r}'")


def value_at(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def baseline_params(space: Space, recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """The recipe's own values of the searched keys (trial 0), and a note for each that lies outside
    the space or cannot be set as it is."""
    data = recipe.model_dump(mode="json")
    params: dict[str, Any] = {}
    notes = []
    for key, dim in space.items():
        found, value = value_at(data, key)
        if not found:
            notes.append(f"{key}: the recipe leaves it to a default trial 0 cannot name; trial 0 samples it")
        elif dim.kind == "categorical" and value not in dim.choices:
            notes.append(f"{key}: the recipe's {value!r} is not among the choices; trial 0 samples it")
        else:
            params[key] = value
            if not dim.contains(value):
                notes.append(f"{key}: the recipe's {value!r} lies outside the space ({dim.describe()})")
    return params, notes
