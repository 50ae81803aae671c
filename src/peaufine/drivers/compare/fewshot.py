"""The few-shot arm as a run: no parameter changes; the base model answers the validation and held-out
questions with k training examples in each prompt (`python -m peaufine.drivers.compare.fewshot`)."""

# The run is an ordinary sft run folder (the sft stage's preparation, marker, recipe and eval.json
# with the same keys), so the study's table reads it like any arm: answers.<split>.before is the base
# model zero-shot, answers.<split>.after the same model with the examples in context.

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from peaufine.data.records import HELDOUT, load_conversations
from peaufine.drivers.crossval import fold_recipe
from peaufine.engine.fit import FitResult
from peaufine.errors import PeaufineError
from peaufine.evaluate.answers import answer_changes, answer_questions
from peaufine.evaluate.sft import few_shot_answers
from peaufine.models.build import load_pretrained, resolve_source, source_model_dir
from peaufine.models.tokenizer import load_tokenizer
from peaufine.recipe import load_recipe
from peaufine.results import SftResults
from peaufine.rundir import finished_with, write_jsonl
from peaufine.stages.lifecycle import OpenedRun, StageOutcome, StageSpec, finish_run, record_budget
from peaufine.stages.sft import prepare


def measure_in_context(opened: OpenedRun, resume: bool, hooks: Any) -> StageOutcome:
    """Answer each split zero-shot (before) and with eval.transfer.few_shot examples (after)."""
    recipe, run, runtime = opened.recipe, opened.run, opened.runtime
    model_dir = source_model_dir(resolve_source(recipe.model.source))
    tokenizer = load_tokenizer(str(run.tokenizer))
    model = load_pretrained(model_dir, recipe.model.trust_remote_code).to(runtime.device)
    model.requires_grad_(False)  # in-context learning trains nothing: 0 trainable parameters
    model.eval()
    record_budget(run, runtime, recipe, model)
    shots = load_conversations(run.data / "train.jsonl")[: recipe.eval.transfer.few_shot]
    answers: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    for split in ("validation", HELDOUT):
        conversations = load_conversations(run.data / f"{split}.jsonl")[: recipe.eval.answers or 0]
        if not conversations:
            continue
        zero = answer_questions(model, tokenizer, conversations)
        few = few_shot_answers(model, tokenizer, shots, conversations)
        answers[split] = {"before": zero.as_dict(), "after": few.as_dict()}
        change = answer_changes(zero, few, f"{split}, {len(shots)}-shot vs zero-shot")
        if change is not None:
            answers[split]["change"] = change
        lines += zero.outcome_rows(split, "before") + few.outcome_rows(split, "after")
    write_jsonl(run.answers, lines)
    evaluation = {
        "stage": "sft",
        "steps": 0,
        "tokens_seen": 0,
        "train_seconds": 0.0,
        **opened.prepared,
        "answers": answers,
        "forgetting": {
            "relative_change": 0.0,
            "verdict": "none: in-context learning changes no parameter",
        },
        "few_shot": {"examples_in_prompt": len(shots)},
    }
    finish_run(run, SftResults.from_json(evaluation))
    fit = FitResult(0, 0, 0.0, None, None, None, None, False, False)
    return StageOutcome(run=run, fit=fit, evaluation=evaluation)


FEW_SHOT = StageSpec("sft", prepare, measure_in_context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peaufine-few-shot", description=__doc__)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--resume", action="store_true")  # nothing to resume: it starts again
    parser.add_argument("--folds", type=int, help="k-fold: one run per fold in OUT/fold-<i>")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, stage="sft")
        if args.folds is None:
            FEW_SHOT.run(recipe, args.out, overwrite=args.overwrite or args.resume)
        for fold in range(args.folds or 0):  # as drivers/crossval runs a stage's folds
            spec, folder = fold_recipe(recipe, args.folds, fold), args.out / f"fold-{fold}"
            if not finished_with(folder, spec.to_yaml()):
                FEW_SHOT.run(spec, folder, overwrite=folder.exists())
    except PeaufineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
