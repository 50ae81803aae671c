"""The classify stage on a decoder built here: a separable task is learnt through the same engine."""

from __future__ import annotations

import json
import random

import pytest

from peaufine.recipe import validate_recipe
from peaufine.stages.classify import run_classify


@pytest.fixture
def tiny_decoder_dir(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peaufine.models.tokenizer import train_bpe

    tokenizer = train_bpe(["a good film", "a bad film", "good fun", "bad plot"] * 20, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.slow
def test_a_decoder_learns_a_separable_sentiment_task(tiny_decoder_dir, tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        label = rng.randint(0, 1)
        word = "good" if label else "bad"
        filler = " ".join(rng.choice(["a", "film", "plot", "fun"]) for _ in range(rng.randint(1, 5)))
        rows.append({"sentence": f"{filler} {word} {filler}", "label": label})
    data = tmp_path / "sst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = validate_recipe(
        {
            "stage": "classify",
            "model": {"source": str(tiny_decoder_dir)},
            "data": {
                "source": str(data),
                "text_field": "sentence",
                "max_length": 32,
                "validation_fraction": 0.2,
            },
            "train": {"max_steps": 60, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "device": "cpu"},
            "eval": {"every": 30},
        }
    )
    result = run_classify(recipe, tmp_path / "run")
    scores = result.evaluation["validation"]
    assert scores["accuracy"] > 0.9
    assert result.evaluation["num_labels"] == 2
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert reloaded.config.num_labels == 2


@pytest.mark.parametrize("stage", ["classify", "reward"])
def test_a_chunked_loss_is_refused_for_classifier_stages_before_the_run_starts(stage, tmp_path):
    from peaufine.errors import RecipeError
    from peaufine.stages.reward import run_reward

    recipe = validate_recipe({"stage": stage, "train": {"loss_chunk_tokens": 64, "device": "cpu"}})
    run = run_classify if stage == "classify" else run_reward
    with pytest.raises(
        RecipeError, match=r"train\.loss_chunk_tokens: the .* stage trains a classification head"
    ):
        run(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _sentiment_recipe(tiny_decoder_dir, tmp_path, **model):
    rng = random.Random(0)
    rows = [
        {"sentence": f"a {'good' if (label := rng.randint(0, 1)) else 'bad'} film", "label": label}
        for _ in range(40)
    ]
    data = tmp_path / "sst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return validate_recipe(
        {
            "stage": "classify",
            "model": {"source": str(tiny_decoder_dir), **model},
            "data": {
                "source": str(data),
                "text_field": "sentence",
                "max_length": 16,
                "validation_fraction": 0.25,
            },
            "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1, "device": "cpu"},
            "eval": {"every": 4, "transfer": {"from_scratch": False}},
        }
    )


def test_classify_trains_a_lora_adapter_and_saves_it_merged(tiny_decoder_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from peaufine.models.build import build_classifier

    recipe = _sentiment_recipe(tiny_decoder_dir, tmp_path, adapter={"kind": "lora", "r": 2})
    run_classify(recipe, tmp_path / "run")
    budget = json.loads((tmp_path / "run" / "budget.json").read_text(encoding="utf-8"))["parameters"]
    base = build_classifier(tiny_decoder_dir, 2)
    total = sum(p.numel() for p in base.parameters())
    # LoRA r=2 on every linear layer of the body + the new head (PEFT's modules_to_save), nothing else
    hidden, inter, head = 32, 64, 32 * 2
    lora = 2 * (4 * (hidden + hidden) + 2 * (hidden + inter) + (inter + hidden))
    assert budget["trainable"] == lora + head
    assert budget["total"] == total + lora + head  # the head's trained copy is a second tensor
    ids = torch.tensor([[5, 9, 12, 7]])
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    adapted = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
        # negative control: the untrained head gives other scores
        assert not torch.allclose(
            merged(input_ids=ids).logits,
            build_classifier(tiny_decoder_dir, 2)(input_ids=ids).logits,
            atol=1e-3,
        )


def test_classify_freezes_the_layers_it_is_told_to(tiny_decoder_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from peaufine.models.build import build_classifier

    recipe = _sentiment_recipe(tiny_decoder_dir, tmp_path, freeze={"layers": [0], "embeddings": True})
    run_classify(recipe, tmp_path / "run")
    before = build_classifier(tiny_decoder_dir, 2).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").state_dict()
    changed = {name for name in before if not (before[name] == after[name]).all()}
    assert changed, "something trained"
    assert not any(name.startswith(("model.layers.0.", "model.embed_tokens")) for name in changed)
    assert "score.weight" in changed and any(name.startswith("model.norm") for name in changed)


def test_scores_carry_intervals_predictions_are_written_and_transfer_is_paired(tiny_decoder_dir, tmp_path):
    """eval.json's accuracy and macro-F1 carry their intervals; predictions.jsonl holds each validation
    example's outcome in order; fine-tuned vs from scratch is McNemar on the same examples; the short
    texts repeat across the split, and the leakage block says so."""
    rng = random.Random(1)
    rows = [
        {"sentence": f"a {'good' if i % 2 else 'bad'} {rng.choice(['film', 'plot'])}", "label": i % 2}
        for i in range(60)
    ]
    data = tmp_path / "sst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = validate_recipe(
        {
            "stage": "classify",
            "model": {"source": str(tiny_decoder_dir)},
            "data": {
                "source": str(data),
                "text_field": "sentence",
                "max_length": 16,
                "validation_fraction": 0.25,
            },
            "train": {"max_steps": 3, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "device": "cpu"},
            "eval": {"every": 3, "transfer": {"from_scratch": True}},
        }
    )
    evaluation = run_classify(recipe, tmp_path / "run").evaluation
    scores = evaluation["validation"]
    n = scores["examples"]
    low, high = scores["accuracy_ci"]
    assert 0.0 <= low <= scores["accuracy"] <= high <= 1.0
    low, high = scores["macro_f1_ci"]
    assert low <= scores["macro_f1"] <= high
    predictions = [
        json.loads(line)
        for line in (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [p["index"] for p in predictions] == list(range(n))
    assert set(predictions[0]) == {"split", "index", "label", "prediction", "correct"}
    assert sum(p["correct"] for p in predictions) / n == pytest.approx(scores["accuracy"])
    transfer = evaluation["transfer"]["accuracy"]
    assert transfer["method"] == "mcnemar" and transfer["n"] == n
    assert transfer["difference"] == pytest.approx(
        scores["accuracy"] - evaluation["from_scratch"]["accuracy"]
    )
    assert evaluation["transfer"]["verdict"] == transfer["wording"]
    assert evaluation["transfer"]["verdict"].startswith("accuracy, fine-tuned vs from scratch: ")
    leak = evaluation["leakage"]["validation"]
    assert leak["exact_duplicates"] > 0 and leak["warning"] is True


def _sentiment_file(tmp_path, n: int = 40):
    rng = random.Random(0)
    rows = [{"sentence": f"a {rng.choice(['good', 'bad'])} film {i}", "label": i % 2} for i in range(n)]
    data = tmp_path / "sst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data


def _tiny_run(tiny_decoder_dir, data, out, model=None, extra=None):
    recipe = validate_recipe(
        {
            "stage": "classify",
            "model": {"source": str(tiny_decoder_dir), **(model or {})},
            "data": {
                "source": str(data),
                "text_field": "sentence",
                "max_length": 16,
                "validation_fraction": 0.25,
                **(extra or {}),
            },
            # seed 3: the fixture's base is itself a seed-0 random model, which scratch would equal
            "train": {
                "max_steps": 1,
                "batch_size": 4,
                "lr": 1e-9,
                "warmup_steps": 0,
                "device": "cpu",
                "seed": 3,
            },
            "eval": {"every": 1},
        }
    )
    run_classify(recipe, out)
    return out


def test_train_fraction_and_scratch_init_in_classify(tiny_decoder_dir, tmp_path):
    """data.train_fraction trains on a subset with the same validation; model.init: scratch starts from
    random weights (the pretrained run stays at the base's weights after a step of lr 1e-9)."""
    from safetensors.torch import load_file

    data = _sentiment_file(tmp_path)
    whole = _tiny_run(tiny_decoder_dir, data, tmp_path / "whole")
    half = _tiny_run(tiny_decoder_dir, data, tmp_path / "half", extra={"train_fraction": 0.5})
    scratch = _tiny_run(tiny_decoder_dir, data, tmp_path / "scratch", model={"init": "scratch"})
    read = lambda run, name: (run / "data" / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    assert read(half, "validation.jsonl") == read(whole, "validation.jsonl")
    assert len(read(half, "train.jsonl")) == len(read(whole, "train.jsonl")) // 2
    assert set(read(half, "train.jsonl")) < set(read(whole, "train.jsonl"))

    base = load_file(tiny_decoder_dir / "model.safetensors")["model.embed_tokens.weight"]

    def embedding(run):
        weights = load_file(run / "model" / "model.safetensors")
        return next(v for k, v in weights.items() if k.endswith("embed_tokens.weight"))

    assert (embedding(whole) - base).abs().max() < 1e-5
    assert (embedding(scratch) - base).abs().max() > 1e-2


def test_model_freeze_is_honoured_by_classify(tiny_decoder_dir, tmp_path):
    """model.freeze (compare's freeze arm) freezes the classifier's layers and embeddings: fewer trainable
    parameters in budget.json, and those weights unchanged by training at a real learning rate."""
    from safetensors.torch import load_file

    data = _sentiment_file(tmp_path)
    recipe = validate_recipe(
        {
            "stage": "classify",
            "model": {"source": str(tiny_decoder_dir), "freeze": {"layers": [0], "embeddings": True}},
            "data": {"source": str(data), "text_field": "sentence", "max_length": 16},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "device": "cpu"},
            "eval": {"every": 2},
        }
    )
    run_classify(recipe, tmp_path / "frozen")
    budget = json.loads((tmp_path / "frozen" / "budget.json").read_text(encoding="utf-8"))["parameters"]
    assert 0 < budget["trainable"] < budget["total"]
    base = load_file(tiny_decoder_dir / "model.safetensors")
    tuned = load_file(tmp_path / "frozen" / "model" / "model.safetensors")
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert (tuned[name] - base[name]).abs().max() == 0, name
    # negative control: what is not frozen trained
    assert (tuned["model.norm.weight"] - base["model.norm.weight"]).abs().max() > 0


@pytest.mark.parametrize("kind", ["bottleneck", "ia3", "prompt_tuning"])
def test_every_adapter_kind_classifies_and_its_saved_model_predicts_what_the_run_measured(
    kind, tiny_decoder_dir, tmp_path
):
    """The run's model/ (merged for ia3, base/ + adapter/ for the others) reloads and predicts every
    validation example as the trained model did (predictions.jsonl), while only the adapter trained."""
    from peaufine.engine.runtime import make_runtime
    from peaufine.evaluate.classification import labelled_predictions
    from peaufine.models.build import build_classifier
    from peaufine.models.tokenizer import load_tokenizer
    from peaufine.stages.classify import load_split

    adapter = {"kind": kind, **({"size": 8} if kind == "bottleneck" else {})}
    recipe = _sentiment_recipe(tiny_decoder_dir, tmp_path, adapter=adapter)
    run = tmp_path / "run"
    run_classify(recipe, run)
    budget = json.loads((run / "budget.json").read_text(encoding="utf-8"))["parameters"]
    assert 0 < budget["trainable"] < budget["total"] / 10
    assert (run / "model" / "adapted_model.json").is_file() == (kind != "ia3")
    model = build_classifier(run / "model", 2).eval()
    tokenizer = load_tokenizer(str(run / "model"))
    val = load_split(run / "data" / "validation.jsonl", tokenizer, recipe, model.config.pad_token_id, False)
    again = labelled_predictions(model, val, make_runtime(recipe.train), 64)
    written = [
        json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert again.predictions == [row["prediction"] for row in written]
    if kind != "ia3":  # negative control: the base half alone is another model
        import torch

        ids = torch.tensor([tokenizer("a good film")["input_ids"]])
        bare = build_classifier(run / "model" / "base", 2).eval()
        with torch.no_grad():
            assert (bare(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() > 1e-4
