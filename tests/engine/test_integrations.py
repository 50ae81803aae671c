"""TensorBoard and MLflow receive what metrics.jsonl receives: read back with their own readers."""

from __future__ import annotations

import json

import pytest

from peaufine.engine.integrations import check_tracking, flat_params, mlflow_key
from peaufine.errors import RecipeError
from peaufine.recipe import TrackBlock, validate_recipe
from peaufine.stages.pretrain import run_pretrain


def tiny_pretrain(tmp_path, **track):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"line {i} of the small corpus, word {i % 7}" for i in range(80)))
    return validate_recipe(
        {
            "model": {
                "source": "llama-tiny",
                "tokenizer": {"kind": "char"},
                "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
            },
            "data": {"source": str(corpus), "block_size": 32, "validation_fraction": 0.1},
            "train": {"max_steps": 12, "batch_size": 4, "log_every": 4, "device": "cpu"},
            "eval": {"every": 6, "samples": 0},
            "track": track,
        }
    )


def test_a_missing_integration_fails_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(RecipeError, match=r"track.mlflow is on but the 'mlflow' package is not installed"):
        check_tracking(TrackBlock(mlflow=True))
    check_tracking(TrackBlock(tensorboard=False, mlflow=False))


def test_mlflow_keys_keep_only_what_mlflow_accepts():
    assert mlflow_key("reward/reward_model:reward") == "reward/reward_model_reward"
    assert (
        mlflow_key("validation.by_kind.concise>wrong.accuracy") == "validation.by_kind.concise_wrong.accuracy"
    )


def test_mlflow_params_are_the_recipe_as_dotted_text_with_lists_whole():
    recipe = {
        "stage": "sft",
        "train": {"lr": 0.001, "resume_from": None, "bf16": True},
        "lora": {"targets": ["q", "v"]},
    }
    assert flat_params(recipe) == {
        "stage": "sft",
        "train.lr": "0.001",
        "train.resume_from": "null",
        "train.bf16": "True",
        "lora.targets": "['q', 'v']",
    }


def test_tensorboard_and_mlflow_get_every_logged_row(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'peaufine[track]'")
    pytest.importorskip("mlflow", reason="pip install 'peaufine[track]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_pretrain(tiny_pretrain(tmp_path, tensorboard=True, mlflow=True), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert len(train) >= 3 and len(val) == 2

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train_loss")]
    assert [s for s, _ in logged] == [s for s, _ in train]
    assert [v for _, v in logged] == pytest.approx([v for _, v in train], rel=1e-6)
    assert [e.step for e in events.Scalars("val_loss")] == [s for s, _ in val]
    evaluation = json.loads((run / "eval.json").read_text())
    assert events.Scalars("eval/val_loss")[0].value == pytest.approx(evaluation["val_loss"], rel=1e-6)

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("peaufine").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["train.max_steps"] == "12" and found.data.params["stage"] == "pretrain"
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v, rel=1e-6)) for s, v in val]
    assert found.data.metrics["eval.val_loss"] == pytest.approx(evaluation["val_loss"], rel=1e-6)
