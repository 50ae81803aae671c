"""The default pipeline at smoke size: every stage's effect goes the right way, and what it leaves
is a complete run directory that plain transformers can load."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_pretraining_learns_the_world(smoke_demo):
    evaluation = smoke_demo.stages["pretrain"]
    vocab = json.loads((smoke_demo.out / "pretrain" / "model" / "config.json").read_text())["vocab_size"]
    # from ln(vocab) ~ 6.2 for an untrained model to well under 1.5 nats per token
    assert evaluation["val_loss"] < 1.5 < math.log(vocab)
    recall = evaluation["fact_recall"]
    assert recall["total"] == 42
    assert recall["accuracy"] >= 0.3  # an untrained model recalls none
    assert len(evaluation["samples"]) == 2


@pytest.mark.slow
def test_the_run_directory_layout(smoke_demo):
    run = smoke_demo.out / "pretrain"
    for name in [
        "recipe.yaml",
        "env.json",
        "metrics.jsonl",
        "eval.json",
        "loss.png",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/generation_config.json",
        "checkpoints/latest",
        "world/world.json",
    ]:
        assert (run / name).is_file(), name
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"] and env["world_size"] == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "lr", "train_loss", "grad_norm", "tokens_per_s", "elapsed"} <= rows[-1].keys()
    assert any("val_loss" in r for r in rows)
    world = json.loads((run / "world" / "world.json").read_text())
    assert world["seed"] == 0 and world["version"] and world["splits"]


PLAIN_LOAD = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
eos = model.generation_config.eos_token_id
ids = tok("The capital of", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith("peaufine")),
    "eos": eos if isinstance(eos, list) else [eos],
    "end": tok.convert_tokens_to_ids("<|end|>"),
    "pad": tok.pad_token_id, "eos_token": tok.eos_token_id, "bos": tok.bos_token_id,
    "vocab": len(tok), "rows": model.get_input_embeddings().weight.shape[0],
    "template": tok.chat_template, "generated": out.shape[1] - ids["input_ids"].shape[1],
}))
"""


@pytest.mark.slow
def test_the_model_loads_with_plain_transformers(smoke_demo):
    path = smoke_demo.out / "pretrain" / "model"
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["modules"] == []
    assert info["pad"] != info["eos_token"]
    assert info["bos"] is not None
    assert set(info["eos"]) == {info["eos_token"], info["end"]}
    assert info["vocab"] == info["rows"]  # every special token already has an embedding row
    assert "{% generation %}" in info["template"]
    assert 1 <= info["generated"] <= 5


@pytest.mark.slow
def test_generate_command(smoke_demo):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peaufine.cli",
            "generate",
            str(smoke_demo.out / "pretrain"),
            "--prompt",
            "The capital of",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The capital of ")
    assert len(done.stdout.split()) > 3


@pytest.mark.slow
def test_fine_tuning_learns_the_answer_format_and_reports_its_risks(smoke_demo):
    evaluation = smoke_demo.stages["sft"]
    losses = evaluation["task_val_loss"]
    assert losses["after"] < losses["before"] / 2
    assert set(evaluation["answers"]) == {"validation", "heldout"}
    forgetting = evaluation["forgetting"]
    assert forgetting["loss_before"] > 0 and "relative_change" in forgetting
    assert evaluation["overfitting"]["best_step"] is not None
    assert "verdict" in evaluation["transfer"]
    run = smoke_demo.out / "sft"
    for name in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "model/model.safetensors",
        "chat_template.jinja",
        "first_example.txt",
        "eval.json",
    ]:
        assert (run / name).is_file(), name
