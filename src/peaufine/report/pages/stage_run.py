"""What a stage run left that its report reads: recipe.yaml, env.json, prepared.json, eval.json and
metrics.jsonl, loaded once into a StageRun (any of them may be missing: an unfinished run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peaufine.errors import RunDirError
from peaufine.report.toolkit import is_number, read_json, read_jsonl
from peaufine.results import StageResults, read_results
from peaufine.rundir import RunDir


@dataclass
class StageRun:
    """What a stage run left that the report reads; any file may be missing (an unfinished run)."""

    path: Path
    recipe: dict[str, Any]
    recipe_text: str
    env: dict[str, Any]
    prepared: dict[str, Any]
    results: StageResults | None
    rows: list[dict[str, Any]]
    budget: dict[str, Any]  # budget.json: what the stage counted of the model it trained

    @property
    def evaluation(self) -> dict[str, Any]:
        """eval.json's contents as a table, for the sections every stage shares; {} while unfinished."""
        return self.results.to_json() if self.results is not None else {}

    @property
    def stage(self) -> str:
        return str(self.recipe.get("stage") or self.evaluation.get("stage") or "run")

    @property
    def finished(self) -> bool:
        return bool(self.evaluation)

    def setting(self, block: str, key: str) -> Any:
        return (self.recipe.get(block) or {}).get(key)

    def series(self, key: str) -> list[float]:
        """The logged values of one metric, in step order (non-finite ones are logged as text: skipped)."""
        return [r[key] for r in self.rows if is_number(r.get(key))]

    def last_step(self) -> int | None:
        if isinstance(self.evaluation.get("steps"), int):
            return self.evaluation["steps"]
        steps = [r["step"] for r in self.rows if isinstance(r.get("step"), int)]
        return max(steps) if steps else None


def load_stage_run(directory: Path) -> StageRun:
    import yaml

    files = RunDir(directory)
    recipe_text = files.recipe.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(recipe_text)
    except yaml.YAMLError as exc:
        raise RunDirError(f"{files.recipe}: not valid YAML ({exc})") from None
    return StageRun(
        path=directory,
        recipe=recipe if isinstance(recipe, dict) else {},
        recipe_text=recipe_text,
        env=read_json(files.env) or {},
        prepared=read_json(files.prepared) or {},
        results=read_results(directory),
        rows=read_jsonl(files.metrics),
        budget=read_json(files.budget) or {},
    )
