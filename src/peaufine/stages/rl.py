"""The rl stage: a policy improved by sampling answers and reinforcing the rewarded ones (GRPO or PPO),
held near its reference by a KL penalty."""

# One step: draw `prompts_per_step` prompts; sample `group_size` answers each (KV cache, batched, stop
# at end of turn); score them with the reward sources (reward models re-tokenise the text with their
# own tokenizer; Python functions get the prompt's columns); compute the sampling policy's and the
# reference's log-probs once; then `passes` optimisation passes of `mini_batches` optimiser updates each
# over those rollouts. The engine's loop runs the steps: `RolloutSteps` is its step source. The reference
# is the LoRA model with its adapter off, or a frozen copy of the starting policy for full fine-tuning.

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import global_batch
from peaufine.data.prompts import load_prompt_records
from peaufine.data.records import split_records
from peaufine.data.tokenize import ensure_chat_template, generation_prompt
from peaufine.data.world import candidate_objects, copy_world, source_world
from peaufine.data.world_preferences import arithmetic_questions
from peaufine.engine.fit import StepHook
from peaufine.engine.runtime import make_runtime
from peaufine.engine.steps import Step, Window
from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError, TrainingError
from peaufine.evaluate.answers import exact_match
from peaufine.evaluate.stats import bootstrap_interval, wilson_interval
from peaufine.methods.preference import disable_dropout
from peaufine.methods.rewards import RewardSuite, last_user_turn, load_reward_function
from peaufine.methods.rl import (
    AdaptiveKLController,
    FixedKLController,
    GrpoLoss,
    PolicyWithValue,
    PpoLoss,
    ValueHead,
    reference_logps,
    rollout_batch,
    token_logprobs,
)
from peaufine.methods.rollout import PromptSet, ScoredRollouts, filter_by_pass_rate, sample
from peaufine.models.build import load_for_training, resolve_source, save_outputs, source_model_dir
from peaufine.models.generate import generate_texts
from peaufine.models.tokenizer import end_of_turn_ids, load_tokenizer
from peaufine.recipe import PROMPT_LEARNING_KINDS
from peaufine.report.plots import plot_rl
from peaufine.results import RlResults
from peaufine.rundir import RunDir, read_metrics
from peaufine.stages.lifecycle import (
    OpenedRun,
    StageOutcome,
    StageSpec,
    finish_run,
    fit_in_run,
    record_budget,
    require_stage,
)

if TYPE_CHECKING:
    from peaufine.data.batching import Batch
    from peaufine.engine.checkpoint import TrainerState
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import Recipe, RlBlock


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

        numbers = candidate_objects(world, "number")
        return [
            {"prompt": [{"role": "user", "content": q}], "answer": a, "candidates": numbers}
            for q, a in arithmetic_questions(world)
        ]

    return load_prompt_records(data.source, data.fields.prompt)


def check_rewards(config: RlBlock) -> None:
    """Every reward source loads: a reward-model folder, or a function that imports."""

    if not config.rewards:
        raise RecipeError(
            "method.rl.rewards: name at least one reward: a reward model folder or run, or a Python "
            "function module:function (built-ins: exact_answer, answer_format, annotator)"
        )
    for source in config.rewards:
        if not Path(source.source).expanduser().is_dir():
            load_reward_function(source.source)


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:

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

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    names = sorted({k for r in rows for k in r if k != "prompt"})
    return PromptSet(
        [r["prompt"] for r in rows],
        [generation_prompt(tokenizer, r["prompt"]) for r in rows],
        {k: [r.get(k) for r in rows] for k in names},
    )


# -- evaluation ------------------------------------------------------------------------------------------
def policy_figures(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: PromptSet,
    suite: RewardSuite,
    config: RlBlock,
    stop_ids: list[int],
    seed: int,
    runtime: Runtime,
    chunk_tokens: int | None = None,
) -> dict[str, Any]:
    """Mean reward of sampled answers (what RL optimises), of greedy answers, exact match where the
    prompts have answers, and the KL to the reference (nats per answer, on the sampled answers; both
    log-probs in the training forward's precision)."""
    import torch

    group = min(config.group_size, 4)
    scored = sample(policy, tokenizer, prompts, suite, config, group_size=group, seed=seed, stop_ids=stop_ids)
    r = scored.rollouts
    with torch.no_grad(), runtime.autocast():
        logps = token_logprobs(
            policy, r.input_ids, r.attention_mask, r.response_mask, config.temperature, chunk_tokens
        )
    ref = reference_logps(policy, reference, r, config.temperature, chunk_tokens, runtime.autocast)
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
        answers = prompts.columns["answer"]
        hits = [exact_match(g, a, "answer") for g, a in zip(greedy, answers, strict=True)]
        out["exact_match_greedy"] = sum(hits) / len(hits)
        exact = wilson_interval(sum(hits), len(hits))
        out["exact_match_greedy_ci"] = [exact.low, exact.high]
    # greedy answers are one per prompt: a bootstrap over prompts (the sampled ones come in groups of
    # one prompt's answers, which a bootstrap over answers would take as independent: none given)
    greedy_mean = bootstrap_interval(greedy_rewards)
    out["reward_greedy_ci"] = [greedy_mean.low, greedy_mean.high]
    return out


