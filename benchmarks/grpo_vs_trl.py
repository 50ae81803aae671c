"""GRPO on CPU: peaufine's rl stage against TRL 1.16's GRPOTrainer, on a reward both can learn from scratch.

The same tiny Llama from the same saved weights, the same prompts in the same steps (the same tokens:
both render them with the chat template), one reward function object shared by both (TRL's convention
`f(prompts, completions, **columns)`), the same group size, passes over each batch of rollouts (mu),
clipping, KL coefficient, generation length, temperature and optimiser. Each side runs in its own process,
alternating TRL, peaufine, TRL, peaufine... Prints RL steps/s and tokens/s of each (rollouts and updates
together), their ratio, peak memory, the training reward each logged, and the mean reward of both saved
policies on held-out prompts computed by one evaluator in this script; ends with one `RESULT {json}` line.

    python benchmarks/grpo_vs_trl.py           # 40 steps, 3 repetitions, one thread
    python benchmarks/grpo_vs_trl.py --quick   # 12 steps, 1 repetition (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness

VOCAB_SIZE = 300  # a near-byte-level BPE of the task's text: few of its tokens are digits
TRAIN_QUESTIONS = 2000
VAL_QUESTIONS = 200
DATA_SEED = 0  # the questions and the initial weights: fixed, whatever the training seeds
# peaufine's rl stage holds out this fraction of its prompt file for its own before/after measures (on
# `EVAL_PROMPTS` of them); the parent replays the split to know which prompts each step draws.
STAGE_VALIDATION_FRACTION = 0.02
EVAL_PROMPTS = 8
SPEEDUP_TARGET = 1.0
REWARD = "grpo_vs_trl:digit_share"  # how peaufine's recipe names the reward function below


def digit_share(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """The share of a completion's visible characters that are digits: 1 for an answer written as a
    number, 0 for words. Learnable from scratch (a random model already writes some digit tokens) and
    checkable by anyone. Completions come as text (peaufine) or as one assistant message (TRL)."""
    rewards = []
    for completion in completions:
        text = completion[0]["content"] if isinstance(completion, list) else completion
        visible = [c for c in text if not c.isspace()]
        rewards.append(sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0)
    return rewards


@dataclass
class Settings:
    steps: int  # RL steps: one round of rollouts, then `passes` optimiser steps on it
    lr: float
    prompts_per_step: int
    group_size: int
    passes: int
    max_new_tokens: int
    temperature: float
    kl_coef: float
    clip: float
    reps: int
    val_prompts: int
    eval_samples: int  # sampled completions per held-out prompt in the shared evaluation
    skip: int  # first RL steps left out of the steady-state rate
    threads: int
    seed: int
    quick: bool
    betas: tuple[float, float] = (0.9, 0.999)  # TRL's (transformers') AdamW defaults, set on peaufine
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 steps, 1 repetition, 32 held-out prompts")
    parser.add_argument("--steps", type=int, help="RL steps (rollout rounds) per run (default 40; quick 12)")
    parser.add_argument("--lr", type=float, help="constant learning rate (default 5e-4; quick 1e-3)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument("--passes", type=int, default=2, help="optimiser steps on each round, mu (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="completion length (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--kl", type=float, default=0.04, help="KL coefficient, beta (default 0.04)")
    parser.add_argument("--clip", type=float, default=0.2, help="ratio clipping, epsilon (default 0.2)")
    parser.add_argument(
        "--reps", type=int, help="alternating repetitions, one seed each (default 3; quick 1)"
    )
    parser.add_argument("--val-prompts", type=int, help="held-out prompts evaluated (default 200; quick 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repetition (+1 for each next)")
    parser.add_argument(
        "--workdir", type=Path, help="keep models and logs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (12 if args.quick else 40)
    settings = Settings(
        steps=steps,
        # 40 steps at 5e-4 take the sampled reward from ~0.12 to ~0.9, short of the ceiling (1e-3 reaches
        # ~0.98 by step 30 and the two sides could only tie there); a short quick run needs the larger rate
        lr=args.lr or (1e-3 if args.quick else 5e-4),
        prompts_per_step=args.prompts,
        group_size=args.group,
        passes=args.passes,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        kl_coef=args.kl,
        clip=args.clip,
        reps=args.reps or (1 if args.quick else 3),
        val_prompts=min(args.val_prompts or (32 if args.quick else VAL_QUESTIONS), VAL_QUESTIONS),
        eval_samples=4,
        skip=min(5, steps // 5),
        threads=args.threads,
        seed=args.seed,
        quick=args.quick,
    )
    if steps < 5 or min(settings.prompts_per_step, settings.passes, settings.reps, settings.threads) < 1:
        parser.error("need --steps >= 5 and --prompts, --passes, --reps, --threads >= 1")
    if settings.group_size < 2:
        parser.error("--group must be >= 2: GRPO's advantages compare the completions of one prompt")
    return settings, args.workdir


# -- the two sides, each run in its own process ---------------------------------------------------------
def train_peaufine(job: dict[str, Any]) -> dict[str, Any]:
    """`peaufine rl` as a user runs it: run_rl with algorithm grpo and a reward function."""
    start = time.perf_counter()
    import torch

    import peaufine.engine.fit as engine_fit
    import peaufine.stages.rl as rl_stage
    from peaufine.engine.track import Tracker
    from peaufine.recipe import validate_recipe

    torch.set_num_threads(job["threads"])
    steps = job["steps"]
    recipe = validate_recipe(
        {
            "stage": "rl",
            "model": {"source": job["init_dir"]},
            "data": {"source": job["peaufine_file"], "validation_fraction": STAGE_VALIDATION_FRACTION},
            "method": {
                "rl": {
                    "algorithm": "grpo",
                    "rewards": [{"source": REWARD, "weight": 1.0}],
                    "prompts_per_step": job["prompts_per_step"],
                    "group_size": job["group_size"],
                    "passes": job["passes"],
                    "mini_batches": 1,
                    "clip": job["clip"],
                    "kl_coef": job["kl_coef"],
                    "max_new_tokens": job["max_new_tokens"],
                    "temperature": job["temperature"],
                    "eval_prompts": EVAL_PROMPTS,
                    "sample_every": steps,
                }
            },
            "train": {
                "max_steps": steps,
                "lr": job["lr"],
                "schedule": "constant",
                "warmup_steps": 0,
                "weight_decay": job["weight_decay"],
                "betas": job["betas"],
                "eps": job["eps"],
                "grad_clip": job["grad_clip"],
                "precision": "fp32",
                "device": "cpu",
                "seed": job["seed"],
                "checkpoint_every": steps,
            },
            "eval": {"every": steps, "samples": 0},
        }
    )

    # Clocks around what run_rl calls, without changing it: the loop's start (the tracker is told), each
    # step's rollouts as they are handed to the loop (RolloutSteps.passes) and the end of the step's
    # updates (the loop then asks the steps for the step's row).
    marks: dict[str, Any] = {}

    class LoopClock(Tracker):
        def start(self, total: int, done: int, description: str) -> None:
            marks["train_start"] = time.perf_counter()
            marks["rss_before_train_mb"] = harness.maxrss_mb()

    ends: list[float] = []
    step_tokens: list[int] = []
    completion_tokens: list[int] = []
    prompts_seen: list[list[list[int]]] = []
    lrs: list[float] = []
    run_loop = engine_fit.TrainingLoop.run
    passes, row = rl_stage.RolloutSteps.passes, rl_stage.RolloutSteps.row

    def kept_run(loop: Any, hooks: Any) -> Any:
        marks["loop"] = loop
        return run_loop(loop, hooks)

    def timed_passes(steps: Any, batch: dict[str, Any]) -> Any:
        loop = marks["loop"]
        if "optimizer" not in marks:
            marks["optimizer"] = harness.optimizer_groups(loop.optimizer, loop.model)
        lrs.append(loop.optimizer.param_groups[0]["lr"])
        attention, response = batch["attention_mask"].bool(), batch["response_mask"].bool()
        prompt = attention & ~response
        prompts_seen.append(
            [ids[keep].tolist() for ids, keep in zip(batch["input_ids"], prompt, strict=True)]
        )
        step_tokens.append(int(attention.sum()))  # prompt tokens + generated tokens (stop token included)
        completion_tokens.append(int(response.sum()))
        return passes(steps, batch)

    def timed_row(steps: Any, *args: Any) -> Any:
        ends.append(time.perf_counter())
        return row(steps, *args)

    engine_fit.TrainingLoop.run = kept_run
    rl_stage.RolloutSteps.passes = timed_passes
    rl_stage.RolloutSteps.row = timed_row
    out = Path(job["run_dir"])
    rl_stage.run_rl(recipe, out, tracker=LoopClock(enabled=False))
    rss_peak = harness.maxrss_mb()
    rows = harness.read_jsonl(out / "metrics.jsonl")
    train_start = marks["train_start"]
    decayed, optimizer_settings = marks["optimizer"]
    return {
        "side": "peaufine",
        "setup_s": train_start - start,
        "step_ends": [t - train_start for t in ends],
        "step_tokens": step_tokens,
        "completion_tokens": completion_tokens,
        "rewards": [row["reward_mean"] for row in rows if "reward_mean" in row],
        "losses": [row["train_loss"] for row in rows if "train_loss" in row],
        "lrs": lrs,
        "rss_before_train_mb": marks["rss_before_train_mb"],
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "prompts_digest": harness.digest(prompts_seen),
        "model_dir": str(out / "model"),
        "threads": torch.get_num_threads(),
    }


def train_trl(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's GRPOTrainer on conversational prompts, one generation round feeding `passes` optimiser steps."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(job["threads"])
    steps, passes = job["steps"], job["passes"]
    completions_per_step = job["prompts_per_step"] * job["group_size"]
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    # The prompts peaufine's steps draw for this seed, in order; read in sequence (shuffle_dataset=False).
    dataset = Dataset.from_list(harness.read_jsonl(Path(job["trl_file"])))
    config = GRPOConfig(
        output_dir=str(Path(job["run_dir"]) / "trl-output"),
        max_steps=steps * passes,  # TRL counts optimiser steps
        per_device_train_batch_size=completions_per_step,  # completions, not prompts
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # one generation round per optimiser step ...
        num_iterations=passes,  # ... reused for mu optimiser steps, as peaufine's passes
        num_generations=job["group_size"],
        max_completion_length=job["max_new_tokens"],
        temperature=job["temperature"],
        top_k=0,
        top_p=1.0,
        beta=job["kl_coef"],
        epsilon=job["clip"],
        loss_type="dapo",  # TRL's default: summed over the batch's completion tokens, as peaufine's GrpoLoss
        scale_rewards="group",  # TRL's default: advantages divided by the group's std, as peaufine's
        # peaufine's KL term is k3 as sampled; TRL's default multiplies it by the importance ratio
        use_bias_correction_kl=False,
        shuffle_dataset=False,
        learning_rate=job["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        **harness.trl_training_args(job),
    )
    # the start of training, then wall time and the lr of each optimiser step
    clock = harness.trl_step_clock()
    from grpo_vs_trl import digit_share as reward  # the very function peaufine's recipe names

    trainer = GRPOTrainer(
        model=job["init_dir"],
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    # Read, without changing, what each round generated and how it was scored.
    step_tokens: list[int] = []
    completion_tokens: list[int] = []
    prompts_seen: list[list[list[int]]] = []
    rewards: list[float] = []
    generate, score = trainer._generate, trainer._calculate_rewards

    def recorded_generate(prompts: list[Any]) -> Any:
        out = generate(prompts)
        prompt_ids, completion_ids = out[0], out[1]
        prompts_seen.append([list(p) for p in prompt_ids])
        completion_tokens.append(sum(len(c) for c in completion_ids))  # the stop token included
        step_tokens.append(sum(len(p) for p in prompt_ids) + completion_tokens[-1])
        return out

    def recorded_score(*args: Any, **kwargs: Any) -> Any:
        per_function = score(*args, **kwargs)
        rewards.append(float(per_function.sum(dim=1).mean()))
        return per_function

    trainer._generate, trainer._calculate_rewards = recorded_generate, recorded_score
    trainer.train()
    rss_peak = harness.maxrss_mb()
    decayed, optimizer_settings = harness.optimizer_groups(trainer.optimizer, trainer.model)
    model_dir = Path(job["run_dir"]) / "model"
    trainer.save_model(str(model_dir))
    return {
        "side": "trl",
        "setup_s": clock.start - start,
        # an RL step ends with the last of its `passes` optimiser steps
        "step_ends": [t - clock.start for t in clock.ends[passes - 1 :: passes]],
        "step_tokens": step_tokens,
        "completion_tokens": completion_tokens,
        "rewards": rewards,
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
        "lrs": clock.lrs[::passes],
        "rss_before_train_mb": clock.rss_before,
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "prompts_digest": harness.digest(prompts_seen),
        "model_dir": str(model_dir),
        "threads": torch.get_num_threads(),
    }


# -- the parent: data, model, alternation, evaluation ---------------------------------------------
def arithmetic_questions(n: int, rng: random.Random, exclude: set[str]) -> list[dict[str, Any]]:
    """Distinct "What is a <op> b?" questions with their answers (a column the reward does not use)."""
    operations = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    rows: list[dict[str, Any]] = []
    seen = set(exclude)
    while len(rows) < n:
        a, b, name = rng.randint(0, 99), rng.randint(0, 99), rng.choice(sorted(operations))
        question = f"What is {a} {name} {b}?"
        if question not in seen:
            seen.add(question)
            rows.append({"question": question, "answer": str(operations[name](a, b))})
    return rows


@dataclass
class Prepared:
    init_dir: Path
    peaufine_file: Path
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    parameters: int
    vocab: int
    stop_ids: list[int]


def prepare(settings: Settings, workdir: Path) -> Prepared:
    from peaufine.models.tokenizer import END_OF_TURN, train_bpe

    rng = random.Random(DATA_SEED)
    train = arithmetic_questions(TRAIN_QUESTIONS, rng, set())
    val = arithmetic_questions(VAL_QUESTIONS, rng, {r["question"] for r in train})[: settings.val_prompts]
    tokenizer = train_bpe((t for r in train for t in (r["question"], r["answer"])), VOCAB_SIZE)
    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    peaufine_file = workdir / "prompts.jsonl"  # text prompts: the rl stage makes each one user turn
    harness.write_jsonl([{"prompt": r["question"], "answer": r["answer"]} for r in train], peaufine_file)

    init_dir = workdir / "init"
    # Generation stops at EOS or the end of the assistant's turn, on both sides (peaufine reads the
    # tokenizer's end-of-turn token; TRL reads this list).
    parameters = harness.save_tiny_llama(tokenizer, 128, DATA_SEED, init_dir, stop_ids=stop_ids)
    return Prepared(
        init_dir=init_dir,
        peaufine_file=peaufine_file,
        train=train,
        val=val,
        parameters=parameters,
        vocab=len(tokenizer),
        stop_ids=stop_ids,
    )


def step_prompts(prepared: Prepared, settings: Settings, seed: int) -> list[dict[str, Any]]:
    """The prompt each of peaufine's steps draws for `seed`, in order: its stage holds out a seeded
    fraction of the file (split_records), then draws prompts_per_step by global_batch."""
    from peaufine.data.batching import global_batch
    from peaufine.data.records import split_records

    train, _ = split_records(prepared.train, STAGE_VALIDATION_FRACTION, seed)
    p = settings.prompts_per_step
    return [train[i] for step in range(settings.steps) for i in global_batch(len(train), p, seed, step * p)]


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def expected_prompts_digest(tokenizer: Any, rows: list[dict[str, Any]], settings: Settings) -> str:
    """The prompt tokens of every completion of every step, as this script renders them."""
    p, g = settings.prompts_per_step, settings.group_size
    ids = [
        list(
            tokenizer.apply_chat_template(chat(r["question"]), add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in rows
    ]
    return harness.digest(
        [[ids[s * p + k] for k in range(p) for _ in range(g)] for s in range(settings.steps)]
    )


def held_out_rewards(model_dir: Path, prepared: Prepared, settings: Settings) -> dict[str, float]:
    """Mean reward of greedy completions and of `eval_samples` sampled ones (fixed seed) per held-out
    prompt, from the model saved in `model_dir`: the one evaluator for both sides."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(prepared.init_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rendered = [
        tokenizer.apply_chat_template(chat(r["question"]), add_generation_prompt=True, tokenize=False)
        for r in prepared.val
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(rendered, add_special_tokens=False, padding=True, return_tensors="pt")

    def completions(config: GenerationConfig, repeat: int) -> list[str]:
        ids = batch["input_ids"].repeat_interleave(repeat, dim=0)
        mask = batch["attention_mask"].repeat_interleave(repeat, dim=0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        texts = []
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((i for i, t in enumerate(row) if t in prepared.stop_ids), len(row))
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts

    common = {
        "max_new_tokens": settings.max_new_tokens,
        "eos_token_id": prepared.stop_ids,
        "pad_token_id": tokenizer.pad_token_id,
    }
    greedy = completions(GenerationConfig(do_sample=False, **common), 1)
    torch.manual_seed(DATA_SEED)
    sampled = completions(
        GenerationConfig(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0, **common),
        settings.eval_samples,
    )
    prompts = [r["question"] for r in prepared.val]
    greedy_rewards = digit_share(prompts, greedy)
    sampled_rewards = digit_share([q for q in prompts for _ in range(settings.eval_samples)], sampled)
    return {
        "reward_greedy": statistics.mean(greedy_rewards),
        "reward_sampled": statistics.mean(sampled_rewards),
        "examples": greedy[:3],
    }


def run_side(side: str, rep: int, settings: Settings, prepared: Prepared, files: dict, workdir: Path) -> dict:
    """`side`'s repetition `rep`, trained in a process of its own from the settings both sides share."""
    run_dir = workdir / f"{side}-{rep}"
    run_dir.mkdir(exist_ok=True)
    seed = settings.seed + rep
    job = {
        "init_dir": str(prepared.init_dir),
        "peaufine_file": str(prepared.peaufine_file),
        "trl_file": str(files[seed]),
        "run_dir": str(run_dir / "run"),
        "steps": settings.steps,
        "lr": settings.lr,
        "prompts_per_step": settings.prompts_per_step,
        "group_size": settings.group_size,
        "passes": settings.passes,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "kl_coef": settings.kl_coef,
        "clip": settings.clip,
        "betas": list(settings.betas),
        "eps": settings.eps,
        "weight_decay": settings.weight_decay,
        "grad_clip": settings.grad_clip,
        "seed": seed,
        "threads": settings.threads,
    }
    return harness.run_worker(__file__, side, rep, job, run_dir)


def rl_step_rate(run: dict[str, Any], skip: int) -> dict[str, float]:
    """RL steps/s and tokens/s (prompt + generated tokens of the rollouts) of steps skip+1..N, from the
    end of step `skip` to the end of step N: each includes its rollouts, scoring and `passes` updates."""
    return harness.steady_rate(run, skip)


def mean_of(values: list[float], part: slice) -> float:
    chosen = values[part]
    return sum(chosen) / len(chosen) if chosen else math.nan


def summarise(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    steady = [rl_step_rate(r, settings.skip) for r in runs]
    window = max(1, settings.steps // 5)
    return {
        "steps_per_s": statistics.median(s["steps_per_s"] for s in steady),
        "steps_per_s_reps": [s["steps_per_s"] for s in steady],
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in steady),
        "tokens_per_s_reps": [s["tokens_per_s"] for s in steady],
        "train_s": statistics.median(r["step_ends"][-1] for r in runs),
        "setup_s": statistics.median(r["setup_s"] for r in runs),
        "process_s": statistics.median(r["process_s"] for r in runs),
        "rss_peak_mb": statistics.median(r["rss_peak_mb"] for r in runs),
        "rss_before_train_mb": statistics.median(r["rss_before_train_mb"] for r in runs),
        "tokens_per_step": statistics.mean(x for r in runs for x in r["step_tokens"]),
        "completion_tokens_per_step": statistics.mean(x for r in runs for x in r["completion_tokens"]),
        # the training reward each side logged: its first and its last fifth of the steps
        "train_reward_first": statistics.median(mean_of(r["rewards"], slice(0, window)) for r in runs),
        "train_reward_last": statistics.median(mean_of(r["rewards"], slice(-window, None)) for r in runs),
        "train_rewards_seed0": runs[0]["rewards"],
        "reward_greedy": statistics.median(r["eval"]["reward_greedy"] for r in runs),
        "reward_greedy_reps": [r["eval"]["reward_greedy"] for r in runs],
        "reward_sampled": statistics.median(r["eval"]["reward_sampled"] for r in runs),
        "reward_sampled_reps": [r["eval"]["reward_sampled"] for r in runs],
        "greedy_examples_seed0": runs[0]["eval"]["examples"],
        "optimizer": runs[0]["optimizer"],
        "threads": runs[0]["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one side's training run, started by run_side
        return harness.serve_worker(Path(argv[1]), {"trl": train_trl, "peaufine": train_peaufine})
    settings, keep = parse_args(argv)
    if harness.skip_without_trl():
        return 0
    wall_start = time.perf_counter()
    harness.limit_threads(settings.threads)  # this process, which evaluates, and the runs it starts
    log = sys.stderr

    from transformers import AutoTokenizer

    with harness.work_folder(keep, "peaufine-grpo-vs-trl-") as workdir:
        prepared = prepare(settings, workdir)
        tokenizer = AutoTokenizer.from_pretrained(prepared.init_dir)
        files, expected = {}, {}
        for seed in (settings.seed + rep for rep in range(settings.reps)):
            rows = step_prompts(prepared, settings, seed)
            files[seed] = workdir / f"prompts-trl-seed{seed}.jsonl"
            harness.write_jsonl(
                [{"prompt": chat(r["question"]), "answer": r["answer"]} for r in rows], files[seed]
            )
            expected[seed] = expected_prompts_digest(tokenizer, rows, settings)
        print(
            f"task: {len(prepared.train):,} arithmetic questions, reward = share of digits in the answer; "
            f"model: Llama {harness.TINY_LLAMA['num_hidden_layers']} x {harness.TINY_LLAMA['hidden_size']}, "
            f"{prepared.parameters:,} parameters, vocabulary {prepared.vocab}; {settings.steps} steps x "
            f"{settings.prompts_per_step} prompts x {settings.group_size} completions x {settings.passes} "
            f"passes x {settings.reps} repetitions, {settings.threads} thread(s)",
            file=log,
        )

        def progress(run: dict[str, Any]) -> str:
            rate = rl_step_rate(run, settings.skip)
            return (
                f"{rate['steps_per_s']:.2f} steps/s, {rate['tokens_per_s']:,.0f} tokens/s, training reward "
                f"{run['rewards'][0]:.3f} -> {run['rewards'][-1]:.3f}, peak {run['rss_peak_mb']:,.0f} MB"
            )

        runs = harness.alternate(
            settings.reps, lambda side, rep: run_side(side, rep, settings, prepared, files, workdir), progress
        )
        initial = held_out_rewards(prepared.init_dir, prepared, settings)
        for side in harness.SIDES:
            for run in runs[side]:
                run["eval"] = held_out_rewards(Path(run["model_dir"]), prepared, settings)

    trl_runs, ours_runs = runs["trl"], runs["peaufine"]
    summary = {side: summarise(runs[side], settings) for side in harness.SIDES}
    pairs = list(zip(trl_runs, ours_runs, strict=True))
    ratios = harness.paired_ratios(runs, lambda run: rl_step_rate(run, settings.skip)["steps_per_s"])
    token_ratios = harness.paired_ratios(runs, lambda run: rl_step_rate(run, settings.skip)["tokens_per_s"])
    greedy_delta = harness.paired_differences(runs, lambda run: run["eval"]["reward_greedy"])
    sampled_delta = harness.paired_differences(runs, lambda run: run["eval"]["reward_sampled"])
    report = {
        "quick": settings.quick,
        "settings": asdict(settings),
        "versions": harness.library_versions(),
        "task": {
            "train_questions": len(prepared.train),
            "val_prompts": len(prepared.val),
            "reward": "digit_share",
            "stop_ids": prepared.stop_ids,
        },
        "model": {**harness.TINY_LLAMA, "parameters": prepared.parameters, "vocab_size": prepared.vocab},
        "trl": summary["trl"],
        "peaufine": summary["peaufine"],
        "speedup": statistics.median(ratios),  # RL steps/s, peaufine / TRL
        "speedup_reps": ratios,
        "tokens_speedup": statistics.median(token_ratios),
        "held_out_initial": {k: v for k, v in initial.items() if k != "examples"},
        "reward_greedy_delta": statistics.median(greedy_delta),  # peaufine - TRL
        "reward_greedy_delta_reps": greedy_delta,
        "reward_sampled_delta": statistics.median(sampled_delta),
        "reward_sampled_delta_reps": sampled_delta,
        "checks": {
            # the prompt tokens of every completion of every step: as this script, TRL and peaufine had them
            "same_prompts": all(
                expected[t["seed"]] == t["prompts_digest"] == o["prompts_digest"] for t, o in pairs
            ),
            "steps": {"trl": len(trl_runs[0]["step_ends"]), "peaufine": len(ours_runs[0]["step_ends"])},
            "rounds_scored": {"trl": len(trl_runs[0]["rewards"]), "peaufine": len(ours_runs[0]["rewards"])},
            "same_decay_groups": trl_runs[0]["decayed"] == ours_runs[0]["decayed"],
            "lr_max_gap": max(harness.lr_gaps(runs)),
            "completions_per_step": settings.prompts_per_step * settings.group_size,
            "tokens_per_step_ratio": summary["peaufine"]["tokens_per_step"]
            / summary["trl"]["tokens_per_step"],
        },
        "targets": {
            "speedup": SPEEDUP_TARGET,
            "speedup_met": statistics.median(ratios) >= SPEEDUP_TARGET,
        },
        "wall_s": time.perf_counter() - wall_start,
    }
    print_table(report)
    print("RESULT " + json.dumps(report))
    return 0


def print_table(r: dict[str, Any]) -> None:
    s, t, o, c = r["settings"], r["trl"], r["peaufine"], r["checks"]
    table = harness.ComparisonTable(t, o)
    lines = [
        "",
        f"GRPO on arithmetic prompts, CPU, {s['threads']} thread(s), torch {r['versions']['torch']}, "
        "transformers "
        f"{r['versions']['transformers']}, trl {r['versions']['trl']}: Llama {r['model']['parameters']:,} "
        f"parameters, {s['steps']} steps x {s['reps']} repetition(s), seeds from {s['seed']}",
        f"equal: initial weights; per step {s['prompts_per_step']} prompts (the same ones, token for token: "
        f"{c['same_prompts']}) x {s['group_size']} completions of <= {s['max_new_tokens']} tokens at "
        f"temperature {s['temperature']:g}, {s['passes']} passes (mu); clip {s['clip']}, KL coefficient "
        f"{s['kl_coef']} (k3)",
        "       reward: share of digits in the completion (one function for both); "
        f"AdamW lr {s['lr']:g} constant, "
        f"betas {tuple(s['betas'])}, clip {s['grad_clip']}; fp32 (largest lr gap {c['lr_max_gap']:.1e})",
        "",
        table.row("", "TRL GRPOTrainer", "peaufine", "ratio"),
        table.figure("RL steps/s, steady (median)", "steps_per_s", ".3f", f"{r['speedup']:.2f}x"),
    ]
    for k, (a, b) in enumerate(zip(t["steps_per_s_reps"], o["steps_per_s_reps"], strict=True)):
        lines.append(
            table.pair(f"    {k + 1} (seed {s['seed'] + k})", a, b, ".3f", f"{r['speedup_reps'][k]:.2f}x")
        )
    lines += [
        table.figure(
            "tokens/s (prompt + generated), steady", "tokens_per_s", ratio=f"{r['tokens_speedup']:.2f}x"
        ),
        table.figure("tokens per step (mean)", "tokens_per_step", ",.1f"),
        table.figure("  of which generated", "completion_tokens_per_step", ",.1f"),
        table.figure("training loop (s)", "train_s", ".1f"),
        table.figure("setup: imports, data, model (s)", "setup_s", ".1f"),
        table.figure("peak RSS (MB)", "rss_peak_mb"),
        table.figure("  before the training loop (MB)", "rss_before_train_mb"),
        table.row(
            "training reward, first -> last fifth",
            f"{t['train_reward_first']:.3f}->{t['train_reward_last']:.3f}",
            f"{o['train_reward_first']:.3f}->{o['train_reward_last']:.3f}",
        ),
        table.figure(
            "held-out reward, greedy (same evaluator)",
            "reward_greedy",
            ".3f",
            f"{r['reward_greedy_delta']:+.3f}",
        ),
        table.figure(
            f"held-out reward, {s['eval_samples']} samples a prompt",
            "reward_sampled",
            ".3f",
            f"{r['reward_sampled_delta']:+.3f}",
        ),
    ]
    if s["reps"] > 1:
        for k in range(s["reps"]):
            lines.append(
                table.row(
                    f"    {k + 1} (seed {s['seed'] + k}) greedy / sampled",
                    f"{t['reward_greedy_reps'][k]:.3f} {t['reward_sampled_reps'][k]:.3f}",
                    f"{o['reward_greedy_reps'][k]:.3f} {o['reward_sampled_reps'][k]:.3f}",
                )
            )
    initial = r["held_out_initial"]
    lines += [
        f"held-out: {r['task']['val_prompts']} prompts never trained on; before training greedy "
        f"{initial['reward_greedy']:.3f}, sampled {initial['reward_sampled']:.3f}",
        f"greedy answers (seed {s['seed']}): TRL {t['greedy_examples_seed0']}, "
        f"peaufine {o['greedy_examples_seed0']}",
        f"optimizer: TRL {t['optimizer']['class']} (fused {t['optimizer']['fused']}), peaufine "
        f"{o['optimizer']['class']} (fused {o['optimizer']['fused']}, foreach {o['optimizer']['foreach']})",
        f"target: >= {r['targets']['speedup']}x TRL's RL steps/s "
        f"({'met' if r['targets']['speedup_met'] else 'NOT met'})",
        f"steady rates leave out the first {s['skip']} steps; wall time {r['wall_s']:.0f} s",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
