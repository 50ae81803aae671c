"""Pipelines: stages chained by their runs; a re-run skips what finished and re-runs what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.drivers.pipeline import (
    Pipeline,
    check_out,
    headline,
    load_pipeline,
    packaged_pipeline,
    parse_stage_overrides,
    run_pipeline,
)
from peaufine.errors import PeaufineError, RecipeError, RunDirError
from peaufine.recipe import load_recipe

TINY = """
name: tiny
stages:
  - name: pretrain
    recipe: world-pretrain-smoke
    set: [train.max_steps=30, train.warmup_steps=3, eval.every=30, eval.samples=0, train.checkpoint_every=30]
  - name: sft
    recipe: world-sft-smoke
    model_from: pretrain
    set: [train.max_steps=6, train.warmup_steps=1, eval.every=6, eval.answers=0, eval.transfer.few_shot=0,
          train.checkpoint_every=6]
"""


def test_a_stage_can_only_read_earlier_stages(tmp_path):
    with pytest.raises(ValueError, match="model_from 'sft' is not an earlier stage"):
        Pipeline.model_validate(
            {"stages": [{"name": "a", "recipe": "x", "model_from": "sft"}, {"name": "sft", "recipe": "y"}]}
        )
    with pytest.raises(ValueError, match="two stages are named 'a'"):
        Pipeline.model_validate({"stages": [{"name": "a", "recipe": "x"}, {"name": "a", "recipe": "y"}]})
    bad = tmp_path / "p.yaml"
    bad.write_text("stages:\n  - name: a\n    recipe: world-sft-smoke\n    typo: 1\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"p.yaml: stages.0.typo"):
        load_pipeline(bad)


def test_an_unknown_reference_names_the_stage(tmp_path):
    pipeline = Pipeline.model_validate(
        {"stages": [{"name": "sft", "recipe": "world-sft-smoke", "set": ["model.source=${pretrain}"]}]}
    )
    with pytest.raises(RecipeError, match=r"stage 'sft': \$\{pretrain\} does not name an earlier stage"):
        run_pipeline(pipeline, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out" / "sft").exists()


def test_stage_overrides_parse_and_a_bare_reference_is_refused_outside_a_pipeline(tmp_path):
    assert parse_stage_overrides(["sft:train.lr=1e-3", "sft:train.max_steps=5", "dpo:train.lr=2"]) == {
        "sft": ["train.lr=1e-3", "train.max_steps=5"],
        "dpo": ["train.lr=2"],
    }
    with pytest.raises(RecipeError, match="STAGE:KEY=VALUE"):
        parse_stage_overrides(["train.lr=1e-3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\nmodel:\n  source: ${pretrain}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"model.source is '\$\{pretrain\}', a reference to a pipeline"):
        load_recipe(recipe, [], stage="sft")


def test_an_out_folder_holding_files_of_no_pipeline_is_refused_and_named(tmp_path):
    pipeline = Pipeline.model_validate({"stages": [{"name": "sft", "recipe": "world-sft-smoke"}]})
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(RunDirError, match="file exists and is not a folder"):
        check_out(tmp_path / "file", pipeline)
    out = tmp_path / "out"
    (out / "sft").mkdir(parents=True)
    (out / ".sft.staging-123").mkdir()
    check_out(out, pipeline)
    (out / "thesis.tex").write_text("mine", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"out holds files that are not this pipeline's \(thesis.tex\)"):
        check_out(out, pipeline)
    (out / "pipeline.json").write_text("{}", encoding="utf-8")
    check_out(out, pipeline)  # an earlier run of a pipeline, whose stages may since have changed


def test_packaged_files_are_found_by_name_and_an_unknown_name_is_one_clear_error(tmp_path):
    pipeline, _ = packaged_pipeline("world-pipeline-smoke")
    assert pipeline.stages[0].name == "pretrain"
    with pytest.raises(
        RecipeError, match="'world-nothing' is neither a pipeline file nor a packaged pipeline"
    ):
        packaged_pipeline("world-nothing")
    typo = Pipeline.model_validate({"stages": [{"name": "sft", "recipe": "world-sft-smok"}]})
    with pytest.raises(RecipeError, match="stage 'sft': recipe 'world-sft-smok' is neither a YAML path"):
        run_pipeline(typo, tmp_path, tmp_path / "out")


def test_a_headline_is_the_stage_table_in_order_for_the_numbers_the_run_has():
    evaluation = {
        "validation": {"accuracy": 0.75, "macro_f1": 0.5, "pearson_r": float("nan")},
        "steps": 10,
    }
    assert list(headline("classify", evaluation).items()) == [("accuracy", 0.75), ("macro F1", 0.5)]
    assert headline("no-such-stage", evaluation) == {}


def _state(out: Path) -> dict[str, str]:
    data = json.loads((out / "pipeline.json").read_text(encoding="utf-8"))
    return {s["name"]: s["status"] for s in data["stages"]}


def _stamp(run: Path) -> int:
    return (run / "eval.json").stat().st_mtime_ns


@pytest.mark.slow
def test_a_rerun_skips_finished_stages_and_reruns_changed_ones_and_their_dependants(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    pipeline, base = load_pipeline(path)
    out = tmp_path / "out"

    first = run_pipeline(pipeline, base, out)
    assert _state(out) == {"pretrain": "ran", "sft": "ran"}
    assert first.evaluation("sft")["stage"] == "sft"
    sft_recipe = (out / "sft" / "recipe.yaml").read_text(encoding="utf-8")
    assert str((out / "pretrain").resolve()) in sft_recipe  # model_from became the pretraining run
    assert (out / "report.html").is_file() and (out / "sft" / "report.html").is_file()
    stamps = {name: _stamp(out / name) for name in ("pretrain", "sft")}

    run_pipeline(pipeline, base, out)  # nothing changed: nothing runs
    assert _state(out) == {"pretrain": "skipped", "sft": "skipped"}
    assert {name: _stamp(out / name) for name in stamps} == stamps

    run_pipeline(pipeline, base, out, overrides={"sft": ["train.lr=1e-4"]})  # only sft changed
    assert _state(out) == {"pretrain": "skipped", "sft": "ran"}
    assert _stamp(out / "pretrain") == stamps["pretrain"] and _stamp(out / "sft") != stamps["sft"]
    assert "lr: 0.0001" in (out / "sft" / "recipe.yaml").read_text(encoding="utf-8")

    stamps = {name: _stamp(out / name) for name in ("pretrain", "sft")}
    overrides = {"pretrain": ["train.max_steps=31"], "sft": ["train.lr=1e-4"]}
    run_pipeline(pipeline, base, out, overrides=overrides)  # pretraining changed: sft reads it, re-runs
    assert _state(out) == {"pretrain": "ran", "sft": "ran"}
    assert all(_stamp(out / name) != stamps[name] for name in stamps)


@pytest.mark.slow
def test_a_stage_that_crashed_reruns_and_the_ones_before_it_are_kept(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    pipeline, base = load_pipeline(path)
    out = tmp_path / "out"
    with pytest.raises(PeaufineError):  # sft's data file does not exist
        run_pipeline(pipeline, base, out, overrides={"sft": [f"data.source={tmp_path / 'missing.jsonl'}"]})
    assert _state(out) == {"pretrain": "ran", "sft": "failed"}
    stamp = _stamp(out / "pretrain")
    run_pipeline(pipeline, base, out)
    assert _state(out) == {"pretrain": "skipped", "sft": "ran"}
    assert _stamp(out / "pretrain") == stamp


@pytest.mark.slow
def test_the_demo_is_a_pipeline_and_its_rerun_skips_every_stage(smoke_demo):
    state = json.loads((smoke_demo.out / "pipeline.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in state["stages"]] == ["pretrain", "sft", "reward", "dpo", "grpo"]
    assert {s["status"] for s in state["stages"]} == {"ran"}
    assert state["stages"][1]["headline"]["forgetting (relative)"] == pytest.approx(
        smoke_demo.stages["sft"]["forgetting"]["relative_change"]
    )
    grpo_recipe = (smoke_demo.out / "grpo" / "recipe.yaml").read_text(encoding="utf-8")
    assert str(smoke_demo.out / "reward") in grpo_recipe  # ${reward} became the reward run
    from peaufine.drivers.demo import run_demo

    again = run_demo(smoke_demo.out, smoke=True)
    assert again.seconds < 30
    assert {s["status"] for s in json.loads((smoke_demo.out / "pipeline.json").read_text())["stages"]} == {
        "skipped"
    }
    assert again.stages["sft"] == smoke_demo.stages["sft"]
