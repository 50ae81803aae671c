"""A stage run's parameter budget section: the counts the run recorded, or else parameters and training
memory estimated on the meta device from model/config.json and the recipe's adapter and freezing."""

from __future__ import annotations

from typing import Any

from peaufine.report.pages.stage_run import StageRun
from peaufine.report.toolkit import Num, Section, fmt_percent, is_number, table


def estimate_budget(run: StageRun) -> tuple[Any, Any, str] | None:
    """Parameters and training memory of the run's model, on the meta device (no weight allocated):
    model/config.json with the recipe's freezing and adapter applied as the stage applies them."""
    if not (run.path / "model" / "config.json").is_file():
        return None
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from peaufine.models.adapters import apply_adapter, apply_freeze
    from peaufine.models.budget import count_parameters, estimate_memory, meta_model
    from peaufine.models.build import special_token_ids
    from peaufine.recipe import validate_recipe

    recipe = validate_recipe(run.recipe, source=str(run.path / "recipe.yaml"))
    config = AutoConfig.from_pretrained(run.path / "model", trust_remote_code=recipe.model.trust_remote_code)
    special: list[int] | None = None
    if any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        with torch.device("meta"):  # a reward model or classifier: a score head instead of the LM head
            model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = meta_model(config)
        special = special_token_ids(run.path / "model")
    apply_freeze(model, recipe.model.freeze)
    model = apply_adapter(model, recipe.model.adapter, special)
    budget = count_parameters(model)

    train = recipe.train
    sequences = train.micro_batch_size or train.batch_size
    length = recipe.data.block_size if run.stage == "pretrain" else recipe.data.max_length
    note = f"{sequences} sequences x {length} tokens per micro-batch"
    if run.stage == "dpo":  # each pair is a chosen and a rejected sequence
        note = f"{sequences} pairs = {2 * sequences} sequences x up to {length} tokens per micro-batch"
        sequences *= 2
    elif run.stage == "rl":
        rl = recipe.method.rl
        sequences = max(1, rl.prompts_per_step * rl.group_size // rl.mini_batches)
        note = f"{sequences} sampled answers x up to {length} tokens per mini-batch; the policy alone"
    elif run.stage != "pretrain":
        note = f"{sequences} sequences x up to {length} tokens (data.max_length) per micro-batch"
    autocast = run.env.get("precision") in ("bf16", "fp16")
    memory = estimate_memory(
        config, budget, batch_size=sequences, seq_len=length, activation_bytes=2 if autocast else 4
    )
    return budget, memory, note


def budget_section(run: StageRun) -> Section:
    from peaufine.models.budget import format_bytes

    section = Section("Parameter budget")
    # what a stage records, when it does: {"parameters": {"total": n, "trainable": n}} in eval.json
    # or prepared.json; otherwise the report counts on the meta device
    for source in (run.evaluation, run.prepared):
        counts = source.get("parameters")
        if isinstance(counts, dict) and is_number(counts.get("total")):
            total, trainable = counts["total"], counts.get("trainable")
            share = fmt_percent(trainable / total) if is_number(trainable) and total else "–"
            rows = [
                ("total parameters", total),
                ("trainable parameters", trainable),
                ("trainable share", share),
            ]
            section.parts.append(table(None, rows, caption="Parameters, as the run recorded them"))
            return section
    estimate = estimate_budget(run)
    if estimate is None:
        return section
    budget, memory, note = estimate
    rows = [
        ("total parameters", budget.total),
        ("trainable parameters", budget.trainable),
        ("trainable share", fmt_percent(budget.trainable / budget.total) if budget.total else "–"),
        ("frozen parameters", budget.frozen),
        ("embedding parameters", budget.embedding),
    ]
    if budget.active_per_token is not None:
        rows.append(("active per token (MoE)", budget.active_per_token))
    caption = (
        "Parameters: model/config.json with the recipe's adapter and freezing, counted on the meta device"
    )
    section.parts.append(table(None, rows, caption=caption))
    optimizer = f"AdamW, {memory.optimizer_state_bytes} B per trainable parameter"
    memory_rows = [
        ("weights", Num(format_bytes(memory.weights)), f"{memory.param_bytes} B per parameter"),
        ("gradients", Num(format_bytes(memory.gradients)), f"{memory.grad_bytes} B per trainable parameter"),
        ("optimizer state", Num(format_bytes(memory.optimizer)), optimizer),
        (
            "activations",
            Num(format_bytes(memory.activations)),
            f"{memory.activation_bytes} B per value, fp32 logits",
        ),
        ("total", Num(format_bytes(memory.total)), note),
    ]
    section.parts.append(
        table(
            ["part", "estimate", "assuming"], memory_rows, caption="Training memory, estimated (not measured)"
        )
    )
    return section
