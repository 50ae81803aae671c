"""The sft stage end to end on constructed cases: forgetting is flagged when it happens and is smaller
with LoRA at a low learning rate; overfitting on tiny data is found and early stopping restores the best."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peaufine.commands.eval import run_eval
from peaufine.recipe import validate_recipe
from peaufine.stages.pretrain import run_pretrain
from peaufine.stages.sft import run_sft

WORDS = [
    "the",
    "river",
    "stone",
    "north",
    "light",
    "green",
    "house",
    "small",
    "early",
    "winter",
    "sings",
    "walks",
    "under",
    "over",
    "bright",
    "field",
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny model pretrained on plain word text: its validation split is the general set."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    corpus = root / "general.txt"
    corpus.write_text(
        "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200)), encoding="utf-8"
    )
    recipe = validate_recipe(
        {
            "model": {
                "source": "llama-tiny",
                "tokenizer": {"kind": "bpe", "vocab_size": 300},
                "config": {
                    "hidden_size": 48,
                    "intermediate_size": 96,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                },
            },
            "data": {"source": str(corpus), "block_size": 32, "validation_fraction": 0.1},
            "train": {"max_steps": 120, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "device": "cpu"},
            "eval": {"every": 60, "samples": 0},
        }
    )
    run_pretrain(recipe, root / "base")
    return root / "base"


def digit_task(path: Path, n: int, seed: int = 1) -> Path:
    """Text nothing like the general set: digit strings to be reversed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        digits = [str(rng.randint(0, 9)) for _ in range(8)]
        rows.append({"prompt": " ".join(digits), "completion": " ".join(reversed(digits))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_recipe(base: Path, data: Path, **train: object) -> dict:
    return {
        "stage": "sft",
        "model": {"source": str(base)},
        "data": {"source": str(data), "max_length": 48, "validation_fraction": 0.2},
        "train": {"batch_size": 8, "warmup_steps": 0, "device": "cpu", "log_every": 5, **train},
        "eval": {"every": 10, "answers": 0, "transfer": {"few_shot": 0}},
    }


@pytest.mark.slow
def test_forgetting_is_flagged_and_lora_at_a_low_lr_forgets_less(base_run, tmp_path):
    data = digit_task(tmp_path / "digits.jsonl", 64)
    harsh = validate_recipe(sft_recipe(base_run, data, lr=1e-2, max_steps=60, schedule="constant"))
    gentle = sft_recipe(base_run, data, lr=1e-4, max_steps=60, schedule="constant")
    gentle["model"]["adapter"] = {"kind": "lora", "r": 4}
    full = run_sft(harsh, tmp_path / "full").evaluation["forgetting"]
    lora = run_sft(validate_recipe(gentle), tmp_path / "lora").evaluation["forgetting"]
    assert full["forgot"] and full["relative_change"] > full["threshold"]
    assert "forgetting" in full["verdict"]
    assert lora["relative_change"] < full["relative_change"] / 4
    assert not lora["forgot"]
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "lora" / "model" / "model.safetensors").is_file()

    # `peaufine eval` measures the same on the saved models, against the base
    measured = run_eval(
        str(tmp_path / "full"),
        str(data),
        general=str(base_run.parent / "general.txt"),
        base=str(base_run),
        max_length=48,
        answers=4,
    )
    assert measured["forgetting"]["forgot"]
    assert measured["model"]["task_loss"] < measured["base"]["task_loss"]
    assert measured["model"]["answers"]["n"] == 4


@pytest.mark.slow
def test_overfitting_onset_is_found_and_early_stopping_restores_it(base_run, tmp_path):
    data = digit_task(tmp_path / "few.jsonl", 10)
    recipe = sft_recipe(base_run, data, lr=1e-2, max_steps=400, schedule="constant")
    recipe["eval"]["early_stopping"] = {"patience": 3}
    result = run_sft(validate_recipe(recipe), tmp_path / "run")
    overfitting = result.evaluation["overfitting"]
    assert result.fit.stopped_early and result.fit.steps < 400
    assert overfitting["overfit"]
    assert overfitting["onset_step"] == result.fit.best_step == overfitting["best_step"]
    assert overfitting["restored_best"]
    assert overfitting["final_val_loss"] > overfitting["best_val_loss"]
    # the model written is the restored one: its task loss is the best validation loss
    assert result.evaluation["task_val_loss"]["after"] == pytest.approx(
        overfitting["best_val_loss"], rel=1e-4
    )
    for name in ["recipe.yaml", "eval.json", "loss.png", "chat_template.jinja", "first_example.txt"]:
        assert (tmp_path / "run" / name).is_file(), name


@pytest.mark.slow
def test_transfer_compares_with_the_same_model_trained_from_scratch(base_run, tmp_path):
    data = digit_task(tmp_path / "digits.jsonl", 40)
    recipe = sft_recipe(base_run, data, lr=3e-3, max_steps=30)
    recipe["eval"]["transfer"] = {"from_scratch": True, "few_shot": 2}
    recipe["eval"]["answers"] = 4
    transfer = run_sft(validate_recipe(recipe), tmp_path / "run").evaluation["transfer"]
    figures = transfer["task_val_loss"]
    assert set(figures) == {"fine_tuned", "base_zero_shot", "base_few_shot", "from_scratch"}
    assert all(isinstance(v, float) for v in figures.values())
    assert figures["fine_tuned"] < figures["base_zero_shot"]
    expected = "positive transfer" if figures["fine_tuned"] < figures["from_scratch"] else "NEGATIVE transfer"
    # paired on the same validation examples: a difference whose interval includes 0 is no transfer either way
    paired = transfer["paired"]["from_scratch"]
    assert paired["difference"] == pytest.approx(figures["fine_tuned"] - figures["from_scratch"], rel=1e-5)
    assert set(transfer["paired"]) == {"from_scratch", "base_zero_shot", "base_few_shot"}
    if not paired["measurable"]:
        expected = "no measurable transfer"
    # a fifth of 40 records: the verdict is said to rest on too few, and keeps what was measured
    n = transfer["examples"]
    assert 0 < n < 20 and transfer["meaningful"] is False
    assert transfer["verdict"].startswith(f"not meaningful: it rests on {n} validation example")
    assert f"as measured, {expected}" in transfer["verdict"]


def test_a_bottleneck_run_saves_base_and_adapter_and_a_later_stage_starts_where_it_ended(base_run, tmp_path):
    from peaufine.errors import RecipeError
    from peaufine.models.build import check_recipe_models

    data = digit_task(tmp_path / "digits.jsonl", 40)
    first = sft_recipe(base_run, data, lr=3e-3, max_steps=8)
    first["model"]["adapter"] = {"kind": "bottleneck", "size": 8}
    first["eval"]["forgetting"] = {"general": None}
    before = run_sft(validate_recipe(first), tmp_path / "first").evaluation
    model_dir = tmp_path / "first" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "README.md",
        "adapted_model.json",
        "adapter",
        "base",
    ]
    assert (tmp_path / "first" / "adapter" / "bottleneck_config.json").is_file()
    assert before["task_val_loss"]["after"] < before["task_val_loss"]["before"]

    second = sft_recipe(tmp_path / "first", data, lr=3e-3, max_steps=2)
    second["model"]["adapter"] = {"kind": "bottleneck", "size": 8}
    after = run_sft(validate_recipe(second), tmp_path / "second").evaluation
    # the same validation split, measured on the loaded base + adapter: the continued run starts
    # exactly where the first ended (a bare base, the adapter lost, would start far above)
    assert after["task_val_loss"]["before"] == pytest.approx(before["task_val_loss"]["after"], rel=1e-5)

    second["model"]["adapter"] = {"kind": "lora"}
    with pytest.raises(RecipeError, match="kind: bottleneck"):
        check_recipe_models(validate_recipe(second))


