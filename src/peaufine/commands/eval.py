"""`peaufine eval`: the fine-tuning report's measurements on any model folder and task file: task loss
and answers' exact match / F1; loss on general text; against a base model, the forgetting verdict."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from peaufine.data.batching import PackedBlocks, PaddedExamples, read_token_stream
from peaufine.data.corpus import tokenize_general
from peaufine.data.records import load_chat_records
from peaufine.data.tokenize import ensure_chat_template, tokenize_records
from peaufine.engine.runtime import make_runtime
from peaufine.errors import DataError, ModelError
from peaufine.evaluate.answers import answer_changes, answer_questions
from peaufine.evaluate.example_losses import example_losses, loss_block
from peaufine.evaluate.forgetting import forgetting_report, general_blocks, general_loss
from peaufine.evaluate.sft import task_loss
from peaufine.evaluate.stats import describe_change
from peaufine.models.build import load_pretrained, resolve_source
from peaufine.models.folders import check_model_folder
from peaufine.models.tokenizer import load_tokenizer
from peaufine.recipe import FieldsBlock, TrainBlock


def _model_dir(path: str) -> Path:
    """The checked causal LM folder of a run or model folder."""
    source = resolve_source(path, "eval")
    if source.model_dir is None:
        raise ModelError(f"{path}: eval needs a trained model (a run or model folder), not a preset")
    check_model_folder(source.model_dir, key="eval", kind="causal_lm")
    return source.model_dir


def measure_model(
    model_path: str,
    data: str | None,
    general: str | None,
    *,
    data_format: str = "auto",
    max_length: int = 512,
    answers: int = 200,
    outcomes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every figure for one model: task loss and answers (with `data`), general loss (with `general`),
    each with its 95% interval. `outcomes`, when given, receives the per-example values ("answers":
    AnswerMetrics; "task_loss", "general_loss": ExampleLosses) for pairing a model with its base."""

    directory = _model_dir(model_path)
    runtime = make_runtime(TrainBlock())
    model = load_pretrained(directory, key="eval").to(runtime.device)
    tokenizer = load_tokenizer(str(directory))
    ensure_chat_template(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    figures: dict[str, Any] = {"model": str(directory)}
    if data is not None:
        records, _ = load_chat_records(data, format=data_format, fields=FieldsBlock())
        examples, _ = tokenize_records(
            tokenizer, records, max_length=max_length, loss_on="completion", too_long="truncate"
        )
        figures["task_loss"] = task_loss(model, examples, runtime, pad_id)
        figures["task_examples"] = len(examples)
        losses = example_losses(model, PaddedExamples(examples, pad_id), runtime)
        figures["task_loss_ci"] = loss_block(losses).get("ci")
        if outcomes is not None:
            outcomes["task_loss"] = losses
        if answers:
            conversations = [r.messages for r in records[:answers]]
            metrics = answer_questions(model, tokenizer, conversations)
            figures["answers"] = metrics.as_dict()
            if outcomes is not None:
                outcomes["answers"] = metrics
    if general is not None:
        with tempfile.TemporaryDirectory() as tmp:
            stream = read_token_stream(tokenize_general(tokenizer, general, Path(tmp) / "general.bin"))
            if len(stream) <= max_length:  # not one block: the loss would be NaN
                raise DataError(
                    f"the general text has {len(stream)} tokens, fewer than one block of --max-length "
                    f"{max_length} (plus the token it predicts)",
                    path=general,
                    hint="give more text, or a smaller --max-length",
                )
            loss = general_loss(model, stream, runtime, max_length, None)
            figures["general_blocks"] = general_blocks(stream, max_length, None)
            blocks = example_losses(model, PackedBlocks(stream, max_length), runtime)
            figures["general_loss_ci"] = loss_block(blocks).get("ci")
            if outcomes is not None:
                outcomes["general_loss"] = blocks
        figures["general_loss"] = loss
        figures["general_perplexity"] = math.exp(loss)
    return figures


def run_eval(
    model_path: str,
    data: str | None,
    *,
    general: str | None = None,
    base: str | None = None,
    data_format: str = "auto",
    max_length: int = 512,
    answers: int = 200,
    threshold: float = 0.10,
) -> dict[str, Any]:

    if data is None and general is None:
        raise ModelError("eval: give task data (--data) and/or general text (--general)")
    for path in (model_path, base):  # both checked before either is measured
        if path is not None:
            _model_dir(path)
    tuned: dict[str, Any] = {}
    result: dict[str, Any] = {
        "model": measure_model(
            model_path,
            data,
            general,
            data_format=data_format,
            max_length=max_length,
            answers=answers,
            outcomes=tuned,
        )
    }
    if base is not None:
        untuned: dict[str, Any] = {}
        result["base"] = measure_model(
            base,
            data,
            general,
            data_format=data_format,
            max_length=max_length,
            answers=answers,
            outcomes=untuned,
        )
        if "answers" in tuned and "answers" in untuned:
            # the same questions for both: the model minus its base, paired question by question
            change = answer_changes(untuned["answers"], tuned["answers"], "model vs base")
            if change is not None:
                result["answers_change"] = change
        for key, what in (("task_loss", "task loss"), ("general_loss", "general-text loss")):
            both = key in tuned and key in untuned and len(tuned[key].sums) == len(untuned[key].sums)
            if both and tuned[key].has_targets and untuned[key].has_targets:
                comparison = tuned[key].minus(untuned[key])
                wording = describe_change(
                    comparison, what=f"{what}, model vs base", unit="nats", higher_is_better=False
                )
                result[f"{key}_change"] = {**comparison.as_dict(), "wording": wording}
        if general is not None:
            report = forgetting_report(
                general,
                result["base"]["general_loss"],
                result["model"]["general_loss"],
                threshold,
                blocks=result["model"]["general_blocks"],
            )
            result["forgetting"] = {**report.as_dict(), "verdict": report.verdict()}
    return result
