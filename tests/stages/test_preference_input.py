"""What the preference stages (reward, dpo) say about the pairs they drop before training: every pair
counted as skipped in eval.json is counted in the log line too."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from peaufine.engine.track import Tracker
from peaufine.recipe import validate_recipe
from test_cli_models import tiny_models


def preference_file(path: Path, identical: int, tied: int) -> Path:
    """Rankings of 20 prompts, `identical` of them with a response given twice (the copy is skipped as
    same_response), and `tied` with two responses of one rank."""
    rows = [{"prompt": f"q {i}", "responses": ["yes a", "no b"]} for i in range(20)]
    rows += [{"prompt": f"same {i}", "responses": ["c d", "c d", "e f"]} for i in range(identical)]
    rows += [
        {"prompt": f"tie {i}", "responses": ["e f", "g h", "i j"], "ranks": [1, 1, 2]} for i in range(tied)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("stage", ["dpo", "reward"])
@pytest.mark.parametrize(("identical", "tied"), [(3, 0), (2, 4)])
def test_the_log_counts_every_pair_it_skipped(tmp_path, stage, identical, tied):
    from peaufine.stages import dpo, reward

    tiny_models(tmp_path)
    data = preference_file(tmp_path / "rankings.jsonl", identical, tied)
    recipe = validate_recipe(
        {
            "stage": stage,
            "model": {"source": str(tmp_path / "lm")},
            "data": {"source": str(data), "max_length": 32, "validation_fraction": 0.2},
        }
    )
    output = io.StringIO()
    tracker = Tracker(console=Console(file=output, width=300))
    staging = tmp_path / "staging"
    staging.mkdir()
    prepared = {"dpo": dpo.prepare, "reward": reward.prepare}[stage](recipe, staging, tracker)
    log = " ".join(output.getvalue().split())
    assert prepared["anomalies"]["same_response"] == identical  # what eval.json will say
    assert f"{identical} identical pairs skipped" in log, log
    if stage == "dpo":  # reward models learn from ties; dpo drops them
        ties = sum(split["ties_skipped"] for split in prepared["pairs"].values())
        assert ties > 0 if tied else ties == 0
        assert f"{prepared['pairs']['train']['ties_skipped']} ties skipped" in log, log
