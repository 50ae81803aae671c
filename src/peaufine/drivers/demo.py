"""The default pipeline, offline on a laptop CPU: the synthetic world, pretrained, fine-tuned, aligned."""

# The demo is the packaged pipeline file (recipes/world-pipeline.yaml) run by the same code as
# `peaufine run`; it only collects the numbers that show each stage's effect.

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peaufine.drivers.pipeline import packaged_pipeline, run_pipeline


@dataclass
class DemoResult:
    out: Path
    smoke: bool
    seconds: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_demo(out: Path, *, smoke: bool = False, fresh: bool = False) -> DemoResult:
    """Run the packaged pipeline (world-pipeline, or world-pipeline-smoke) into `out`.

    Stages that already finished there with the same recipes are kept unless `fresh`.
    """

    pipeline, base = packaged_pipeline("world-pipeline-smoke" if smoke else "world-pipeline")
    rerun = {stage.name for stage in pipeline.stages} if fresh else set()
    outcome = run_pipeline(pipeline, base, Path(out), rerun=rerun)
    result = DemoResult(out=outcome.out, smoke=smoke, seconds=outcome.seconds)
    result.stages = {stage.name: stage.evaluation for stage in outcome.stages}
    return result
