"""A stage run's parameter budget section: the parameter counts and the training-memory estimate the
stage recorded in budget.json when it loaded its model."""

from __future__ import annotations

from peaufine.models.budget import MemoryEstimate, ParamBudget, format_bytes
from peaufine.report.pages.stage_run import StageRun
from peaufine.report.toolkit import Num, Section, fmt_percent, paragraph, table


def budget_section(run: StageRun) -> Section:
    section = Section("Parameter budget")
    if not run.budget:
        section.parts.append(paragraph("not recorded: the run has no budget.json"))
        return section
    budget = ParamBudget(**run.budget["parameters"])
    memory = MemoryEstimate(**run.budget["memory"])
    note = run.budget.get("note", "")
    rows = [
        ("total parameters", budget.total),
        ("trainable parameters", budget.trainable),
        ("trainable share", fmt_percent(budget.trainable / budget.total) if budget.total else "–"),
        ("frozen parameters", budget.frozen),
        ("embedding parameters", budget.embedding),
    ]
    if budget.active_per_token is not None:
        rows.append(("active per token (MoE)", budget.active_per_token))
    caption = "Parameters of the model as the stage trained it (its adapter and freezing applied)"
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
