"""Multi-stage pipelines: named stages, each a recipe, chained by the runs they read."""

# A pipeline file lists stages in the order they run. A stage's model can be an earlier stage's
# output (`model_from`), and any text in its recipe may name an earlier stage's run folder as
# `${name}` (an RL stage's reward model, say). Each stage runs into <out>/<name>.
#
# Re-running a pipeline skips every stage that already finished with the same resolved recipe and
# the same inputs — a stage's fingerprint covers its recipe and the fingerprints of the stages it
# reads — so a pipeline resumes after a crash, and a changed recipe re-runs that stage and every
# stage downstream of it.

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field, ValidationError, model_validator

from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError
from peaufine.recipe import Block, apply_overrides, read_yaml, validate_recipe
from peaufine.report.pages.write import write_report
from peaufine.results import RESULTS, read_results
from peaufine.rundir import finished_with, refuse_strangers, write_json
from peaufine.stages import check_stage, run_stage

if TYPE_CHECKING:
    from peaufine.recipe import Recipe

T = TypeVar("T")

REFERENCE = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")


class PipelineStage(Block):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the stage's run folder under the output")
    recipe: str = Field(
        description="a packaged recipe name (world-sft) or a YAML path, relative to this file"
    )
    model_from: str | None = Field(
        None, description="an earlier stage whose run is this stage's model.source"
    )
    set: list[str] = Field(default_factory=list, description="overrides, as --set KEY=VALUE")


class Pipeline(Block):
    name: str = "pipeline"
    stages: list[PipelineStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_point_back(self) -> Pipeline:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"two stages are named '{stage.name}'")
            if stage.model_from is not None and stage.model_from not in seen:
                raise ValueError(
                    f"stage '{stage.name}': model_from '{stage.model_from}' is not an earlier stage "
                    f"(earlier: {', '.join(sorted(seen)) or 'none'})"
                )
            seen.add(stage.name)
        return self


def load_pipeline(path: Path) -> tuple[Pipeline, Path]:
    """The validated pipeline and the folder its relative recipe paths start from."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return Pipeline.model_validate(data), path.parent
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "pipeline"
            problems.append(f"{path}: {where}: {error['msg']}")
        raise RecipeError("\n".join(problems)) from None


def _read_packaged(name: str, read: Callable[[Path], T], missing: str) -> T:
    """`read` a YAML file shipped in peaufine/recipes (a recipe or a pipeline), by name."""
    resource = resources.files("peaufine") / "recipes" / f"{name}.yaml"
    if not resource.is_file():
        raise RecipeError(missing)
    with resources.as_file(resource) as path:
        return read(Path(path))


def packaged_pipeline(name: str) -> tuple[Pipeline, Path]:
    missing = f"'{name}' is neither a pipeline file nor a packaged pipeline"
    return _read_packaged(name, load_pipeline, missing)


def _recipe_data(stage: PipelineStage, base: Path) -> dict[str, Any]:
    candidate = Path(stage.recipe)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        path = candidate if candidate.is_absolute() else base / candidate
        return read_yaml(path)
    missing = f"stage '{stage.name}': recipe '{stage.recipe}' is neither a YAML path nor a packaged recipe"
    return _read_packaged(stage.recipe, read_yaml, missing)


def _substitute(value: Any, runs: dict[str, Path], stage: str, used: set[str]) -> Any:
    """Replace ${name} by the run folder of the earlier stage `name`, in every string."""
    if isinstance(value, dict):
        return {k: _substitute(v, runs, stage, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, runs, stage, used) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in runs:
            raise RecipeError(
                f"stage '{stage}': ${{{name}}} does not name an earlier stage "
                f"(earlier: {', '.join(runs) or 'none'})"
            )
        used.add(name)
        return str(runs[name])

    return REFERENCE.sub(replace, value)


def resolve_stage(
    stage: PipelineStage, base: Path, runs: dict[str, Path], extra: list[str]
) -> tuple[Recipe, set[str]]:
    """The stage's recipe with its overrides, model_from and ${...} applied; and the stages it reads."""
    data = apply_overrides(_recipe_data(stage, base), [*stage.set, *extra])
    used: set[str] = set()
    if stage.model_from is not None:
        data.setdefault("model", {})["source"] = f"${{{stage.model_from}}}"
    data = _substitute(data, runs, stage.name, used)
    return validate_recipe(data, source=f"stage '{stage.name}' ({stage.recipe})"), used


def fingerprint(recipe_yaml: str, inputs: list[str]) -> str:
    digest = hashlib.sha256(recipe_yaml.encode("utf-8"))
    for upstream in inputs:
        digest.update(upstream.encode("ascii"))
    return digest.hexdigest()[:16]


def headline(stage: str, evaluation: dict[str, Any]) -> dict[str, float]:
    """The stage's headline numbers, by label, as pipeline.json and the pipeline page show them."""
    return RESULTS[stage].from_json(evaluation).headlines() if stage in RESULTS else {}


