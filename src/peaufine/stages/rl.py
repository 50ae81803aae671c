"""The rl stage: a policy improved by sampling answers and reinforcing the rewarded ones (GRPO or PPO),
held near its reference by a KL penalty.

One step: draw `prompts_per_step` prompts; sample `group_size` answers each (KV cache, batched, stop
at end of turn); score them with the reward sources (reward models re-tokenise the text with their
own tokenizer; Python functions get the prompt's columns); compute the sampling policy's and the
reference's log-probs once; then `passes` optimisation passes of `mini_batches` optimiser steps each
over those rollouts, through the engine's gradient and update steps. The reference is the LoRA model
with its adapter off, or a frozen copy of the starting policy for full fine-tuning.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.world import copy_world, source_world
from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError
from peaufine.methods.rewards import RewardSuite, last_user_turn
from peaufine.models.build import resolve_source
from peaufine.results import RlResults
from peaufine.rundir import RunDir, read_metrics
from peaufine.stages.lifecycle import finish_run, open_run, record_budget

if TYPE_CHECKING:
    import torch

    from peaufine.engine.fit import TrainingLoop
    from peaufine.methods.rollout import Rollouts
    from peaufine.recipe import Recipe, RlBlock


@dataclass
class RlResult:
    run: RunDir
    steps: int
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSet:
    """Prompts with the columns reward functions receive (the reference answer, say)."""

    prompts: list[Any]  # chat messages or raw text
    texts: list[str]  # rendered for generation (chat template + assistant header)
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: list[int]) -> PromptSet:
        return PromptSet(
            [self.prompts[i] for i in indices],
            [self.texts[i] for i in indices],
            {k: [v[i] for i in indices] for k, v in self.columns.items()},
        )

    def collate(self, indices: Any) -> Any:  # the engine's Dataset protocol; RL batches its own rollouts
        raise NotImplementedError("rl batches come from rollouts")


# -- prompts ------------------------------------------------------------------------------------------
def gather_prompts(recipe: Recipe) -> list[dict[str, Any]]:
    """Prompt records: the world's arithmetic questions (with answers), or the user's files.

    A file record has `prompt` (text or chat messages); every other field is a column for the reward
    functions.
    """
    data = recipe.data
    if data.source == "world":
        world = source_world(resolve_source(recipe.model.source))
        if world is None:
            raise RecipeError(
                "data.source: 'world' asks the synthetic world's arithmetic questions, which needs "
                "model.source to be a run trained on the world (it has a world/ folder)"
            )
        from peaufine.data.world import candidate_objects
        from peaufine.data.world_preferences import arithmetic_questions

        numbers = candidate_objects(world, "number")
        return [
            {"prompt": [{"role": "user", "content": q}], "answer": a, "candidates": numbers}
            for q, a in arithmetic_questions(world)
        ]
    from peaufine.data.prompts import load_prompt_records

    return load_prompt_records(data.source, data.fields.prompt)


def check_rewards(config: RlBlock) -> None:
    """Every reward source loads: a reward-model folder, or a function that imports."""
    from peaufine.methods.rewards import load_reward_function

    if not config.rewards:
        raise RecipeError(
            "method.rl.rewards: name at least one reward: a reward model folder or run, or a Python "
            "function module:function (built-ins: exact_answer, answer_format, annotator)"
        )
    for source in config.rewards:
        if not Path(source.source).expanduser().is_dir():
            load_reward_function(source.source)


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:
    from peaufine.data.records import split_records
    from peaufine.data.tokenize import ensure_chat_template
    from peaufine.models.build import source_model_dir
    from peaufine.models.tokenizer import load_tokenizer

    source = resolve_source(recipe.model.source)
    tokenizer = load_tokenizer(str(source_model_dir(source)), recipe.model.trust_remote_code)
    ensure_chat_template(tokenizer)
    check_rewards(recipe.method.rl)
    records = gather_prompts(recipe)
    if recipe.data.source == "world":
        train, validation = records, records  # RL on the arithmetic questions, scored on them all
    else:
        train, validation = split_records(records, recipe.data.validation_fraction, recipe.train.seed)
        if not validation:
            tracker.warn(
                "data.validation_fraction is 0: rewards before and after are measured on training prompts"
            )
            validation = train
    data = staging / "data"
    data.mkdir()
    for name, rows in (("train", train), ("validation", validation)):
        (data / f"{name}.prompts.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    tokenizer.save_pretrained(staging / "tokenizer")
    copy_world(source, staging)
    tracker.say(f"prompts: {len(train):,} for training, {len(validation):,} for evaluation")
    return {"prompts": {"train": len(train), "validation": len(validation)}}


def load_prompts(path: Path, tokenizer: Any) -> PromptSet:
    from peaufine.data.tokenize import generation_prompt

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    names = sorted({k for r in rows for k in r if k != "prompt"})
    return PromptSet(
        [r["prompt"] for r in rows],
        [generation_prompt(tokenizer, r["prompt"]) for r in rows],
        {k: [r.get(k) for r in rows] for k in names},
    )


# -- rollouts and their scores ---------------------------------------------------------------------------
@dataclass
class ScoredRollouts:
    rollouts: Rollouts
    prompts: PromptSet  # one entry per row (each prompt repeated group_size times)
    rewards: list[float]
    per_source: dict[str, list[float]]


def sample(
    policy: Any,
    tokenizer: Any,
    prompts: PromptSet,
    suite: RewardSuite,
    config: RlBlock,
    *,
    group_size: int,
    seed: int,
    stop_ids: list[int],
) -> ScoredRollouts:
    from peaufine.methods.rollout import generate_rollouts

    rollouts = generate_rollouts(
        policy,
        tokenizer,
        prompts.texts,
        group_size=group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=seed,
        stop_ids=stop_ids,
    )
    rows = prompts.subset([int(i) for i in rollouts.prompt_index])
    rewards, per_source = suite.score(rows.prompts, rollouts.completions, rows.columns)
    return ScoredRollouts(rollouts, rows, rewards, per_source)


def pass_scores(scored: ScoredRollouts, config: RlBlock) -> list[float]:
    if config.pass_source is None:
        return scored.rewards
    if config.pass_source not in scored.per_source:
        raise RecipeError(
            f"method.rl.pass_source: {config.pass_source!r} is none of the reward sources "
            f"({', '.join(scored.per_source)})"
        )
    return scored.per_source[config.pass_source]


def pass_rates(
    policy: Any, tokenizer: Any, prompts: PromptSet, suite: RewardSuite, config: RlBlock, stop_ids: list[int]
) -> list[float]:
    """Each prompt's pass rate over a group of samples from the policy as it starts."""
    rates = []
    for start in range(0, len(prompts), 16):
        chunk = prompts.subset(list(range(start, min(len(prompts), start + 16))))
        scored = sample(
            policy,
            tokenizer,
            chunk,
            suite,
            config,
            group_size=config.group_size,
            seed=start,
            stop_ids=stop_ids,
        )
        passed = [s >= config.pass_threshold for s in pass_scores(scored, config)]
        g = config.group_size
        rates += [sum(passed[i * g : (i + 1) * g]) / g for i in range(len(chunk))]
    return rates