def test_answers_carry_intervals_paired_changes_and_per_question_outcomes(base_run, tmp_path):
    """eval.json's answers: each rate with its interval, the before -> after change paired question by
    question (McNemar, paired bootstrap) with its wording; answers.jsonl holds every outcome, and the
    leakage block finds the validation records planted as copies of training records."""
    data = digit_task(tmp_path / "digits.jsonl", 20)
    rows = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(rows + rows) + "\n", encoding="utf-8")  # every record twice: leakage
    recipe = sft_recipe(base_run, data, lr=3e-3, max_steps=4)
    recipe["eval"]["answers"] = 5
    run = tmp_path / "run"
    evaluation = run_sft(validate_recipe(recipe), run).evaluation
    validation = evaluation["answers"]["validation"]
    for when in ("before", "after"):
        figures = validation[when]
        low, high = figures["exact_match_ci"]
        assert 0.0 <= low <= figures["exact_match"] <= high <= 1.0 and figures["n"] == 5
        low, high = figures["f1_ci"]
        assert low <= figures["f1"] <= high
    change = validation["change"]
    assert change["exact_match"]["method"] == "mcnemar" and change["f1"]["method"] == "paired_bootstrap"
    assert change["exact_match"]["n"] == 5
    assert change["exact_match"]["difference"] == pytest.approx(
        validation["after"]["exact_match"] - validation["before"]["exact_match"]
    )
    assert change["exact_match"]["wording"].startswith("exact match (validation, after vs before): ")
    assert change["exact_match"]["wording"].endswith("n=5)")
    outcomes = [json.loads(line) for line in (run / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(o["split"], o["when"]) for o in outcomes] == [("validation", "before")] * 5 + [
        ("validation", "after")
    ] * 5
    assert set(outcomes[0]) == {"split", "when", "question", "answer", "prediction", "exact", "f1"}
    after = [o for o in outcomes if o["when"] == "after"]
    assert sum(o["exact"] for o in after) / 5 == pytest.approx(validation["after"]["exact_match"])
    leak = evaluation["leakage"]["validation"]
    assert leak["warning"] is True and leak["exact_duplicates"] >= 1
    # the task loss before and after with intervals over the validation examples, and its paired change
    losses = evaluation["task_val_loss"]
    assert losses["before_ci"][0] <= losses["before"] <= losses["before_ci"][1]
    assert losses["after_ci"][0] <= losses["after"] <= losses["after_ci"][1]
    assert losses["change"]["difference"] == pytest.approx(losses["after"] - losses["before"], rel=1e-5)
    assert losses["change"]["wording"].startswith("task validation loss, after vs before: ")
    forgetting = evaluation["forgetting"]
    assert forgetting["loss_before_ci"][0] <= forgetting["loss_before"] <= forgetting["loss_before_ci"][1]
    assert forgetting["change"]["difference"] == pytest.approx(
        forgetting["loss_after"] - forgetting["loss_before"], rel=1e-5
    )

    # `peaufine eval` against the base: each model's rates with intervals, and the change paired
    general = str(base_run.parent / "general.txt")
    measured = run_eval(str(run), str(data), general=general, base=str(base_run), max_length=48, answers=5)
    for key in ("task_loss", "general_loss"):
        low, high = measured["model"][f"{key}_ci"]
        assert low <= measured["model"][key] <= high
        assert measured[f"{key}_change"]["difference"] == pytest.approx(
            measured["model"][key] - measured["base"][key], rel=1e-5
        )
    for side in ("model", "base"):
        low, high = measured[side]["answers"]["exact_match_ci"]
        assert low <= measured[side]["answers"]["exact_match"] <= high
    paired = measured["answers_change"]["exact_match"]
    assert paired["n"] == 5 and paired["wording"].startswith("exact match (model vs base): ")
    assert paired["difference"] == pytest.approx(
        measured["model"]["answers"]["exact_match"] - measured["base"]["answers"]["exact_match"]
    )