# -- the steps -------------------------------------------------------------------------------------------
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


@dataclass
class RolloutSteps:
    """The rl stage's steps, as the engine's loop takes them (a StepSource). Each step samples and
    scores this process's share of `prompts_per_step` prompts, then hands over `passes` passes of
    `mini_batches` optimiser updates on those rollouts. Its rows log the rollouts' rewards, KL and
    entropy and the KL coefficient; at evaluation steps, rank 0 alone measures the policy on the
    evaluation prompts (`policy_figures`)."""

    config: RlBlock
    seed: int  # train.seed
    policy: Any
    reference: Any  # a frozen copy of the starting policy, or None: the LoRA policy with its adapter off
    head: Any  # PPO's value head, or None (GRPO)
    objective: Any  # GrpoLoss or PpoLoss
    tokenizer: Any
    stop_ids: list[int]
    suite: RewardSuite
    prompts: PromptSet
    eval_prompts: PromptSet
    chunk_tokens: int | None
    runtime: Runtime
    tracker: Tracker
    run: RunDir
    log_every: int = 1  # every RL step is logged
    before: dict[str, Any] = field(default_factory=dict)  # `policy_figures` before the first step (rank 0)
    kl_control: Any = field(init=False)
    scored: ScoredRollouts | None = field(init=False, default=None)  # this step's rollouts
    logged: dict[str, float] = field(init=False, default_factory=dict)  # and what they say
    started: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:

        config = self.config
        self.kl_control = (
            AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
            if config.kl_control == "adaptive"
            else FixedKLController(config.kl_coef)
        )

    @property
    def name(self) -> str:
        return self.config.algorithm

    @property
    def updates_per_step(self) -> int:
        return self.config.passes * self.config.mini_batches

    def measure(self) -> dict[str, Any]:
        """The policy's figures on the evaluation prompts (rank 0 samples and scores them all)."""
        return policy_figures(
            self.policy,
            self.reference,
            self.tokenizer,
            self.eval_prompts,
            self.suite,
            self.config,
            self.stop_ids,
            10_000,
            self.runtime,
            self.chunk_tokens,
        )

    def start(self, state: TrainerState) -> None:
        if state.step > 0:  # resumed: the adaptive coefficient where the run left it
            rows = read_metrics(self.run.metrics) if self.run.metrics.exists() else []
            if rows and "kl_coef" in rows[-1]:
                self.kl_control.value = rows[-1]["kl_coef"]
        # measurements are rank 0's alone: it samples and scores every evaluation prompt itself
        if self.runtime.is_main:
            self.before = self.measure()
            self.tracker.say(
                f"before: reward {self.before['reward_sampled']:.3f} sampled, "
                f"{self.before['reward_greedy']:.3f} greedy"
            )

    def next_step(self, state: TrainerState) -> Step:

        self.started = time.perf_counter()
        config, runtime, step = self.config, self.runtime, state.step
        size = config.prompts_per_step
        chosen = global_batch(len(self.prompts), size, self.seed, step * size)
        mine = [int(i) for i in chosen[runtime.rank :: runtime.world_size]]
        scored = sample(
            self.policy,
            self.tokenizer,
            self.prompts.subset(mine),
            self.suite,
            config,
            group_size=config.group_size,
            seed=self.seed * 1_000_003 + step * runtime.world_size + runtime.rank,
            stop_ids=self.stop_ids,
        )
        if config.algorithm == "grpo":
            self.objective.kl_coef = self.kl_control.value
        batch, logged = rollout_batch(
            scored.rollouts,
            scored.rewards,
            self.policy,
            self.reference,
            config,
            self.kl_control.value,
            self.head,
            self.chunk_tokens,
            runtime.autocast,
        )
        for name, values in scored.per_source.items():
            logged[f"reward/{name}"] = sum(values) / len(values)
        self.scored, self.logged = scored, rollout_stats_across(logged, len(scored.rewards), runtime)
        return Step(self.passes(batch), config.prompts_per_step)

    def passes(self, batch: Batch) -> Iterator[list[Batch]]:
        """`passes` passes over the rollouts, each in a new random order cut into `mini_batches`
        updates of equal size (within one row): always that many, as the schedule counts them
        (`check_recipe` refused fewer rollouts than mini-batches). On several processes `batch` is
        this rank's rollouts: each update takes a mini-batch of every rank's."""
        import torch

        n = batch["input_ids"].shape[0]
        for _ in range(self.config.passes):
            order = torch.randperm(n)
            for chunk in torch.tensor_split(order, self.config.mini_batches):
                yield [{k: v[chunk] for k, v in batch.items()}]

    def row(self, window: Window, state: TrainerState, means: dict[str, float]) -> dict[str, Any]:
        import torch

        assert self.scored is not None
        # the step's loss: each update's loss per response token (all processes), averaged over updates
        shares = [loss / units.clamp(min=1) for loss, units in window.updates]
        train_loss = float(self.runtime.sum_across(torch.stack(shares).mean()))
        logged = {**self.logged, **means}  # on-policy GRPO tallies kl and entropy in its loss
        self.kl_control.update(logged["kl"], len(self.scored.rewards) * self.runtime.world_size)
        self.write_samples(state.step)
        return {
            "train_loss": train_loss,
            **logged,
            "kl_coef": self.kl_control.value,
            "seconds": time.perf_counter() - self.started,
        }

    def write_samples(self, step: int) -> None:
        """samples.jsonl: one rollout of each prompt at every `sample_every` steps (rank 0's)."""
        scored = self.scored
        if scored is None or not self.runtime.is_main:
            return
        if step % self.config.sample_every and step != 1:
            return
        with open(self.run.path / "samples.jsonl", "a", encoding="utf-8") as f:
            for i in range(0, len(scored.rewards), self.config.group_size):
                sampled = {
                    "step": step,
                    "prompt": last_user_turn(scored.prompts.prompts[i]),
                    "completion": scored.rollouts.completions[i],
                    "reward": scored.rewards[i],
                }
                f.write(json.dumps(sampled) + "\n")

    def status(self, row: dict[str, Any]) -> str:
        return f"reward {row['reward_mean']:.3f}  kl {row['kl']:.3f}"

    def evaluate(self, step: int) -> dict[str, Any]:
        if not self.runtime.is_main:
            return {}
        during = self.measure()
        return {
            "val_reward_sampled": during["reward_sampled"],
            "val_reward_greedy": during["reward_greedy"],
            "val_kl": during["kl_to_reference"],
        }

    def close(self) -> None:
        pass


