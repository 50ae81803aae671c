"""(IA)3 and prompt tuning end to end in the sft, reward and dpo stages: tiny runs whose adapter/ is in PEFT's
format and reloads to the trained model's logits, whose (IA)3 model/ is the merged adapter, and whose
budget.json counts what PEFT trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_rl_recipe
from peaufine.recipe import validate_recipe

TRAIN = {"device": "cpu", "precision": "fp32", "log_every": 1, "seed": 0, "max_steps": 3, "warmup_steps": 1}
KINDS = {
    "ia3": {"kind": "ia3"},
    "prompt_tuning": {"kind": "prompt_tuning", "num_virtual_tokens": 4},
}
PEFT_TYPE = {"ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}
PREFERENCES = {
    "source": "world",
    "validation_fraction": 0.15,
    "max_length": 48,
    "rankings": "adjacent",
    "anomalies": {"too_long": "truncate"},
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer llama-tiny pretrained for 3 steps on the synthetic world (its world/ feeds later stages)."""
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("peftkinds") / "pretrain"
    recipe = {
        "stage": "pretrain",
        "model": {
            "source": "llama-tiny",
            "config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
            },
            "tokenizer": {"kind": "bpe", "vocab_size": 320},
        },
        "data": {
            "source": "world",
            "world": {"seed": 0, "size": "smoke", "documents": 40, "faq_documents": 10},
            "block_size": 32,
            "validation_fraction": 0.1,
        },
        "train": {**TRAIN, "batch_size": 8, "lr": 3e-3},
        "eval": {"every": 3, "samples": 0},
    }
    run_pretrain(validate_recipe(recipe), out)
    return out


def capture_saved_model(monkeypatch: pytest.MonkeyPatch, stage_module: Any) -> list[Any]:
    """The model each run of `stage_module` saves, as it saves it (the trained model, best weights)."""
    saved: list[Any] = []
    original = stage_module.save_outputs

    def recording(recipe: Any, run: Any, model: Any, tokenizer: Any) -> None:
        saved.append(model)
        original(recipe, run, model, tokenizer)

    monkeypatch.setattr(stage_module, "save_outputs", recording)
    return saved


