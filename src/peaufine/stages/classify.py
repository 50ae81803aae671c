"""The classify stage: a sequence classifier or regressor on any local encoder or decoder, trained by
the same engine, with accuracy / F1 (or MSE), and optionally the from-scratch transfer baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import LabelledTexts
from peaufine.data.folds import recipe_fold, training_subset
from peaufine.data.records import load_classification_records, split_records
from peaufine.engine.fit import FitResult, fit
from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError
from peaufine.evaluate.classification import labelled_predictions, transfer_comparison
from peaufine.evaluate.leakage import leakage, leakage_warning
from peaufine.methods.classify import ClassificationLoss, refuse_chunked_loss
from peaufine.models.adapters import apply_freeze
from peaufine.models.build import (
    build_classifier,
    classifier_attention,
    minilm_path,
    prepare_for_training,
    resolve_source,
    save_model,
)
from peaufine.models.tokenizer import load_tokenizer
from peaufine.results import ClassifyResults
from peaufine.rundir import RunDir, write_jsonl
from peaufine.stages.lifecycle import (
    OpenedRun,
    StageOutcome,
    StageSpec,
    finish_run,
    plot_training,
    record_budget,
)

if TYPE_CHECKING:
    from peaufine.engine.fit import StepHook
    from peaufine.recipe import Recipe


def model_path(recipe: Recipe) -> Path:
    """model.source as a folder; `minilm` names the pretrained MiniLM shipped by a PyPI package."""

    if recipe.model.source == "minilm":
        return minilm_path()
    source = resolve_source(recipe.model.source)
    if source.model_dir is None:
        raise RecipeError(f"model.source: '{source.name}' is a preset; classify needs a model folder")
    return source.model_dir


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:
    import json

    regression = recipe.method.num_labels == 1
    policy = recipe.data.anomalies.model_dump(exclude={"too_long"})
    records, names, report = load_classification_records(
        recipe.data.source,
        fields=recipe.data.fields,
        text_field=recipe.data.text_field,
        regression=regression,
        policy=policy,
    )
    train, validation = split_records(
        records, recipe.data.validation_fraction, recipe.train.seed, recipe_fold(recipe.data)
    )
    train = training_subset(train, recipe.data.train_fraction, recipe.train.seed)
    num_labels = recipe.method.num_labels or len(names)
    if not regression and num_labels < 2:
        raise RecipeError(
            f"data.source: found {len(names)} label(s) ({names}); classification needs two "
            "or more (method.num_labels: 1 for regression)"
        )
    data_dir = staging / "data"
    data_dir.mkdir()
    for name, part in (("train", train), ("validation", validation)):
        (data_dir / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": r.text, "label": r.label}) + "\n" for r in part), encoding="utf-8"
        )
    tracker.say(
        f"task: {len(train):,} training, {len(validation):,} validation examples, "
        f"{'regression' if regression else f'{num_labels} classes'}"
    )
    return {
        "anomalies": dict(report.counts),
        "labels": names,
        "num_labels": num_labels,
        "regression": regression,
    }


def load_split(path: Path, tokenizer: Any, recipe: Recipe, pad_id: int, regression: bool) -> Any:
    import json

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return LabelledTexts.from_texts(
        tokenizer,
        [r["text"] for r in rows],
        [r["label"] for r in rows],
        recipe.data.max_length,
        regression=regression,
        pad_id=pad_id,
    )


def split_texts(path: Path) -> list[str]:
    import json

    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def classify_leakage(run: RunDir) -> dict[str, Any]:
    """eval.json's leakage block: how much of the validation texts the training texts already hold."""
    return {
        "validation": leakage(
            split_texts(run.data / "train.jsonl"), split_texts(run.data / "validation.jsonl")
        )
    }


def check_recipe(recipe: Recipe) -> None:
    """What the stage refuses before any run folder exists."""
    refuse_chunked_loss(recipe)


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    out = opened.run.path
    run, runtime, tracker, prepared = opened.run, opened.runtime, opened.tracker, opened.prepared
    directory = model_path(recipe)
    tokenizer = load_tokenizer(str(directory), recipe.model.trust_remote_code)
    num_labels, regression = prepared["num_labels"], prepared["regression"]
    attention = classifier_attention(recipe, runtime.device.type, runtime.precision)

    def train_one(from_scratch: bool, run_dir: Path | None) -> tuple[Any, FitResult]:
        # model.init: scratch makes the run itself the from-scratch model (compare's scratch arm)
        scratch = from_scratch or recipe.model.init == "scratch"
        model = build_classifier(
            directory, num_labels, from_scratch=scratch, seed=recipe.train.seed, attention=attention
        )
        apply_freeze(model, recipe.model.freeze)  # compare's freeze arm: the lower layers, embeddings
        model = prepare_for_training(model, recipe.train).to(runtime.device)
        if run_dir is not None:
            record_budget(run, runtime, recipe, model)
        pad_id = model.config.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
        train_set = load_split(run.data / "train.jsonl", tokenizer, recipe, pad_id, regression)
        val_set = load_split(run.data / "validation.jsonl", tokenizer, recipe, pad_id, regression)
        result = fit(
            model,
            ClassificationLoss(num_labels),
            train_set,
            val_set,
            recipe.train,
            recipe.eval,
            runtime,
            run_dir=run_dir,
            tracker=tracker if run_dir else None,
            resume=resume and run_dir is not None,
            hooks=hooks if run_dir is not None else None,
        )
        return (model, val_set), result

    (model, val_set), result = train_one(False, out)
    # the from-scratch baseline trains on every process, as the run did (fit() is collective)
    baseline = train_one(True, None)[0] if recipe.eval.transfer.from_scratch else None
    evaluation: dict[str, Any] = {"stage": "classify", "steps": result.steps, **prepared}
    if runtime.is_main:
        batch = recipe.eval.batch_size or 64
        tuned = labelled_predictions(model, val_set, runtime, batch)
        evaluation["validation"] = tuned.scores
        if baseline is not None:
            scratch, scratch_val = baseline
            untrained = labelled_predictions(scratch, scratch_val, runtime, batch)
            evaluation["from_scratch"] = untrained.scores
            if tuned.labels:
                evaluation["transfer"] = transfer_comparison(tuned, untrained)
        write_jsonl(run.predictions, tuned.rows("validation"))
        evaluation["leakage"] = classify_leakage(run)
        line = leakage_warning(evaluation["leakage"]["validation"], "validation")
        if line is not None:
            tracker.warn(line)
        save_model(model, tokenizer, run.model)
        plot_training(run, result)
        finish_run(run, ClassifyResults.from_json(evaluation))
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


STAGE = StageSpec("classify", prepare, train_and_measure, check=check_recipe)
run_classify = STAGE.run