def reference_logps(
    policy: Any, reference: Any, rollouts: Rollouts, temperature: float, chunk_tokens: int | None = None
) -> torch.Tensor:
    import torch

    from peaufine.engine.parallel import unwrap
    from peaufine.methods.rl import token_logprobs

    args = (rollouts.input_ids, rollouts.attention_mask, rollouts.response_mask)
    with torch.no_grad():
        if reference is not None:
            return token_logprobs(reference, *args, temperature, chunk_tokens)
        with unwrap(policy).disable_adapter():
            return token_logprobs(policy, *args, temperature, chunk_tokens)


# -- evaluation ------------------------------------------------------------------------------------------
def measure(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: PromptSet,
    suite: RewardSuite,
    config: RlBlock,
    stop_ids: list[int],
    seed: int,
    chunk_tokens: int | None = None,
) -> dict[str, Any]:
    """Mean reward of sampled answers (what RL optimises), of greedy answers, exact match where the
    prompts have answers, and the KL to the reference (nats per answer, on the sampled answers)."""
    import torch

    from peaufine.methods.rewards import exact_answer
    from peaufine.methods.rl import token_logprobs
    from peaufine.models.generate import generate_texts

    group = min(config.group_size, 4)
    scored = sample(policy, tokenizer, prompts, suite, config, group_size=group, seed=seed, stop_ids=stop_ids)
    r = scored.rollouts
    with torch.no_grad():
        logps = token_logprobs(
            policy, r.input_ids, r.attention_mask, r.response_mask, config.temperature, chunk_tokens
        )
    ref = reference_logps(policy, reference, r, config.temperature, chunk_tokens)
    kl = float(((logps - ref) * r.response_mask).sum(-1).mean())
    greedy = generate_texts(
        policy, tokenizer, prompts.texts, max_new_tokens=config.max_new_tokens, temperature=0.0
    )
    greedy_rewards, greedy_sources = suite.score(prompts.prompts, greedy, prompts.columns)
    out: dict[str, Any] = {
        "prompts": len(prompts),
        "reward_sampled": sum(scored.rewards) / len(scored.rewards),
        "reward_greedy": sum(greedy_rewards) / len(greedy_rewards),
        "by_source_greedy": {k: sum(v) / len(v) for k, v in greedy_sources.items()},
        "kl_to_reference": kl,
        "response_length": float(r.response_lengths().float().mean()),
        "samples": [
            {"prompt": last_user_turn(p), "greedy": g}
            for p, g in zip(prompts.prompts[:5], greedy[:5], strict=True)
        ],
    }
    if "answer" in prompts.columns:
        hits = exact_answer(prompts.texts, greedy, prompts.columns["answer"])
        out["exact_match_greedy"] = sum(hits) / len(hits)
    return out


