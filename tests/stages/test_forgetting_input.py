"""The general text that forgetting is measured on must hold one block (data.max_length + 1 tokens):
a shorter one given by the user is refused up front; one that comes from a pretraining run without
a usable validation split leaves forgetting unmeasured, said so. Never a NaN verdict."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from test_cli import run_cli, tiny_recipe


def sft_recipe(tmp_path: Path, source: Path, **evaluation: object) -> Path:
    records = tmp_path / "task.jsonl"
    records.write_text(
        "".join(json.dumps({"prompt": f"q {i}", "completion": f"a {i}"}) + "\n" for i in range(12)),
        encoding="utf-8",
    )
    recipe = {
        "stage": "sft",
        "model": {"source": str(source)},
        "data": {"source": str(records), "max_length": 32, "validation_fraction": 0.25},
        "train": {"max_steps": 2, "batch_size": 2, "device": "cpu", "warmup_steps": 0},
        "eval": {"every": 2, "samples": 0, "answers": 0, **evaluation},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny pretraining runs: one with a validation split, one with none."""
    root = tmp_path_factory.mktemp("pretrained")
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(40)))
    runs = {}
    for name, fraction in (("with", 0.1), ("without", 0.0)):
        monkeypatch = pytest.MonkeyPatch()
        folder = root / name
        folder.mkdir()
        args = ["pretrain", str(tiny_recipe(folder, str(corpus))), "--out", str(folder / "run")]
        args += ["--set", f"data.validation_fraction={fraction}"]
        code, _, err = run_cli(args, _NoCapture(), monkeypatch)
        monkeypatch.undo()
        assert code == 0, err
        runs[name] = folder / "run"
    return runs


class _NoCapture:
    """capsys's one method that run_cli uses, for a module fixture (which has no capsys)."""

    def readouterr(self):
        class Captured:
            out = err = ""

        return Captured()


def test_a_general_text_shorter_than_a_block_is_refused_up_front(pretrained, tmp_path, capsys, monkeypatch):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab cd\n", encoding="utf-8")
    recipe = sft_recipe(tmp_path, pretrained["with"], forgetting={"general": str(tiny)})
    out = tmp_path / "run"
    code, _, err = run_cli(["sft", str(recipe), "--out", str(out)], capsys, monkeypatch)
    flat = " ".join(err.split())
    assert code == 2 and not out.exists(), flat
    assert "eval.forgetting.general" in flat and "data.max_length" in flat and "tiny.txt" in flat, flat


def test_a_pretraining_run_without_validation_leaves_forgetting_unmeasured(
    pretrained, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["sft", str(sft_recipe(tmp_path, pretrained["without"])), "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err
    evaluation = json.loads((out / "eval.json").read_text())
    forgetting = evaluation.get("forgetting") or {}
    assert "loss_before" not in forgetting and "not measured" in forgetting.get("verdict", "not measured")
    assert "forgetting" in err and "not measured" in " ".join(err.split())


def test_a_pretraining_run_with_validation_measures_forgetting(pretrained, tmp_path, capsys, monkeypatch):
    """The negative control: finite losses and a verdict."""
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["sft", str(sft_recipe(tmp_path, pretrained["with"])), "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err
    forgetting = json.loads((out / "eval.json").read_text())["forgetting"]
    assert math.isfinite(forgetting["loss_before"]) and math.isfinite(forgetting["loss_after"])


def test_eval_refuses_a_general_text_shorter_than_a_block(pretrained, tmp_path, capsys, monkeypatch):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab cd\n", encoding="utf-8")
    code, out, err = run_cli(["eval", str(pretrained["with"]), "--general", str(tiny)], capsys, monkeypatch)
    flat = " ".join(err.split())
    assert code == 2 and "NaN" not in out, out
    assert "tiny.txt" in flat and "--max-length" in flat, flat


def test_a_replay_text_shorter_than_a_block_is_refused_up_front(pretrained, tmp_path, capsys, monkeypatch):
    """Replay draws windows of data.max_length tokens: a shorter text gave none, and the run trained
    without the replay its recipe asked for, saying nothing."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab cd\n", encoding="utf-8")
    recipe = sft_recipe(tmp_path, pretrained["with"])
    data = json.loads(recipe.read_text(encoding="utf-8"))
    data["data"]["replay"] = {"source": str(tiny), "ratio": 0.25}
    recipe.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_cli(["sft", str(recipe), "--out", str(out)], capsys, monkeypatch)
    flat = " ".join(err.split())
    assert code == 2 and not out.exists(), flat
    assert "data.replay.source" in flat and "data.max_length" in flat and "tiny.txt" in flat, flat
    assert len(list(tmp_path.iterdir())) == 3  # task.jsonl, sft.yaml, tiny.txt: nothing else made

    # the control: a replay text of several blocks is replayed, and the run logs its loss apart
    words = " ".join(f"word{i % 7}" for i in range(400))
    tiny.write_text(words + "\n", encoding="utf-8")
    code, _, err = run_cli(["sft", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(row.get("replay_loss") is not None for row in rows)
