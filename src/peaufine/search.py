"""Hyper-parameter search over a recipe: the space file, the objective expression, the Optuna study
(storage, resume, retry of trials whose worker died) and what a search leaves in its folder.

`optimize` is the loop and knows nothing of training: it takes any `objective(params, trial)`.
`run_search` makes each trial a run of the user's recipe with the trial's values set.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import gc
import json
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from peaufine.errors import RecipeError, RunDirError, TrainingError
from peaufine.nested import dotted_items
from peaufine.recipe import Recipe, apply_overrides, read_yaml, set_dotted, validate_recipe
from peaufine.report.plots import pyplot, save_figure

if TYPE_CHECKING:
    import optuna

    from peaufine.engine.track import Tracker

STUDY_NAME = "peaufine-search"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")
DIRECTIONS = ("minimize", "maximize")

# Trial attributes the search keeps in the study (user attrs: Optuna's public per-trial store).
CONFIG_ATTR = "peaufine:search"  # study attr: what this study searches, to refuse a different search
HOST_ATTR, PID_ATTR, HEARTBEAT_ATTR = "peaufine:host", "peaufine:pid", "peaufine:heartbeat"
ERROR_ATTR = "peaufine:error"  # a trial that failed because of its parameters (it counts as finished)
RETRY_ATTR = "peaufine:retry_of"  # the trial whose parameters this one runs again
METRICS_ATTR = "peaufine:metrics"


# -- the space -------------------------------------------------------------------------------------


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


# -- the objective: a metric name or an arithmetic expression over metric names --------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|`(?P<quoted>[^`]+)`|(?P<op>[-+*/()]))"
)

Node = tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise RecipeError(
                f"--metric {text!r}: cannot read {text[position:].strip()!r}; write metric names, "
                "numbers, + - * / and parentheses (a name with other characters goes in `backquotes`)"
            )
        position = match.end()
        if match["number"] is not None:
            tokens.append(("number", float(match["number"])))
        elif match["op"] is not None:
            tokens.append(("op", match["op"]))
        else:
            tokens.append(("name", match["name"] or match["quoted"]))
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := ('+'|'-') factor | number | name | '(' expr ')'"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, what: str) -> RecipeError:
        return RecipeError(f"--metric {self.text!r}: {what}")

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise self.fail("the expression ends too early")
        self.at += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("empty; name a metric, e.g. val_loss")
        node = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = (self.take()[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = (self.take()[1], node, self.factor())
        return node

    def factor(self) -> Node:
        kind, value = self.take()
        if kind == "number":
            return ("number", value)
        if kind == "name":
            return ("name", value)
        if value in "+-":
            operand = self.factor()
            return ("neg", operand) if value == "-" else operand
        if value == "(":
            node = self.expr()
            if self.take() != ("op", ")"):
                raise self.fail("a '(' is not closed")
            return node
        raise self.fail(f"unexpected {value!r}")


def _names(node: Node) -> list[str]:
    if node[0] == "name":
        return [node[1]]
    return [name for child in node[1:] if isinstance(child, tuple) for name in _names(child)]


@dataclass(frozen=True)
class MetricExpression:
    """What a search optimises: one metric a run reports, or arithmetic over several."""

    text: str
    tree: Node
    names: tuple[str, ...]

    @property
    def is_name(self) -> bool:
        return self.tree[0] == "name"

    def value(self, metrics: dict[str, float], where: str = "the run") -> float:
        missing = [name for name in self.names if name not in metrics]
        if missing:
            name = missing[0]
            close = difflib.get_close_matches(name, list(metrics), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            listing = ", ".join(sorted(metrics)[:40])
            raise RecipeError(
                f"--metric {self.text!r}: {where} reports no '{name}'. {hint}It reports: {listing}"
            )
        return _evaluate(self.tree, metrics)


def _evaluate(node: Node, metrics: dict[str, float]) -> float:
    kind = node[0]
    if kind == "number":
        return node[1]
    if kind == "name":
        return float(metrics[node[1]])
    if kind == "neg":
        return -_evaluate(node[1], metrics)
    left, right = _evaluate(node[1], metrics), _evaluate(node[2], metrics)
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return left / right if right != 0 else math.nan  # a non-finite objective fails the trial


def parse_metric(text: str) -> MetricExpression:
    tree = _Parser(text).parse()
    return MetricExpression(text=text.strip(), tree=tree, names=tuple(dict.fromkeys(_names(tree))))


_MAXIMISED = ("accuracy", "exact_match", "reward", "f1", "recall", "precision", "pass_rate", "win_rate")
_MINIMISED = ("perplexity", "forgetting")


def metric_direction(metric: MetricExpression, direction: str | None = None) -> str:
    """An explicit direction wins; a loss is minimised, an accuracy / exact match / reward / F1 /
    recall maximised; an expression is minimised (write it so that lower is better)."""
    if direction is not None:
        if direction not in DIRECTIONS:
            raise RecipeError(f"--direction {direction!r}: use minimize or maximize")
        return direction
    if not metric.is_name:
        return "minimize"
    name = metric.names[0].lower()
    if "loss" in name:
        return "minimize"
    if any(word in name for word in _MAXIMISED):
        return "maximize"
    if any(word in name for word in _MINIMISED):
        return "minimize"
    raise RecipeError(
        f"--metric {metric.text!r}: cannot tell whether higher or lower is better; "
        "pass --direction minimize or --direction maximize"
    )


# -- the study --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
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
        with _quiet_optuna():
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
    journal gets ours (see `_Heartbeat`)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is not None and "://" in storage:
        with _quiet_optuna():
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


def _storage_of(study: optuna.Study) -> Any:
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
    with _quiet_optuna():
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
            if any(_counts(t) for t in study.get_trials(deepcopy=False)):
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


# -- the loop ---------------------------------------------------------------------------------------

Objective = Callable[[dict[str, Any], "optuna.Trial"], float]


class TrialFailed(Exception):
    """A trial failed because of its parameters (a diverged loss, an invalid combination, out of
    memory): recorded as FAIL with its reason, counted as finished, and the search goes on."""


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the search's target: it completed, was pruned, or failed
    because of its parameters. A trial whose worker died does not count; it is run again."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if _counts(t)]


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _abandoned(trial: optuna.trial.FrozenTrial, grace: float, own_heartbeat: bool) -> bool:
    """A running trial whose worker is gone: a dead process on this machine (known at once), or
    no heartbeat for `grace` seconds (journal storage; Optuna watches the RDB storage's)."""
    attrs = trial.user_attrs
    pid = attrs.get(PID_ATTR)
    same_host = attrs.get(HOST_ATTR) == socket.gethostname()
    if same_host and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
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

    storage = _storage_of(study)
    native = _native_heartbeat(storage)
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


def _native_heartbeat(storage: Any) -> bool:
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


class _Heartbeat:
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

    def __enter__(self) -> _Heartbeat:
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _is_param_failure(exc: BaseException) -> bool:
    """Errors a trial's own values cause: a diverged loss, or a size that does not fit in memory."""
    return isinstance(exc, TrialFailed | TrainingError) or type(exc).__name__ == "OutOfMemoryError"


def optimize(
    study: optuna.Study,
    space: Space,
    objective: Objective,
    n_trials: int,
    *,
    heartbeat: float = 10.0,
    grace: float | None = None,
    tracker: Tracker | None = None,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """Run trials until `n_trials` of them have finished (completed, pruned, or failed because of
    their values), counting those already in the study: a rerun resumes, and several processes on
    the same study share the work. A trial whose worker died is failed and its values run again.

    `objective(params, trial)` returns the trial's value; it may raise `optuna.TrialPruned` (after
    `trial.report`) or `TrialFailed`. Any other exception stops the search, and the trial it
    interrupted is queued to run again on the next call.
    """
    import optuna
    from optuna.trial import TrialState

    grace = grace if grace is not None else 2 * heartbeat
    own_heartbeat = not _native_heartbeat(_storage_of(study))
    grid = isinstance(study.sampler, optuna.samplers.GridSampler)
    host, pid = socket.gethostname(), os.getpid()

    ran: list[int] = []

    def run_one(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        params = {key: dim.suggest(trial, grid=grid) for key, dim in space.items()}
        trial.set_user_attr(HOST_ATTR, host)
        trial.set_user_attr(PID_ATTR, pid)
        if tracker is not None:
            from rich.markup import escape

            shown = escape("  ".join(f"{k}={_short(v)}" for k, v in params.items()))
            retry = trial.user_attrs.get(RETRY_ATTR)
            again = f" (trial {retry} again)" if retry is not None else ""
            tracker.say(f"[bold]trial {trial.number}[/]{again}: {shown}")
        beat = _Heartbeat(trial, heartbeat) if own_heartbeat else contextlib.nullcontext()
        with beat:
            try:
                value = float(objective(params, trial))
            except optuna.TrialPruned:
                raise
            except BaseException as exc:
                if _is_param_failure(exc):
                    trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:500])
                    raise TrialFailed(str(exc)) from exc
                # interrupted, or an error unrelated to its values: run these values again next time
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
                retry_trial(study, frozen)
                raise
        if not math.isfinite(value):
            trial.set_user_attr(ERROR_ATTR, f"the objective is {value}")
            raise TrialFailed(f"the objective is {value}")
        return value

    poll = max(0.2, min(heartbeat, 5.0))
    waiting_for: set[int] = set()
    with _quiet_optuna():
        while True:
            for number in recover_abandoned_trials(study, grace=grace):
                if tracker is not None:
                    tracker.warn(f"trial {number} was left running by a worker that stopped; it runs again")
            trials = study.get_trials(deepcopy=False)
            done = sum(_counts(t) for t in trials)
            running = {t.number for t in trials if t.state == TrialState.RUNNING}
            if done >= n_trials:
                return
            if done + len(running) >= n_trials:
                # the rest is running elsewhere: wait, and take over any trial whose worker dies
                if tracker is not None and running - waiting_for:
                    listed = ", ".join(map(str, sorted(running)))
                    tracker.say(f"waiting for trial(s) {listed}, running in another worker")
                waiting_for = running
                time.sleep(poll)
                continue
            ran.clear()
            try:
                study.optimize(run_one, n_trials=1, catch=(TrialFailed,))
            except optuna.exceptions.UpdateFinishedTrialError:
                # another worker declared this trial abandoned while it ran, and queued it again
                if tracker is not None:
                    tracker.warn("a trial ran past its heartbeat grace and was given to another worker")
            if on_trial_end is not None and ran:
                on_trial_end(study, next(t for t in study.get_trials(deepcopy=False) if t.number == ran[0]))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- pruning ----------------------------------------------------------------------------------------


def report_and_prune(trial: optuna.Trial, value: float, step: int) -> None:
    """Tell the pruner a trial's validation loss at `step`; stop the trial if the pruner says so."""
    import optuna

    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step}: val_loss {value:.4f}")