@dataclass
class StageOutcome:
    name: str
    stage: str
    run: Path
    status: str  # ran | skipped | failed | pending
    fingerprint: str | None = None
    seconds: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    out: Path
    name: str
    stages: list[StageOutcome]
    seconds: float

    def evaluation(self, name: str) -> dict[str, Any]:
        return next(s.evaluation for s in self.stages if s.name == name)


def _previous_fingerprints(out: Path) -> dict[str, str]:
    import json

    state = out / "pipeline.json"
    if not state.is_file():
        return {}
    data = json.loads(state.read_text(encoding="utf-8"))
    return {
        s["name"]: s["fingerprint"] for s in data.get("stages", []) if s.get("status") in ("ran", "skipped")
    }


def _write_state(out: Path, pipeline: Pipeline, outcomes: list[StageOutcome], seconds: float) -> None:

    write_json(
        out / "pipeline.json",
        {
            "name": pipeline.name,
            "seconds": seconds,
            "stages": [
                {
                    "name": o.name,
                    "stage": o.stage,
                    "run": o.name,
                    "status": o.status,
                    "fingerprint": o.fingerprint,
                    "seconds": o.seconds,
                    "headline": headline(o.stage, o.evaluation),
                }
                for o in outcomes
            ],
        },
    )


def check_out(out: Path, pipeline: Pipeline) -> None:

    if (out / "pipeline.json").is_file():
        return  # an earlier run of a pipeline; stages it had and this one has not are left alone
    names = {s.name for s in pipeline.stages} | {"pipeline.json", "report.html"}
    refuse_strangers(out, "this pipeline's", lambda name: name in names or name.startswith("."))


def run_pipeline(
    pipeline: Pipeline,
    base: Path,
    out: Path,
    *,
    overrides: dict[str, list[str]] | None = None,
    rerun: set[str] | None = None,
    tracker: Tracker | None = None,
) -> PipelineResult:
    """Run the stages in order into <out>/<name>, skipping those already finished as they are now."""

    overrides = overrides or {}
    rerun = rerun or set()
    names = [s.name for s in pipeline.stages]
    for name in [*overrides, *rerun]:
        if name not in names:
            raise RecipeError(
                f"no stage named '{name}' in pipeline '{pipeline.name}' (stages: {', '.join(names)})"
            )
    out = Path(out).resolve()
    check_out(out, pipeline)
    if not out.exists():  # a new pipeline: its first stage (which can name no other) refused up front
        first = pipeline.stages[0]
        check_stage(resolve_stage(first, base, {}, overrides.get(first.name, []))[0])
    out.mkdir(parents=True, exist_ok=True)
    tracker = tracker or Tracker()
    previous = _previous_fingerprints(out)
    start = time.perf_counter()
    runs: dict[str, Path] = {}
    prints: dict[str, str] = {}
    outcomes = [StageOutcome(s.name, "?", out / s.name, "pending") for s in pipeline.stages]
    for index, stage in enumerate(pipeline.stages):
        recipe, used = resolve_stage(stage, base, runs, overrides.get(stage.name, []))
        recipe_yaml = recipe.to_yaml()
        stamp = fingerprint(recipe_yaml, [prints[name] for name in sorted(used)])
        run_dir = out / stage.name
        outcome = outcomes[index] = StageOutcome(stage.name, recipe.stage, run_dir, "pending", stamp)
        runs[stage.name], prints[stage.name] = run_dir, stamp
        if (
            stage.name not in rerun
            and previous.get(stage.name) == stamp
            and finished_with(run_dir, recipe_yaml)
        ):
            outcome.status = "skipped"
            outcome.evaluation = read_results(run_dir).to_json()
            tracker.say("finished earlier with this recipe and inputs, skipped", heading=f"{stage.name}:")
            continue
        tracker.say(f"({recipe.stage}) -> {run_dir}", heading=stage.name)
        began = time.perf_counter()
        try:
            outcome.evaluation = run_stage(recipe, run_dir, overwrite=run_dir.exists(), tracker=tracker)
        except BaseException:
            outcome.status = "failed"
            _write_state(out, pipeline, outcomes, time.perf_counter() - start)
            raise
        outcome.status, outcome.seconds = "ran", time.perf_counter() - began
        _write_state(out, pipeline, outcomes, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    _write_state(out, pipeline, outcomes, seconds)
    write_report(out)
    return PipelineResult(out, pipeline.name, outcomes, seconds)


def parse_stage_overrides(items: list[str]) -> dict[str, list[str]]:
    """`--set sft:train.lr=1e-3` -> {"sft": ["train.lr=1e-3"]}."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        stage, sep, override = item.partition(":")
        if not sep or "=" not in override or "=" in stage:
            raise RecipeError(f"--set {item!r}: expected STAGE:KEY=VALUE, e.g. --set sft:train.lr=3e-4")
        parsed.setdefault(stage, []).append(override)
    return parsed