# -- the loop --------------------------------------------------------------------------------------------
def rollout_batch(
    scored: ScoredRollouts,
    policy: Any,
    reference: Any,
    config: RlBlock,
    kl_coef: float,
    head: Any,
    chunk_tokens: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The tensors of one optimisation batch: old and reference log-probs, advantages (and PPO's values
    and returns), plus what to log about the rollouts themselves.

    GRPO with one pass of one mini-batch optimises the very policy that sampled: its old log-probs are
    those of the training forward (GrpoLoss without old_logps), which then also tallies the rollouts'
    entropy and KL; no forward of the policy is spent on them here."""
    import torch

    from peaufine.methods import rl

    r = scored.rollouts
    mask = r.response_mask
    rewards = torch.tensor(scored.rewards, dtype=torch.float32, device=r.input_ids.device)
    on_policy = head is None and config.passes == 1 and config.mini_batches == 1
    with torch.no_grad():
        if on_policy:
            old = None
        elif head is None:
            old = rl.token_logprobs(
                policy, r.input_ids, r.attention_mask, mask, config.temperature, chunk_tokens
            )
        else:
            old, hidden = rl.token_logprobs_and_hidden(
                policy, r.input_ids, r.attention_mask, mask, config.temperature, chunk_tokens
            )
            old_values = torch.where(mask, rl.values_of_tokens(head, hidden), 0.0)
    ref = reference_logps(policy, reference, r, config.temperature, chunk_tokens)
    batch = {
        "input_ids": r.input_ids,
        "attention_mask": r.attention_mask,
        "response_mask": mask,
        "ref_logps": ref,
    }
    if old is not None:
        batch["old_logps"] = old
    if head is None:
        batch["advantages"] = rl.group_advantages(rewards, config.group_size, scale=config.scale_rewards)
    else:
        token_rewards = rl.kl_penalised_rewards(rewards, old, ref, mask, kl_coef)
        advantages, returns = rl.gae(token_rewards, old_values, mask, config.gamma, config.lam)
        batch.update(advantages=rl.whiten(advantages, mask), returns=returns, old_values=old_values)
        del batch["ref_logps"]  # PPO's leash is in the rewards
    lengths = mask.sum(-1).float()
    logged = {
        "reward_mean": float(rewards.mean()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "response_length": float(lengths.mean()),
    }
    if old is not None:
        logged["kl"] = float(((old - ref) * mask).sum(-1).mean())
        logged["entropy"] = float(-(old * mask).sum() / mask.sum().clamp(min=1))
    for name, values in scored.per_source.items():
        logged[f"reward/{name}"] = sum(values) / len(values)
    return batch, logged


def optimise(loop: TrainingLoop, batch: dict[str, torch.Tensor], config: RlBlock) -> float:
    """`passes` passes over the rollouts, `mini_batches` optimiser steps each; returns the mean loss.

    On several processes `batch` is this rank's rollouts; each optimiser step takes a mini-batch of
    every rank's, and the loss returned is that of all processes."""
    import torch

    n = batch["input_ids"].shape[0]
    losses = []
    for _ in range(config.passes):
        order = torch.randperm(n)
        for chunk in order.chunk(min(config.mini_batches, n)):
            part = {k: v[chunk] for k, v in batch.items()}
            loss, units, _ = loop.gradients_on([part])
            loop.apply_update()
            losses.append(loss / units.clamp(min=1))  # this rank's share of the global mean
    return float(loop.runtime.sum_across(torch.stack(losses).mean()))


def rollout_stats_across(logged: dict[str, float], rows: int, runtime: Any) -> dict[str, float]:
    """The rollout statistics of all processes' rollouts: means weighted by rows, min and max."""
    if not runtime.distributed:
        return logged
    everyone = runtime.gather_objects((logged, rows))
    total = sum(n for _, n in everyone)
    merged = {}
    for key in logged:
        values = [(stats[key], n) for stats, n in everyone]
        if key == "reward_min":
            merged[key] = min(v for v, _ in values)
        elif key == "reward_max":
            merged[key] = max(v for v, _ in values)
        else:
            merged[key] = sum(v * n for v, n in values) / total
    return merged


def run_rl(
    recipe: Recipe,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    tracker: Tracker | None = None,
) -> RlResult:

    from peaufine.data.batching import global_batch
    from peaufine.engine.fit import make_loop
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.preference import disable_dropout
    from peaufine.methods.rl import (
        AdaptiveKLController,
        FixedKLController,
        GrpoLoss,
        PolicyWithValue,
        PpoLoss,
        ValueHead,
    )
    from peaufine.models.build import load_for_training, save_outputs, source_model_dir
    from peaufine.models.tokenizer import end_of_turn_ids, load_tokenizer

    if recipe.stage != "rl":
        raise RecipeError(f"stage: this command runs stage 'rl', the recipe says '{recipe.stage}'")
    if recipe.train.distributed == "fsdp":
        raise RecipeError(
            "train.distributed: fsdp is not supported by the rl stage (each process generates with "
            "the whole policy); use train.distributed: ddp"
        )
    config = recipe.method.rl
    world_size = make_runtime(recipe.train).world_size  # checked before the run folder is made
    if config.prompts_per_step % world_size:
        raise RecipeError(
            f"method.rl.prompts_per_step ({config.prompts_per_step}) must be a multiple of the number "
            f"of processes ({world_size}): each process samples its own share of the prompts"
        )
    out = Path(out)
    opened = open_run(recipe, out, prepare, overwrite=overwrite, resume=resume, tracker=tracker)
    run, runtime, tracker, prepared = opened.run, opened.runtime, opened.tracker, opened.prepared
    tokenizer = load_tokenizer(str(run.tokenizer))
    stop_ids = end_of_turn_ids(tokenizer)
    policy = load_for_training(recipe, source_model_dir(resolve_source(recipe.model.source)), runtime)
    record_budget(run, runtime, recipe, policy)
    disable_dropout(policy)
    reference = None
    if recipe.model.adapter.kind == "none":
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    suite = RewardSuite(config.rewards, runtime.device)
    train_prompts = load_prompts(run.data / "train.prompts.jsonl", tokenizer)
    eval_prompts = load_prompts(run.data / "validation.prompts.jsonl", tokenizer)
    eval_prompts = eval_prompts.subset(list(range(min(len(eval_prompts), config.eval_prompts))))
    evaluation: dict[str, Any] = {"stage": "rl", "algorithm": config.algorithm, **prepared}

    if config.min_pass_rate is not None or config.max_pass_rate is not None:
        rates = pass_rates(policy, tokenizer, train_prompts, suite, config, stop_ids)
        low = config.min_pass_rate or 0.0
        high = config.max_pass_rate if config.max_pass_rate is not None else 1.0
        keep = [i for i, rate in enumerate(rates) if low <= rate <= high]
        evaluation["pass_rate_filter"] = {
            "range": [low, high],
            "prompts_before": len(rates),
            "prompts_kept": len(keep),
            "mean_pass_rate_before": sum(rates) / len(rates),
            "mean_pass_rate_kept": sum(rates[i] for i in keep) / len(keep) if keep else None,
        }
        if not keep:
            raise RecipeError(
                f"method.rl: no prompt has a pass rate in [{low}, {high}] before training "
                f"(mean pass rate {sum(rates) / len(rates):.2f}); widen min_pass_rate / max_pass_rate"
            )
        tracker.say(
            f"pass-rate filter: {len(keep)} of {len(rates)} prompts have a pass rate in [{low}, {high}]"
        )
        train_prompts = train_prompts.subset(keep)

    head = None
    module = policy
    chunk_tokens = recipe.train.loss_chunk_tokens
    if config.algorithm == "ppo":
        head = ValueHead(policy.config.hidden_size).to(runtime.device)
        module = PolicyWithValue(policy, head)
        objective: Any = PpoLoss(
            config.clip, config.value_clip, config.value_coef, head, config.temperature, chunk_tokens
        )
    else:
        objective = GrpoLoss(
            config.clip, config.kl_coef, temperature=config.temperature, chunk_tokens=chunk_tokens
        )
    updates = recipe.train.max_steps * config.passes * config.mini_batches
    schedule = recipe.train.model_copy(update={"max_steps": updates})
    loop = make_loop(
        module, objective, train_prompts, None, schedule, recipe.eval, runtime, run_dir=out, tracker=tracker
    )
    kl_control = (
        AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        if config.kl_control == "adaptive"
        else FixedKLController(config.kl_coef)
    )
    if resume:
        loop.resume()
        logged_rows = read_metrics(run.metrics) if run.metrics.exists() else []
        if logged_rows and "kl_coef" in logged_rows[-1]:
            kl_control.value = logged_rows[-1]["kl_coef"]  # the adaptive coefficient where it was
    # measurements are rank 0's alone: it samples and scores every evaluation prompt itself
    before: dict[str, Any] = {}
    if runtime.is_main:
        before = measure(
            policy, reference, tokenizer, eval_prompts, suite, config, stop_ids, 10_000, chunk_tokens
        )
        tracker.say(
            f"before: reward {before['reward_sampled']:.3f} sampled, {before['reward_greedy']:.3f} greedy"
        )
    history = []
    step = loop.state.step
    tracker.start(recipe.train.max_steps, step, config.algorithm)
    samples_path = run.path / "samples.jsonl"
    try:
        while step < recipe.train.max_steps:
            started = time.perf_counter()
            chosen = global_batch(
                len(train_prompts), config.prompts_per_step, recipe.train.seed, step * config.prompts_per_step
            )
            mine = [int(i) for i in chosen[runtime.rank :: runtime.world_size]]
            scored = sample(
                policy,
                tokenizer,
                train_prompts.subset(mine),
                suite,
                config,
                group_size=config.group_size,
                seed=recipe.train.seed * 1_000_003 + step * runtime.world_size + runtime.rank,
                stop_ids=stop_ids,
            )
            if config.algorithm == "grpo":
                objective.kl_coef = kl_control.value
            batch, logged = rollout_batch(
                scored, policy, reference, config, kl_control.value, head, chunk_tokens
            )
            logged = rollout_stats_across(logged, len(scored.rewards), runtime)
            loss = optimise(loop, batch, config)
            logged.update(objective.tally.drain(runtime))  # on-policy GRPO tallies kl and entropy there
            kl_control.update(logged["kl"], len(scored.rewards) * runtime.world_size)
            step += 1
            loop.state.step = step  # checkpoints count RL steps; the schedule counts optimiser updates
            loop.state.examples_seen += config.prompts_per_step
            row = {
                "step": step,
                "lr": loop.scheduler.get_last_lr()[0],
                "train_loss": loss,
                **logged,
                "kl_coef": kl_control.value,
                "seconds": time.perf_counter() - started,
            }
            if runtime.is_main and (step % recipe.eval.every == 0 or step == recipe.train.max_steps):
                during = measure(
                    policy, reference, tokenizer, eval_prompts, suite, config, stop_ids, 10_000, chunk_tokens
                )
                row.update(
                    val_reward_sampled=during["reward_sampled"],
                    val_reward_greedy=during["reward_greedy"],
                    val_kl=during["kl_to_reference"],
                )
            loop.metrics.write(row)
            history.append(row)
            tracker.update(step, f"reward {row['reward_mean']:.3f}  kl {row['kl']:.3f}")
            if runtime.is_main and (step % config.sample_every == 0 or step == 1):
                with open(samples_path, "a", encoding="utf-8") as f:
                    for i in range(0, len(scored.rewards), config.group_size):
                        f.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "prompt": last_user_turn(scored.prompts.prompts[i]),
                                    "completion": scored.rollouts.completions[i],
                                    "reward": scored.rewards[i],
                                }
                            )
                            + "\n"
                        )
            if step % recipe.train.checkpoint_every == 0 or step == recipe.train.max_steps:
                loop.checkpoint()
    finally:
        tracker.stop()
    if runtime.is_main:
        after = measure(
            policy, reference, tokenizer, eval_prompts, suite, config, stop_ids, 10_000, chunk_tokens
        )
        save_outputs(recipe, run, policy, tokenizer)
        if head is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in head.state_dict().items()},
                str(run.path / "value_head.safetensors"),
            )
        if run.metrics.exists():
            from peaufine.report.plots import plot_rl

            plot_rl(read_metrics(run.metrics), run.path / "rl.png")
        evaluation.update(steps=step, before=before, after=after, final_kl=after["kl_to_reference"])
        finish_run(run, RlResults.from_json(evaluation))
    runtime.barrier()
    return RlResult(run=run, steps=step, evaluation=evaluation)