class PruningSink:
    """A metric sink that feeds a trial's validation losses to its pruner; raising TrialPruned from
    `write` stops the run (the engine lets a sink's exception through)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def write(self, row: dict[str, Any]) -> None:
        value = row.get("val_loss")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            report_and_prune(self.trial, float(value), int(row.get("step", 0)))

    def close(self, summary: dict[str, float]) -> None:
        pass


# -- outputs ----------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    out: Path
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    baseline_value: float | None
    trials: list[dict[str, Any]]
    seconds: float


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, in trial order: what trials.jsonl holds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = None
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "seconds": seconds,
                "run": f"trials/trial-{t.number:04d}",
                "retry_of": t.user_attrs.get(RETRY_ATTR),
                "error": t.user_attrs.get(ERROR_ATTR),
                "metrics": t.user_attrs.get(METRICS_ATTR),
            }
        )
    return rows


def _best(rows: Sequence[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not complete:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(complete, key=lambda r: (sign * r["value"], r["trial"]))  # ties: the earlier trial


def _baseline(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Trial 0 (the recipe's own values), or the trial that ran its values again."""
    root = 0
    for row in rows:
        if row["trial"] == root:
            return row if row["state"] in ("COMPLETE", "PRUNED") else None
        if row["retry_of"] == root:
            root = row["trial"]
    return None