def check_recipe(recipe: Recipe) -> None:
    """What the stage refuses before any run folder exists."""
    require_stage(recipe, "rl")
    if recipe.model.adapter.kind in PROMPT_LEARNING_KINDS:
        raise RecipeError(
            f"model.adapter.kind: {recipe.model.adapter.kind} is not supported by the rl stage (its "
            "left-padded rollouts place each token by position_ids, which a soft prompt's model ignores); "
            "use lora or ia3"
        )
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
    rollouts = config.prompts_per_step // world_size * config.group_size
    if rollouts < config.mini_batches:
        raise RecipeError(
            f"method.rl.mini_batches ({config.mini_batches}) is more than the rollouts each process has "
            f"a step ({rollouts}: prompts_per_step x group_size / processes): every mini-batch needs one; "
            "lower method.rl.mini_batches or raise method.rl.prompts_per_step or group_size"
        )


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    config = recipe.method.rl
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
        train_prompts, kept = filter_by_pass_rate(policy, tokenizer, train_prompts, suite, config, stop_ids)
        evaluation["pass_rate_filter"] = kept
        tracker.say(
            f"pass-rate filter: {kept['prompts_kept']} of {kept['prompts_before']} prompts have a pass "
            f"rate in {kept['range']}"
        )

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
    if len(train_prompts) == 0:
        raise TrainingError("the training set is empty: no batch can be formed")
    steps = RolloutSteps(
        config=config,
        seed=recipe.train.seed,
        policy=policy,
        reference=reference,
        head=head,
        objective=objective,
        tokenizer=tokenizer,
        stop_ids=stop_ids,
        suite=suite,
        prompts=train_prompts,
        eval_prompts=eval_prompts,
        chunk_tokens=chunk_tokens,
        runtime=runtime,
        tracker=tracker,
        run=run,
    )
    result = fit_in_run(
        opened,
        module,
        objective,
        steps,
        None,
        resume=resume,
        hooks=hooks,
    )
    if runtime.is_main:
        after = steps.measure()
        save_outputs(recipe, run, policy, tokenizer)
        if head is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in head.state_dict().items()},
                str(run.path / "value_head.safetensors"),
            )
        if run.metrics.exists():
            plot_rl(read_metrics(run.metrics), run.path / "rl.png")
        evaluation.update(
            steps=result.steps, before=steps.before, after=after, final_kl=after["kl_to_reference"]
        )
        finish_run(run, RlResults.from_json(evaluation))
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


STAGE = StageSpec("rl", prepare, train_and_measure, check=check_recipe)
run_rl = STAGE.run
