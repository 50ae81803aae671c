"""Cross-validation end to end: k runs whose validation folds partition the task, mean ± std of each
metric, per-fold runs kept and reused when the command is run again."""

from __future__ import annotations

import json
import statistics

import pytest

from peaufine.drivers.crossval import check_out, run_crossval, summarise
from peaufine.errors import RecipeError, RunDirError
from peaufine.recipe import load_recipe


def test_summary_is_mean_and_sample_std_of_metrics_every_fold_has():
    summary = summarise([{"a": 1.0, "b": 5.0}, {"a": 2.0}, {"a": 4.0, "c": 1.0}])
    assert set(summary) == {"a"}
    assert summary["a"]["mean"] == pytest.approx(7 / 3)
    assert summary["a"]["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert summary["a"]["values"] == [1.0, 2.0, 4.0]


def test_only_fine_tuning_stages_cross_validate(tmp_path):
    with pytest.raises(RecipeError, match="cross-validation runs stages sft, classify, reward"):
        run_crossval(load_recipe(None, [], stage="pretrain"), tmp_path / "cv", 3)


def test_an_out_folder_holding_anything_but_folds_is_refused_and_named(tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(RunDirError, match="file exists and is not a folder"):
        check_out(tmp_path / "file", overwrite=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("stage: sft\n", encoding="utf-8")
    with pytest.raises(RunDirError, match="holds a single run, not a cross-validation"):
        check_out(run, overwrite=True)
    cv = tmp_path / "cv"
    (cv / "fold-0").mkdir(parents=True)
    (cv / "cv.json").write_text("{}", encoding="utf-8")
    check_out(cv, overwrite=False)
    (cv / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"cv holds files that are not a cross-validation's \(notes.txt\)"):
        check_out(cv, overwrite=False)
    check_out(cv, overwrite=True)  # --overwrite re-runs the folds beside it


def _questions(path):
    return [json.dumps(json.loads(line)["messages"]) for line in path.read_text().splitlines() if line]


@pytest.mark.slow
def test_sft_folds_partition_the_task_and_a_rerun_reuses_them(smoke_demo, tmp_path):
    recipe = load_recipe(
        None,
        [
            f"model.source={smoke_demo.out / 'pretrain'}",
            "model.adapter.kind=lora",
            "data.max_length=64",
            "train.max_steps=8",
            "train.batch_size=8",
            "train.log_every=4",
            "eval.every=4",
            "eval.answers=0",
            "eval.transfer.few_shot=0",
        ],
        stage="sft",
    )
    result = run_crossval(recipe, tmp_path / "cv", 3)
    validated: list[str] = []
    every: set[str] | None = None
    for fold in range(3):
        data = tmp_path / "cv" / f"fold-{fold}" / "data"
        train, validation = _questions(data / "train.jsonl"), _questions(data / "validation.jsonl")
        assert not set(train) & set(validation)
        union = set(train) | set(validation)
        assert every is None or union == every  # each fold splits the same task
        every = union
        validated += validation
    assert sorted(validated) == sorted(every)  # each question is validated in exactly one fold

    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    losses = cv["metrics"]["val_loss"]["values"]
    assert len(losses) == 3 and len(set(losses)) == 3
    assert cv["metrics"]["val_loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    assert result.metrics["val_loss"]["std"] == pytest.approx(statistics.stdev(losses))
    assert "forgetting.relative_change" in cv["headline"]
    assert (tmp_path / "cv" / "report.html").is_file()

    again = run_crossval(recipe, tmp_path / "cv", 3)
    assert again.reused == [0, 1, 2]
    assert again.metrics == result.metrics
