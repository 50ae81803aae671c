"""A study is validated whole before its folder exists: every mistake is one message (exit 2) naming the
file and the key, and nothing is created; the packaged studies validate as shipped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from study_files import BASE, write_study

from peaufine import cli
from peaufine.drivers.compare.arms import arm_recipe, freeze_block, lr_grid
from peaufine.drivers.compare.run import check_study
from peaufine.drivers.compare.study import Arm, load_study, locate_study
from peaufine.errors import RecipeError


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["peaufine", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, " ".join(capsys.readouterr().err.split())


# the tiny study with `base:` naming a run folder instead of a pretrain recipe
def base_run(run) -> str:
    return f"base: {run}\n" + BASE[BASE.index("task:") :]


CASES = {
    "unknown top-level key": ("", "budgt: {steps: 1, batch_size: 1}\n", ["unknown key 'budgt'"]),
    "unknown strategy": (
        "arms:\n  - {name: a, strategy: lora2}\n",
        "",
        ["arms.0.strategy", "lora2"],
    ),
    "unknown arm key": ("arms:\n  - {name: a, strategy: lora, rank: 8}\n", "", ["unknown key 'arms.0.rank'"]),
    "fraction out of range": ("", "fractions: [0.0, 1.0]\n", ["fractions", "(0, 1]"]),
    "two arms of one name": (
        "arms:\n  - {name: a, strategy: lora}\n  - {name: a, strategy: full}\n",
        "",
        ["two arms are named a"],
    ),
    "a bad override, named with its arm": (
        "arms:\n  - {name: a, strategy: lora, overrides: {train.lr: -1}}\n",
        "",
        ["arm 'a' (lora)", "train.lr"],
    ),
    "an override that is no recipe key": (
        "arms:\n  - {name: a, strategy: lora, overrides: {model.adapter.rank: 4}}\n",
        "",
        ["arm 'a' (lora)", "model.adapter.rank"],
    ),
    "few-shot on a classifier": (
        "arms:\n  - {name: a, strategy: few_shot, overrides: {stage: classify, data.source: "
        + "/nowhere}}\n",
        "",
        ["arm 'a' (few_shot)"],
    ),
    "absent task data": (
        "arms:\n  - {name: a, strategy: full, overrides: {data.source: /nowhere/sst2}}\n",
        "",
        ["data.source", "/nowhere/sst2", "not found"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_study_exits_2_naming_file_and_key_and_creates_nothing(case, tmp_path, capsys, monkeypatch):
    arms, extra, needles = CASES[case]
    study = write_study(tmp_path, extra, **({"arms": arms} if arms else {}))
    out = tmp_path / "out"
    code, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err
    assert str(study) in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not out.exists()


def test_a_task_of_another_stage_and_a_missing_study_are_refused(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("stage: sft", "stage: dpo"), encoding="utf-8")
    code, err = run_cli(["compare", str(study), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "task" in err and "sft or classify" in err
    code, err = run_cli(["compare", "no-such-study", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "no-such-study" in err and "packaged study" in err
    assert not (tmp_path / "o").exists()


def test_an_output_folder_holding_something_else_is_refused(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    code, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["world-compare", "world-compare-smoke"])
def test_the_packaged_world_studies_validate(name, tmp_path):
    loaded = load_study(locate_study(name.removesuffix("-smoke"), smoke=name.endswith("-smoke")))
    plan = check_study(loaded, tmp_path / "out", search=None)
    strategies = {arm.strategy for arm in loaded.study.arms}
    assert strategies == {
        "full",
        "freeze",
        "lora",
        "dora",
        "bottleneck",
        "ia3",
        "prompt_tuning",
        "few_shot",
        "scratch",
    }
    assert plan.base is not None and not (tmp_path / "out").exists()
    assert not plan.searching  # one packaged LR per arm, unless --search
    assert check_study(loaded, tmp_path / "out", search=True).searching


def test_each_strategy_sets_its_keys_and_the_budget_is_the_same_for_every_arm(tmp_path):
    loaded = load_study(write_study(tmp_path))
    recipes = {
        arm.name: arm_recipe(loaded, arm, fraction=0.3, seed=1, lr=2e-3, model_source="/b", layers=4)
        for arm in loaded.study.arms
    }
    assert {r.train.max_steps for r in recipes.values()} == {4}
    assert {r.train.batch_size for r in recipes.values()} == {4}
    assert {r.data.train_fraction for r in recipes.values()} == {0.3}
    assert {r.model.source for r in recipes.values()} == {"/b"}
    assert recipes["full"].model.adapter.kind == "none" and not recipes["full"].model.freeze.layers
    assert recipes["freeze"].model.freeze.layers == [0, 1] and recipes["freeze"].model.freeze.embeddings
    assert recipes["lora"].model.adapter.kind == "lora" and recipes["lora"].model.adapter.r == 8
    assert recipes["dora"].model.adapter.dora and not recipes["lora"].model.adapter.dora
    assert recipes["scratch"].model.init == "scratch" and recipes["full"].model.init == "pretrained"
    assert recipes["few"].eval.transfer.few_shot == 2 and recipes["full"].eval.transfer.few_shot == 0
    prompt = Arm(name="p", strategy="prompt_tuning")
    assert not arm_recipe(
        loaded, prompt, fraction=1.0, seed=0, lr=1e-3, model_source=None, layers=2
    ).data.packing
    assert freeze_block(5) == {"layers": [0, 1], "embeddings": True}


def test_lr_grid_is_centred_on_the_arms_rate():
    assert lr_grid(Arm(name="l", strategy="lora"), 3) == [0.000333, 0.001, 0.003]
    assert lr_grid(Arm(name="f", strategy="full", lr=2e-4), 3) == [6.67e-05, 0.0002, 0.0006]
    assert lr_grid(Arm(name="g", strategy="full", lr_grid=[3e-4, 1e-4]), 3) == [1e-4, 3e-4]
    assert lr_grid(Arm(name="k", strategy="few_shot"), 3) == []


def test_smoke_is_for_packaged_studies(tmp_path):
    study = write_study(tmp_path)
    with pytest.raises(RecipeError, match="--smoke"):
        locate_study(study, smoke=True)
    assert locate_study(Path(study)) == study


def test_sst2_compare_refuses_absent_data_and_validates_where_it_is(tmp_path, capsys, monkeypatch):
    """Never skipped: where SST-2 is absent the study stops with exit 2 naming the file; a folder laid
    out as the shared data is (../shared/data/sst2/train.tsv) validates, every arm's recipe included."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, err = run_cli(["compare", "sst2-compare", "--out", "out"], capsys, monkeypatch)
    assert code == 2 and "../shared/data/sst2/train.tsv not found" in err
    assert not (work / "out").exists()
    data = tmp_path / "shared" / "data" / "sst2"
    data.mkdir(parents=True)
    rows = "".join(f"a {'good' if i % 2 else 'bad'} film {i}\t{i % 2}\n" for i in range(50))
    (data / "train.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    loaded = load_study(locate_study("sst2-compare"))
    plan = check_study(loaded, work / "out", search=None)
    assert plan.searching and plan.base is None and not (work / "out").exists()
    assert {arm.strategy for arm in loaded.study.arms} == {
        "full",
        "freeze",
        "lora",
        "bottleneck",
        "ia3",
        "scratch",
    }
    assert loaded.study.seeds == [0, 1, 2] and loaded.study.search.fraction == 0.3
    # the study's fractions are of the task's 3,000 sentences
    recipe = arm_recipe(
        loaded, loaded.study.arms[0], fraction=0.1, seed=0, lr=1e-4, model_source=None, layers=6
    )
    assert recipe.data.train_fraction == pytest.approx(0.004513)


def test_a_finished_run_as_base_is_every_arms_model_and_is_not_re_made(tmp_path, world_run):
    """`base:` naming a finished run (the demo's pretraining, say) is used as it is: no OUT/base run."""
    study = write_study(tmp_path, base=base_run(world_run))
    loaded = load_study(study)
    assert loaded.base is None and loaded.base_run == world_run.resolve()
    plan = check_study(loaded, tmp_path / "out", search=None)
    assert plan.base is None and plan.model_source == str(world_run.resolve())
    recipe = arm_recipe(
        loaded, loaded.study.arms[0], fraction=1.0, seed=0, lr=1e-4, model_source=plan.model_source, layers=1
    )
    assert recipe.model.source == str(world_run.resolve())


def test_an_unfinished_run_as_base_is_refused(tmp_path, world_run, capsys, monkeypatch):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(world_run, unfinished)
    marker = unfinished / ".peaufine-run.json"
    marker.write_text(marker.read_text(encoding="utf-8").replace('"finished"', '"interrupted"'))
    study = write_study(tmp_path, base=base_run(unfinished))
    code, err = run_cli(["compare", str(study), "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and "has not finished" in err and not (tmp_path / "out").exists()