def check_run(run: Path, kind: str, trained: Any, base: Any) -> None:
    """adapter/ in PEFT's format reloads on `base` to `trained`'s outputs; (IA)3's model/ is the merge; a
    soft prompt's run has no merged model; budget.json's trainable count is PEFT's."""
    import torch
    from peft import PeftModel

    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPE[kind]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    trained = trained.eval()
    loaded = PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-6, rtol=0
        )
    if kind == "ia3":
        merged = type(base).from_pretrained(run / "model").eval()
        with torch.no_grad():
            torch.testing.assert_close(
                merged(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=0
            )
    else:
        assert not (
            run / "model" / "config.json"
        ).exists()  # never the bare base in the adapted model's place
    recorded = json.loads((run / "budget.json").read_text())
    budget = recorded["parameters"]
    assert budget["trainable"] == trained.get_nb_trainable_parameters()[0] > 0
    assert budget["total"] == trained.get_nb_trainable_parameters()[1]
    assert recorded["memory"]["prefix_tokens"] == (4 if kind == "prompt_tuning" else 0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_sft_trains_each_peft_kind_and_saves_its_adapter(kind, base_run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from peaufine.stages import sft

    saved = capture_saved_model(monkeypatch, sft)
    recipe = {
        "stage": "sft",
        "model": {"source": str(base_run), "adapter": KINDS[kind]},
        "data": {"source": "world", "validation_fraction": 0.2, "max_length": 48, "packing": False},
        "train": {**TRAIN, "batch_size": 8, "lr": 1e-2},
        "eval": {"every": 3, "answers": 0, "transfer": {"few_shot": 0}},
    }
    result = sft.run_sft(validate_recipe(recipe), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in rows if "train_loss" in row]
    assert len(losses) == 3 and losses[-1] != losses[0]  # it trained
    assert result.evaluation["steps"] == 3
    base = AutoModelForCausalLM.from_pretrained(base_run / "model")
    check_run(tmp_path / "run", kind, saved[-1], base)


@pytest.mark.parametrize("kind", list(KINDS))
def test_reward_model_trains_each_peft_kind_with_its_head(kind, base_run, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from peaufine.stages import reward

    saved = capture_saved_model(monkeypatch, reward)
    recipe = {
        "stage": "reward",
        "model": {"source": str(base_run), "adapter": KINDS[kind]},
        "data": PREFERENCES,
        "train": {**TRAIN, "batch_size": 8, "lr": 1e-2},
        "eval": {"every": 3},
    }
    reward.run_reward(validate_recipe(recipe), tmp_path / "run")
    trained = saved[-1]
    heads = [name for name, p in trained.named_parameters() if p.requires_grad and "score" in name]
    assert heads  # the new head trains (PEFT's modules_to_save)
    base = AutoModelForSequenceClassification.from_pretrained(base_run / "model", num_labels=1)
    base.config.pad_token_id = trained.get_base_model().config.pad_token_id
    check_run(tmp_path / "run", kind, trained, base)


def dpo_recipe(base_run: Path, kind: str, reference: str) -> dict[str, Any]:
    return {
        "stage": "dpo",
        "model": {"source": str(base_run), "adapter": KINDS[kind]},
        "data": PREFERENCES,
        "method": {"dpo": {"loss": "sigmoid", "beta": 0.1, "reference": reference}},
        "train": {**TRAIN, "batch_size": 8, "lr": 1e-2},
        "eval": {"every": 3, "answers": 0},
    }


@pytest.mark.parametrize(
    ("kind", "reference"),
    [("ia3", "precomputed"), ("prompt_tuning", "adapter"), ("prompt_tuning", "precomputed")],
)
def test_dpo_trains_each_peft_kind(kind, reference, base_run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from peaufine.stages import dpo

    saved = capture_saved_model(monkeypatch, dpo)
    dpo.run_dpo(validate_recipe(dpo_recipe(base_run, kind, reference)), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # (IA)3 starts as its base, the reference: the loss at step 1 is log 2; a soft prompt's reference is
    # its base (switched off, or precomputed without it), which a random prompt already differs from
    at_start = rows[0]["train_loss"] == pytest.approx(0.6931471805599453, abs=1e-5)
    assert at_start == (kind == "ia3")
    assert rows[2]["train_loss"] != pytest.approx(rows[0]["train_loss"], abs=1e-7)
    base = AutoModelForCausalLM.from_pretrained(base_run / "model")
    check_run(tmp_path / "run", kind, saved[-1], base)


def test_grpo_trains_ia3_with_the_adapter_off_as_reference(base_run, tmp_path, monkeypatch):
    from peaufine.stages import rl

    saved = capture_saved_model(monkeypatch, rl)
    rl.run_rl(validate_recipe(tiny_rl_recipe(base_run, "grpo", KINDS["ia3"])), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "kl" in row][:3] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the ia3 vectors start at one: policy = reference
    assert (
        json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "IA3"
    )
    assert saved and (tmp_path / "run" / "model" / "config.json").is_file()


@pytest.mark.parametrize(
    ("stage", "adapter", "extra", "message"),
    [
        (
            "rl",
            KINDS["prompt_tuning"],
            {},
            "kind: prompt_tuning is not supported by the rl stage",
        ),
        ("pretrain", KINDS["ia3"], {}, "model.adapter.kind: ia3 is not supported by the pretrain stage"),
        (
            "dpo",
            {"kind": "none"},
            {"reference": "adapter"},
            "dpo.reference: adapter switches the adapter off",
        ),
    ],
)
def test_a_kind_a_stage_cannot_take_is_refused_before_the_run_exists(
    stage, adapter, extra, message, base_run, tmp_path
):
    from peaufine.errors import RecipeError
    from peaufine.stages.dpo import run_dpo
    from peaufine.stages.pretrain import run_pretrain
    from peaufine.stages.rl import run_rl

    if stage == "rl":
        recipe, run = tiny_rl_recipe(base_run, "grpo", adapter), run_rl
    elif stage == "pretrain":
        recipe = {"stage": "pretrain", "model": {"source": "llama-tiny", "adapter": adapter}}
        recipe["data"] = {"source": "world"}
        run = run_pretrain
    else:
        recipe = {
            "stage": "dpo",
            "model": {"source": str(base_run), "adapter": adapter},
            "data": PREFERENCES,
            "method": {"dpo": extra},
        }
        run = run_dpo
    with pytest.raises(RecipeError, match=message):
        run(validate_recipe(recipe), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_soft_prompts_before_numbers_and_reference_are_the_base_models(base_run, tmp_path):
    """A random soft prompt does not start as the identity: what a run measures "before" (sft's base
    zero-shot, forgetting's general loss) and DPO's precomputed reference are taken with it switched off,
    so they equal those of (IA)3, which starts as the base."""
    from peaufine.stages.dpo import run_dpo
    from peaufine.stages.sft import run_sft

    before = {}
    for kind in KINDS:
        recipe = {
            "stage": "sft",
            "model": {"source": str(base_run), "adapter": KINDS[kind]},
            "data": {"source": "world", "validation_fraction": 0.2, "max_length": 48, "packing": False},
            "train": {**TRAIN, "max_steps": 2, "batch_size": 8, "lr": 1e-2},
            "eval": {"every": 2, "answers": 0, "transfer": {"few_shot": 1}},
        }
        evaluation = run_sft(validate_recipe(recipe), tmp_path / f"sft-{kind}").evaluation
        before[kind] = evaluation["transfer"]["task_val_loss"]
        before[kind]["general"] = evaluation["forgetting"]["loss_before"]
    for key in ("base_zero_shot", "base_few_shot", "general"):
        assert before["prompt_tuning"][key] == pytest.approx(before["ia3"][key], rel=1e-6), key
    # the precomputed reference is the one with the prompt switched off: the same first-step loss
    first = {}
    for reference in ("precomputed", "adapter"):
        recipe = dpo_recipe(base_run, "prompt_tuning", reference)
        recipe["train"]["max_steps"] = 2
        run_dpo(validate_recipe(recipe), tmp_path / f"dpo-{reference}")
        rows = (tmp_path / f"dpo-{reference}" / "metrics.jsonl").read_text().splitlines()
        first[reference] = json.loads(rows[0])["train_loss"]
    assert first["precomputed"] == pytest.approx(first["adapter"], rel=1e-6)
