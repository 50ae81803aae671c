"""Tracking integrations: TensorBoard event files and MLflow runs, fed the rows metrics.jsonl gets."""

# Both are options of every run (the recipe's `track` block) and both are written by the real
# libraries, so `tensorboard --logdir` and `mlflow ui` read them as they read anyone's.

from __future__ import annotations

import atexit
import importlib.util
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.errors import RecipeError
from peaufine.nested import dotted_items

if TYPE_CHECKING:
    from peaufine.recipe import Recipe, TrackBlock

INSTALL_HINT = "install the tracking extras: pip install 'peaufine[track]'"


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in row.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def check_tracking(track: TrackBlock) -> None:
    """Fail before any work when a requested integration is not installed."""
    wanted = [("tensorboard", "track.tensorboard", "tensorboard"), ("mlflow", "track.mlflow", "mlflow")]
    for flag, key, module in wanted:
        if getattr(track, flag) and importlib.util.find_spec(module) is None:
            raise RecipeError(f"{key} is on but the '{module}' package is not installed; {INSTALL_HINT}")


class TensorBoardSink:
    """Scalars under their metrics.jsonl names, by optimiser step; the final evaluation as eval/*."""

    def __init__(self, log_dir: Path, recipe_yaml: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        # four-space indent: TensorBoard renders text as Markdown, and this keeps the YAML verbatim
        self.writer.add_text("recipe", "\n".join("    " + line for line in recipe_yaml.splitlines()))
        self.last_step = 0

    def write(self, row: dict[str, Any]) -> None:
        self.last_step = int(row.get("step", self.last_step))
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, self.last_step)
        self.writer.flush()

    def close(self, summary: dict[str, float]) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(f"eval/{key}", value, self.last_step)
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()


# MLflow keys allow letters, digits and _ - . space / only
_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    return _MLFLOW_BAD.sub("_", name)


class MlflowSink:
    """One MLflow run per peaufine run: the resolved recipe as params, every row as metrics, the
    final evaluation as metrics at the last step; FINISHED when the run ends, FAILED if it dies."""

    def __init__(
        self, uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]
    ):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found is not None else self.client.create_experiment(experiment)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        entries = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=entries[start : start + 100])
        self.last_step = 0
        self.open = True
        atexit.register(self.abort)

    def write(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self.last_step = int(row.get("step", self.last_step))
        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), v, now, self.last_step) for k, v in _numbers(row).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, summary: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(f"eval.{k}"), v, now, self.last_step) for k, v in summary.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        self.client.set_terminated(self.run_id, "FINISHED")
        self.open = False

    def abort(self) -> None:
        if self.open:
            self.open = False
            self.client.set_terminated(self.run_id, "FAILED")


TRACKING_SINKS = (TensorBoardSink, MlflowSink)


def flat_params(data: dict[str, Any]) -> dict[str, str]:
    """The resolved recipe as dotted key -> text, the shape MLflow's params take."""
    return {key: "null" if value is None else str(value) for key, value in dotted_items(data)}


def open_tracking(recipe: Recipe, run_path: Path) -> list[Any]:
    """The sinks the recipe asks for, opened for the run in `run_path` (rank 0 only)."""
    track = recipe.track
    sinks: list[Any] = []
    if track.tensorboard:
        sinks.append(TensorBoardSink(run_path / "tensorboard", recipe.to_yaml()))
    if track.mlflow:
        uri = track.mlflow_uri or f"sqlite:///{(run_path / 'mlflow.db').resolve()}"
        tags = {"peaufine.run_dir": str(run_path.resolve()), "peaufine.stage": recipe.stage}
        params = flat_params(recipe.model_dump(mode="json"))
        sinks.append(MlflowSink(uri, track.mlflow_experiment, run_path.name, params, tags))
    return sinks