def _rank(rows: Sequence[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}
    sign = 1.0 if direction == "minimize" else -1.0

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"] if row["value"] is not None else math.inf * sign
        return order.get(row["state"], 5), sign * value, row["trial"]

    return sorted(rows, key=key)


def write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    best_recipe: str | None,
) -> None:
    from peaufine.engine.checkpoint import write_text_atomic

    write_text_atomic(out / "trials.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_text_atomic(out / "study.json", json.dumps(summary, indent=2) + "\n")
    if best_recipe is not None:
        write_text_atomic(out / "best-recipe.yaml", best_recipe)


def plot_history(
    rows: Sequence[dict[str, Any]],
    path: Path,
    metric: str,
    direction: str,
    baseline: dict[str, Any] | None = None,
) -> None:
    """The objective of each trial, the best so far as a step line, pruned trials and the baseline
    (the recipe's own values) marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["value"] is not None]
    ax.scatter([r["trial"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete")
    if pruned:
        ax.scatter(
            [r["trial"] for r in pruned],
            [r["value"] for r in pruned],
            marker="x",
            color="tab:gray",
            label="pruned (last val_loss)",
        )
    best, xs, ys = None, [], []
    for row in done:
        if best is None or (row["value"] < best if direction == "minimize" else row["value"] > best):
            best = row["value"]
        xs.append(row["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    if baseline is not None and baseline.get("value") is not None:
        ax.scatter(
            [baseline["trial"]],
            [baseline["value"]],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            label=f"trial {baseline['trial']}: the recipe as it is",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({direction})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_params(rows: Sequence[dict[str, Any]], space: Space, path: Path, metric: str) -> None:
    """The objective against each parameter, one panel per parameter; log axes for log ranges."""
    plt = pyplot()
    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        dim = space[key]
        for state, style in (
            ("COMPLETE", {"color": "tab:blue"}),
            ("PRUNED", {"color": "tab:gray", "marker": "x"}),
        ):
            points = [
                r for r in rows if r["state"] == state and r["value"] is not None and key in r["params"]
            ]
            xs = [r["params"][key] for r in points]
            if dim.kind == "categorical":
                labels = [str(c) for c in dim.choices]
                xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.scatter(xs, [r["value"] for r in points], **style)
        if dim.kind == "categorical":
            ax.set_xticks(range(len(dim.choices)), [str(c) for c in dim.choices])
        elif dim.log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short decade
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    save_figure(fig, path)


def _table(rows: Sequence[dict[str, Any]], keys: Sequence[str], metric: str, direction: str) -> Any:
    from rich.table import Table

    table = Table(title=f"search: {metric} ({direction}), best first")
    table.add_column("trial", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column(metric, justify="right")
    table.add_column("state")
    table.add_column("seconds", justify="right")
    for row in _rank(rows, direction):
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f}"
        params = [_short(row["params"][k]) if k in row["params"] else "" for k in keys]
        table.add_row(str(row["trial"]), *params, value, row["state"], seconds)
    return table


# -- the command ------------------------------------------------------------------------------------


def resolve_trials(trials: int | None, sampler: str, space: Space) -> int:
    if sampler == "grid":
        size = math.prod(len(d.grid_values()) for d in space.values())
        if trials is None:
            return size
        if trials > size:
            raise RecipeError(f"--trials {trials}: the grid has only {size} points")
    if trials is None:
        raise RecipeError(f"--trials is needed with --sampler {sampler}")
    if trials < 1:
        raise RecipeError(f"--trials {trials}: at least 1")
    return trials


def run_search(
    recipe_path: Path,
    space_path: Path,
    out: Path,
    *,
    trials: int | None = None,
    sampler: str = "tpe",
    metric: str = "val_loss",
    direction: str | None = None,
    prune: str = "none",
    storage: str | None = None,
    seed: int = 0,
    startup_trials: int | None = None,
    overrides: Sequence[str] = (),
    tracker: Tracker | None = None,
    heartbeat: float = 10.0,
    grace: float | None = None,
) -> SearchResult:
    """Search the space for the recipe values that optimise `metric`; each trial is a run of the
    recipe in <out>/trials/trial-NNNN. Running it again continues the search in <out>; several
    processes started with the same arguments work on it together.

    `trials` is the number of finished trials wanted (completed, pruned, or failed because of their
    values); for the grid sampler it defaults to the grid's size. Trial 0 (tpe, random) runs the
    recipe's own values: the baseline a search must beat.
    """
    from peaufine.engine.track import Tracker, add_sink, detach_sinks

    start = time.perf_counter()
    tracker = tracker or Tracker()
    out, recipe_path, space_path = Path(out), Path(recipe_path), Path(space_path)

    base = apply_overrides(read_yaml(recipe_path), list(overrides))
    recipe = validate_recipe(copy.deepcopy(base), str(recipe_path))
    space = load_space(space_path)
    check_space_keys(space, base, str(space_path))
    expression = parse_metric(metric)
    direction = metric_direction(expression, direction)
    if sampler not in SAMPLERS:
        raise RecipeError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise RecipeError(f"--prune {prune!r}: use one of {', '.join(PRUNERS)}")
    if prune != "none" and direction == "maximize":
        raise RecipeError(
            f"--prune {prune}: pruning compares validation losses, which are minimised, but "
            f"{expression.text!r} is maximised; use --prune none"
        )
    n_trials = resolve_trials(trials, sampler, space)
    baseline, notes = baseline_params(space, recipe) if sampler != "grid" else ({}, [])
    grace = grace if grace is not None else 2 * heartbeat
    if storage is None and out.is_dir() and any(out.iterdir()) and not (out / "study.journal").exists():
        raise RunDirError(f"{out} is not empty and holds no search (no study.journal); choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    config = {
        "recipe": recipe.to_yaml(),
        "space": {key: dim.spec() for key, dim in space.items()},
        "metric": expression.text,
        "direction": direction,
        "sampler": sampler,
    }
    with _quiet_optuna():
        study_storage = open_storage(out, storage, heartbeat=heartbeat, grace=grace)
        study, created = open_study(study_storage, config, direction=direction, baseline=baseline, out=out)
        # A worker joining a study, or a rerun, must not replay the sampler's first draws: the
        # trials they made are in the study already. The grid is shuffled the same in every worker.
        joined = len(study.get_trials(deepcopy=False))
        worker_seed = seed
        if not created and sampler != "grid":
            worker_seed = random.Random(f"{seed}:{joined}:{os.getpid()}").randrange(2**31)
        study.sampler = make_sampler(
            sampler, space, seed=worker_seed, trials=n_trials, startup_trials=startup_trials
        )
        # judged from a quarter of the run on, and never during the learning-rate warm-up
        study.pruner = make_pruner(prune, max(recipe.train.warmup_steps, recipe.train.max_steps // 4))
    for note in notes:
        tracker.warn(f"trial 0 (the recipe as it is): {note}")
    done = len(finished_trials(study))
    tracker.say(
        f"search: {n_trials} trials of {recipe_path} over {', '.join(space)} by {sampler}, "
        f"{direction} {expression.text}" + (f"; {done} finished before" if done else "")
    )

    def objective(params: dict[str, Any], trial: optuna.Trial) -> float:
        from peaufine.stages import dispatch

        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        try:
            trial_recipe = recipe_with(base, params, f"{recipe_path} (trial {trial.number})")
        except RecipeError as exc:
            raise TrialFailed(f"these values make an invalid recipe: {exc}") from None
        metrics_path = run_dir / "metrics.jsonl"
        if prune != "none":
            add_sink(metrics_path, PruningSink(trial))
        try:
            dispatch.run_stage(trial_recipe, run_dir, overwrite=True, tracker=tracker)
        finally:
            detach_sinks(metrics_path)
            gc.collect()  # the trial's model and data: free them before the next trial builds its own
        metrics = dispatch.run_metrics(run_dir)
        value = expression.value(metrics, where=f"trial {trial.number} ({run_dir})")
        trial.set_user_attr(METRICS_ATTR, {name: metrics[name] for name in expression.names})
        return value

    def summary(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        best = _best(rows, direction)
        base_row = _baseline(rows) if sampler != "grid" else None
        data = {
            "metric": expression.text,
            "direction": direction,
            "sampler": sampler,
            "prune": prune,
            "recipe": str(recipe_path),
            "overrides": list(overrides),
            "space": config["space"],
            "target": n_trials,
            "trials": sum(r["state"] in ("COMPLETE", "PRUNED") or bool(r["error"]) for r in rows),
            "best": None if best is None else {k: best[k] for k in ("trial", "value", "params", "run")},
            "baseline": None
            if base_row is None
            else {"trial": base_row["trial"], "value": base_row["value"]},
            "baseline_notes": notes,
            "seconds": round(time.perf_counter() - start, 3),
        }
        text = None
        if best is not None:
            header = (
                f"# peaufine search: the best of {data['trials']} trials, {direction} {expression.text}\n"
                f"# = {best['value']:.6g} (trial {best['trial']}, {best['run']})\n"
                + "".join(f"#   {k}: {_short(v)}\n" for k, v in best["params"].items())
            )
            text = header + recipe_with(base, best["params"], str(recipe_path)).to_yaml()
        return data, text

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rows = trial_rows(study)
        data, text = summary(rows)
        write_outputs(out, rows, data, text)
        shown = "" if trial.value is None else f" {expression.text} = {trial.value:.4f}"
        best = data["best"]
        best_text = f"; best {best['value']:.4f} (trial {best['trial']})" if best else ""
        tracker.say(f"trial {trial.number}: {trial.state.name.lower()}{shown}{best_text}")

    try:
        optimize(
            study,
            space,
            objective,
            n_trials,
            heartbeat=heartbeat,
            grace=grace,
            tracker=tracker,
            on_trial_end=record,
        )
    finally:
        rows = trial_rows(study)
        data, text = summary(rows)
        write_outputs(out, rows, data, text)

    if any(r["value"] is not None for r in rows):
        plot_history(rows, out / "history.png", expression.text, direction, data["baseline"])
        plot_params(rows, space, out / "params.png", expression.text)
    if tracker.enabled:
        tracker.console.print(_table(rows, list(space), expression.text, direction))
    from peaufine.report.pages.write import write_report

    write_report(out)
    best = data["best"]
    return SearchResult(
        out=out,
        best_trial=None if best is None else best["trial"],
        best_value=None if best is None else best["value"],
        best_params={} if best is None else dict(best["params"]),
        baseline_value=None if data["baseline"] is None else data["baseline"]["value"],
        trials=rows,
        seconds=time.perf_counter() - start,
    )
