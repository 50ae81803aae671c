"""A tiny study end to end through the CLI (its arms' runs are real child processes): every column for
every arm, finite or explicitly n/a; a failing arm reported while the others go on; the same validation
data at every fraction; and a second invocation re-runs nothing."""

from __future__ import annotations

import io
import json
import math
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from study_files import write_study

from peaufine import cli

ARMS = """\
arms:
  - {name: full, strategy: full}
  - {name: freeze, strategy: freeze}
  - {name: lora, strategy: lora}
  - {name: dora, strategy: dora}
  - {name: few, strategy: few_shot, k: 2}
  - {name: scratch, strategy: scratch}
  - {name: broken, strategy: lora, overrides: {model.adapter.target_modules: [no_such_proj]}}
"""
COLUMNS = ("task", "overfitting", "forgetting", "transfer", "cost", "hp_sensitivity", "data", "verdict")


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["peaufine", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leaves(value, path=""):
    """Every leaf of a nested JSON value, with its dotted path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}.{index}")
    else:
        yield path, value


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The study run once by the CLI, in-process, for the module's tests: (study, out, exit code, stdout
    and stderr)."""
    folder = tmp_path_factory.mktemp("compare")
    study = write_study(folder, "fractions: [0.5, 1.0]\n", arms=ARMS)
    out, stdout, stderr = folder / "out", io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        patch.setattr(sys, "argv", ["peaufine", "compare", str(study), "--out", str(out)])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return study, out, code, stdout.getvalue(), stderr.getvalue()


def test_every_arm_has_every_column_and_a_failure_is_reported(study_run, capsys, monkeypatch):
    _, out, code, stdout, err = study_run
    assert code == 0, err
    assert "ranking:" in stdout
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert set(data["arms"]) == {"full", "freeze", "lora", "dora", "few", "scratch", "broken"}
    for name, arm in data["arms"].items():
        for column in COLUMNS:
            assert column in arm, (name, column)
        for path, value in leaves(arm):
            if isinstance(value, float):
                assert math.isfinite(value), (name, path, value)
        assert set(arm["data"]) == {"0.5", "1"}
    # the arm that cannot place its adapter failed, with its error, and every other arm finished
    broken = data["arms"]["broken"]
    assert broken["status"] == "failed" and "no_such_proj" in " ".join(broken["errors"].values())
    assert broken["verdict"].startswith("LoRA r=8") or broken["verdict"].startswith("broken")
    assert "failed" in broken["verdict"]
    assert broken["cost"]["trainable_parameters"] == "n/a"
    others = {n: a for n, a in data["arms"].items() if n != "broken"}
    assert {a["status"] for a in others.values()} == {"finished"}
    for name, arm in others.items():
        after = arm["task"]["validation.after"]["exact_match"]
        assert 0.0 <= after["value"] <= 1.0 and after["n"] >= 1
        assert after["low"] <= after["value"] <= after["high"], name
        assert arm["cost"]["peak_rss_mb"] > 50  # a python process with torch: its own, measured
        assert isinstance(arm["cost"]["trainable_parameters"], int)
    costs = {n: a["cost"]["trainable_parameters"] for n, a in others.items()}
    assert costs["few"] == 0
    assert 0 < costs["lora"] < costs["full"] and 0 < costs["freeze"] < costs["full"]
    assert costs["scratch"] == costs["full"]
    assert others["scratch"]["forgetting"]["relative_change"] == "n/a"
    assert isinstance(others["full"]["forgetting"]["relative_change"], float)
    assert others["few"]["forgetting"]["relative_change"] == 0.0
    # the transfer verdict names the baselines of the same study
    assert set(others["full"]["transfer"]["baselines"]) == {"base zero-shot", "few-shot", "from scratch"}
    # arms pair up question by question (each run's answers.jsonl), McNemar on the same n questions
    n = others["full"]["task"]["validation.after"]["exact_match"]["n"]
    pair = next(c for c in data["comparisons"] if (c["a"], c["b"]) == ("full", "lora"))
    assert pair["method"] == "mcnemar" and pair["n"] == n and isinstance(pair["measurable"], bool)
    assert others["lora"]["transfer"]["versus"]["base zero-shot"]["n"] == n
    assert data["reference"] == "full"
    assert sum(len(tier) for tier in data["ranking"]) == 6
    (out / "report.html").unlink()  # `peaufine report` rewrites a comparison's page as any report
    code, _, err = run_cli(["report", str(out)], capsys, monkeypatch)
    assert code == 0, err
    report = (out / "report.html").read_text(encoding="utf-8")
    for plot in ("pareto.png", "learning-curves.png", "forgetting-vs-gain.png"):
        assert (out / "plots" / plot).is_file() and f"plots/{plot}" in report


def test_every_fraction_validates_on_the_same_examples(study_run):
    out = study_run[1]
    half, whole = out / "arms" / "full" / "0.5" / "0" / "data", out / "arms" / "full" / "1" / "0" / "data"
    for split in ("validation.jsonl", "heldout.jsonl"):
        assert (half / split).read_bytes() == (whole / split).read_bytes()
    half_train = (half / "train.jsonl").read_text(encoding="utf-8").splitlines()
    whole_train = (whole / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert abs(len(half_train) - len(whole_train) / 2) <= 1
    assert set(half_train) < set(whole_train)


def test_a_second_invocation_re_runs_nothing_finished(study_run, capsys, monkeypatch):
    study, out = study_run[:2]
    evals = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/*/*/eval.json")}
    assert len(evals) == 12  # 6 arms x 2 fractions; the broken arm has none
    # one run left half-done (killed): it alone runs again
    half_done = out / "arms" / "lora" / "1" / "0"
    marker = json.loads((half_done / ".peaufine-run.json").read_text(encoding="utf-8"))
    (half_done / ".peaufine-run.json").write_text(json.dumps({**marker, "status": "interrupted"}))
    code, _, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    again = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/*/*/eval.json")}
    assert {p for p in evals if again[p] != evals[p]} == {half_done / "eval.json"}
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    statuses = {key: p["status"] for key, p in data["processes"].items()}
    assert statuses.pop("lora/1/0") == "finished"
    assert {s for k, s in statuses.items() if not k.startswith("broken")} == {"skipped"}
    # the failed arm's runs are tried again (they fail again)
    assert {s for k, s in statuses.items() if k.startswith("broken")} == {"failed"}
    # the memory measured when the runs ran is kept
    assert data["arms"]["lora"]["cost"]["peak_rss_mb"] > 50


@pytest.mark.slow
def test_the_lr_search_picks_each_arms_rate_by_validation_loss_and_reuses_its_run(
    tmp_path, capsys, monkeypatch
):
    arms = "arms:\n  - {name: lora, strategy: lora}\n  - {name: few, strategy: few_shot, k: 1}\n"
    study = write_study(
        tmp_path, "fractions: [0.5, 1.0]\nsearch: {lrs_per_arm: 3, fraction: 1.0}\n", arms=arms
    )
    out = tmp_path / "out"
    code, _, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    lora = data["arms"]["lora"]
    grid = sorted(out.glob("arms/lora/1/0/lr-*"))
    assert [p.name for p in grid] == ["lr-0.000333", "lr-0.001", "lr-0.003"]
    losses = {
        float(p.name[3:]): min(
            json.loads(line)["val_loss"]
            for line in (p / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if "val_loss" in json.loads(line)
        )
        for p in grid
    }
    assert lora["lr"] == min(losses, key=losses.get)
    assert lora["lr_chosen_by"].startswith("lowest validation loss")
    # the search's run at the chosen rate is the arm's run at the search fraction: not run twice
    assert lora["runs"]["lora/1/0" + f"/lr-{lora['lr']:g}"] == f"arms/lora/1/0/lr-{lora['lr']:g}"
    assert not (out / "arms" / "lora" / "1" / "0" / "eval.json").exists()
    half = yaml.safe_load((out / "arms" / "lora" / "0.5" / "0" / "recipe.yaml").read_text(encoding="utf-8"))
    assert half["train"]["lr"] == lora["lr"]
    values = [v for v in lora["hp_sensitivity"]["grid"].values()]
    assert lora["hp_sensitivity"]["value"] == max(values) - min(values)
    assert data["arms"]["few"]["hp_sensitivity"]["value"] == "n/a"


@pytest.mark.slow
def test_k_fold_pools_every_folds_validation_examples(tmp_path, capsys, monkeypatch):
    arms = "arms:\n  - {name: lora, strategy: lora}\n  - {name: few, strategy: few_shot, k: 1}\n"
    study = write_study(tmp_path, "folds: 2\n", arms=arms)
    out = tmp_path / "out"
    code, _, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["folds"] == 2
    for name in ("lora", "few"):
        run = out / "arms" / name / "1" / "0"
        folds = [json.loads((run / f"fold-{i}" / "eval.json").read_text()) for i in range(2)]
        counts = [f["answers"]["validation"]["after"]["n"] for f in folds]
        after = data["arms"][name]["task"]["validation.after"]["exact_match"]
        assert after["n"] == sum(counts)  # every fold's validation examples, each once
        expected = sum(
            f["answers"]["validation"]["after"]["exact_match"] * c for f, c in zip(folds, counts, strict=True)
        )
        assert after["value"] == pytest.approx(expected / sum(counts))
        assert after["low"] <= after["value"] <= after["high"]
    assert (out / "arms" / "lora" / "1" / "0" / "cv.json").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/*/*/fold-*/eval.json")}
    assert len(mtimes) == 4
    code, _, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in out.glob("arms/*/*/*/fold-*/eval.json")} == mtimes


@pytest.mark.slow
def test_several_seeds_give_a_mean_with_its_interval_and_the_spread_over_seeds(tmp_path, capsys, monkeypatch):
    arms = "arms:\n  - {name: lora, strategy: lora}\n"
    study = write_study(tmp_path, "seeds: [0, 1]\n", arms=arms)
    out = tmp_path / "out"
    code, _, err = run_cli(["compare", str(study), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    lora = json.loads((out / "compare.json").read_text(encoding="utf-8"))["arms"]["lora"]
    values = [
        json.loads((out / "arms" / "lora" / "1" / str(seed) / "eval.json").read_text())["answers"][
            "validation"
        ]["after"]["exact_match"]
        for seed in (0, 1)
    ]
    mean = lora["task"]["mean_over_seeds"]
    assert mean["seeds"] == 2 and mean["value"] == pytest.approx(sum(values) / 2)
    half = 12.706 * abs(values[0] - values[1]) / 2  # t(1) x sd / sqrt(2), sd = |a - b| / sqrt(2)
    assert (mean["low"], mean["high"]) == pytest.approx((mean["value"] - half, mean["value"] + half))
    assert lora["hp_sensitivity"] == {"value": pytest.approx(abs(values[0] - values[1])), "over": "seeds"}
    assert lora["data"]["1"] == pytest.approx(mean["value"])
