"""A stage's results object round-trips eval.json exactly (keys written as null stay null, absent keys stay
absent, keys no class names are kept), dispatches on the stage, and gives the stage's headlines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.errors import RunDirError
from peaufine.results import (
    ABSENT,
    HEADLINES,
    RESULTS,
    DpoResults,
    SftResults,
    StageResults,
    read_results,
    run_metrics,
    stage_results,
    write_results,
)
from peaufine.rundir import RunDir

SFT = {
    "stage": "sft",
    "steps": 12,
    "general_source": None,
    "forgetting": {"relative_change": 0.031, "verdict": "no forgetting beyond 10%"},
    "answers": {"validation": {"after": {"exact_match": 0.75, "f1": 0.8, "n": 4}}},
    "a_key_of_tomorrow": [1, 2],
}


def test_eval_json_round_trips_exactly_through_the_stage_class() -> None:
    results = stage_results(SFT)
    assert type(results) is SftResults
    assert results.steps == 12 and results.general_source is None
    assert results.tokens_seen is ABSENT and not results.tokens_seen  # absent is false, unlike a table
    assert results.extra == {"a_key_of_tomorrow": [1, 2]}
    assert results.to_json() == SFT
    assert "tokens_seen" not in results.to_json()  # a key the run did not write is not invented


def test_headlines_are_the_stage_numbers_that_exist() -> None:
    results = stage_results(SFT)
    assert results.headlines() == {
        "exact match (validation)": 0.75,
        "forgetting (relative)": 0.031,
    }
    # val_loss comes from metrics.jsonl: a driver passes the run's numbers in
    assert results.headlines({"val_loss": 1.5})["validation loss"] == 1.5
    assert {stage: cls.headline_names for stage, cls in RESULTS.items()} == HEADLINES
    assert set(RESULTS) == {"pretrain", "sft", "classify", "reward", "dpo", "rl"}


def test_an_unknown_stage_is_kept_whole_by_the_base_class() -> None:
    results = stage_results({"stage": "distil", "steps": 3, "temperature": 2.0})
    assert type(results) is StageResults
    assert results.extra == {"temperature": 2.0}
    assert results.headlines() == {}


def test_one_writer_one_reader(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert read_results(tmp_path) is None
    with pytest.raises(RunDirError, match="did not finish"):
        run_metrics(tmp_path)
    written = DpoResults.from_json({"stage": "dpo", "steps": 2, "beta": 0.1, "before": {"x": 1.0}})
    write_results(run, written)
    assert json.loads(run.eval.read_text()) == {"stage": "dpo", "steps": 2, "beta": 0.1, "before": {"x": 1.0}}
    again = read_results(tmp_path)
    assert again == written and type(again) is DpoResults
    run.metrics.write_text('{"step": 1, "val_loss": 2.0}\n{"step": 2, "val_loss": 1.0}\n')
    numbers = run_metrics(tmp_path)
    assert numbers["val_loss"] == 1.0 and numbers["final_val_loss"] == 1.0 and numbers["before.x"] == 1.0
