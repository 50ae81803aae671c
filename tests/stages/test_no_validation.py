"""data.validation_fraction: 0 in every fine-tuning stage: the run trains and finishes without a
validation split (no validation figures), instead of failing on an empty split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import run_cli
from test_cli_models import STAGE_DATA, tiny_models

ROWS = {
    "sft.jsonl": [{"prompt": f"ab {i}", "completion": "de f"} for i in range(12)],
    "pairs.jsonl": [{"prompt": f"ab {i}", "chosen": "de f", "rejected": "gh i"} for i in range(12)],
    "labels.jsonl": [{"text": f"a b {i}", "label": i % 2} for i in range(12)],
    "prompts.jsonl": [{"prompt": f"ab {i}"} for i in range(12)],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_models(root)
    for name, rows in ROWS.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "stage",
    [
        "sft",
        "classify",
        "reward",
        "dpo",
        "rl",
    ],
)
def test_every_stage_trains_without_a_validation_split(models, tmp_path, stage, capsys, monkeypatch):
    recipe = {
        "stage": stage,
        "model": {"source": str(models / "lm")},
        "data": {"source": str(models / STAGE_DATA[stage]), "max_length": 32, "validation_fraction": 0},
        "train": {"max_steps": 2, "batch_size": 2, "device": "cpu", "warmup_steps": 0},
        "eval": {"every": 1, "samples": 0, "answers": 0},
    }
    if stage == "rl":
        recipe["method"] = {
            "rl": {"rewards": [{"source": "answer_format"}], "prompts_per_step": 2, "group_size": 2}
        }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_cli([stage, str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err[-2000:]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["steps"] == 2
