"""The one training loop every method runs in: accumulate, clip, step, schedule, evaluate, checkpoint."""

# The loss of an optimiser update is the sum of per-target losses over all micro-batches of all processes,
# divided by the number of targets in that whole global batch, so batch 1 x accumulation 8, batch 8 x 1
# and 2 processes x 4 give the same update on variable-length data. What each step trains on comes from
# a step source (engine/steps.py): by default one global batch of a data set per step.

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peaufine.data.batching import Batch, BatchPlan, Dataset, batch_to, evaluation_batches
from peaufine.engine.checkpoint import (
    CheckpointStore,
    DamagedCheckpoint,
    TrainerState,
    damage,
    load_weights,
    torch_rng_state,
)
from peaufine.engine.optim import build_optimizer, build_scheduler
from peaufine.engine.parallel import lockstep, place
from peaufine.engine.steps import BatchSteps, StepSource, Window
from peaufine.engine.track import MetricsLog, Tracker
from peaufine.errors import TrainingError
from peaufine.rundir import RunDir, read_metrics

if TYPE_CHECKING:
    import torch

    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import EvalBlock, TrainBlock


class Objective(Protocol):
    """What a method gives the engine: a summed loss over its units, and how many units a batch has.

    Units are target tokens for language modelling, pairs for preference losses: the engine divides
    the summed loss by the units of the whole global batch. An objective that reports more than its
    loss (a preference accuracy, a clip fraction) also has a `tally` (a MetricTally) that
    its loss_sum adds to; the engine logs the tally's means with each training row, and with a
    `val_` prefix after each validation.
    """

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor: ...

    def count(self, batch: Batch) -> torch.Tensor: ...


class MetricTally:
    """Running sums of an objective's metrics between two log rows: name -> (sum, count).

    Sums stay tensors on the device (no host sync per micro-batch); `drain` adds them across
    processes and returns the means.
    """

    def __init__(self) -> None:
        self.sums: dict[str, list[Any]] = {}

    def add(self, name: str, total: Any, count: Any = 1.0) -> None:
        """Add `total` over `count` units to metric `name` (a weighted mean: total / count)."""
        import torch

        total = torch.as_tensor(total).detach().double().reshape(())
        count = torch.as_tensor(count, device=total.device).detach().double().reshape(())
        entry = self.sums.get(name)
        if entry is None:
            self.sums[name] = [total.clone(), count.clone()]
        else:
            entry[0] = entry[0] + total
            entry[1] = entry[1] + count

    def _stacked(self, runtime: Runtime | None) -> tuple[list[str], Any]:
        """The names, and their (sum, count) pairs stacked and added across processes."""
        import torch

        names = sorted(self.sums)
        device = runtime.device if runtime is not None else self.sums[names[0]][0].device
        stacked = torch.stack([torch.stack(self.sums[n]).to(device) for n in names])
        if runtime is not None:
            runtime.sum_across(stacked)
        return names, stacked

    def partial(self, runtime: Runtime) -> dict[str, list[float]]:
        """The sums so far, added across processes, kept as they are: what a checkpoint saves."""
        if not self.sums:
            return {}
        names, stacked = self._stacked(runtime)
        return dict(zip(names, stacked.tolist(), strict=True))

    def resume(self, saved: dict[str, list[float]], runtime: Runtime) -> None:
        """Start from a checkpoint's `partial` sums: rank 0 holds them, the others zeros of the same
        names (the next drain adds the same names on every process)."""
        import torch

        own = 1.0 if runtime.rank == 0 else 0.0
        self.sums = {
            name: [torch.tensor(value * own, dtype=torch.float64, device=runtime.device) for value in pair]
            for name, pair in saved.items()
        }

    def drain(self, runtime: Runtime | None = None) -> dict[str, float]:
        """The mean of each metric since the last drain (across processes), and start afresh."""
        if not self.sums:
            return {}
        names, stacked = self._stacked(runtime)
        self.sums = {}
        return {
            name: float(total / count) if count > 0 else math.nan
            for name, (total, count) in zip(names, stacked.tolist(), strict=True)
        }


def objective_tally(objective: Objective) -> MetricTally | None:
    return getattr(objective, "tally", None)


@dataclass
class FitResult:
    steps: int
    tokens_seen: int
    elapsed: float
    final_train_loss: float | None
    final_val_loss: float | None
    best_step: int | None
    best_val_loss: float | None
    stopped_early: bool
    restored_best: bool
    history: list[dict[str, Any]] = field(default_factory=list)


StepHook = Callable[[int], None]


def _tokens_in(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def evaluate_loss(
    model: torch.nn.Module,
    objective: Objective,
    dataset: Dataset,
    runtime: Runtime,
    batch_size: int,
    max_batches: int | None = None,
) -> float:
    """Mean loss per unit over the validation set, in a fixed order, summed across processes."""
    return evaluate(model, objective, dataset, runtime, batch_size, max_batches)[0]


def evaluate(
    model: torch.nn.Module,
    objective: Objective,
    dataset: Dataset,
    runtime: Runtime,
    batch_size: int,
    max_batches: int | None = None,
) -> tuple[float, dict[str, float]]:
    """Mean loss per unit over a data set, and the means of the objective's other metrics there.

    The objective's training tally is set aside meanwhile, so evaluation never leaks into the
    training metrics of the current log window.
    """
    training_tally = objective_tally(objective)
    if training_tally is not None:
        objective.tally = MetricTally()  # type: ignore[attr-defined]
    try:
        loss = _evaluate_loss(model, objective, dataset, runtime, batch_size, max_batches)
        metrics = objective.tally.drain(runtime) if training_tally is not None else {}  # type: ignore[attr-defined]
    finally:
        if training_tally is not None:
            objective.tally = training_tally  # type: ignore[attr-defined]
    return loss, metrics


def _evaluate_loss(
    model: torch.nn.Module,
    objective: Objective,
    dataset: Dataset,
    runtime: Runtime,
    batch_size: int,
    max_batches: int | None,
) -> float:
    import torch

    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    units = torch.zeros((), dtype=torch.float64, device=runtime.device)
    batches = list(
        evaluation_batches(len(dataset), batch_size, runtime.rank, runtime.world_size, max_batches)
    )
    idle = 0
    if runtime.distributed and len(dataset) > 0 and lockstep(model):
        # FSDP gathers parameters in every forward: a rank with fewer batches runs one more, unused
        rounds = max(runtime.gather_objects(len(batches)))
        idle = rounds - len(batches)
        batches += [[0]] * idle
    with torch.no_grad():
        for k, indices in enumerate(batches):
            batch = batch_to(dataset.collate(indices), runtime.device)
            if k >= len(batches) - idle:
                tally = objective_tally(objective)
                if tally is not None:
                    objective.tally = MetricTally()  # type: ignore[attr-defined]
                with runtime.autocast():
                    objective.loss_sum(model, batch)
                if tally is not None:
                    objective.tally = tally  # type: ignore[attr-defined]
                continue
            with runtime.autocast():
                total += objective.loss_sum(model, batch).double()
            units += objective.count(batch).double()
    runtime.sum_across(total)
    runtime.sum_across(units)
    model.train(was_training)
    return float(total / units) if units > 0 else math.nan


class TrainingLoop:
    """State of one fit() call; methods are the loop's steps, in the order they run."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        train_set: Dataset | StepSource,
        val_set: Dataset | None,
        train: TrainBlock,
        evaluation: EvalBlock,
        runtime: Runtime,
        run_dir: Path | None,
        tracker: Tracker,
    ) -> None:
        import torch

        self.model = model
        self.objective = objective
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        self.train = train
        self.evaluation = evaluation
        self.runtime = runtime
        self.tracker = tracker
        self.plan = BatchPlan.make(train.batch_size, runtime.world_size, train.micro_batch_size)
        writes = run_dir is not None and runtime.is_main
        self.store = (
            CheckpointStore(Path(run_dir) / "checkpoints", train.keep_checkpoints)
            if (run_dir is not None)
            else None
        )
        if self.store is not None and runtime.is_main:
            self.store.directory.mkdir(parents=True, exist_ok=True)
        self.writes = writes
        self.metrics = MetricsLog(RunDir(Path(run_dir or ".")).metrics, enabled=writes)
        self.forward_module = self._wrap(model)
        self.source = (
            train_set
            if isinstance(train_set, StepSource)
            else BatchSteps(train_set, self.plan, train, runtime)
        )
        self.optimizer = build_optimizer(self.trained, train)
        # train.max_steps and train.warmup_steps count steps, the schedule counts optimiser updates
        per_step = self.source.updates_per_step
        schedule = train.model_copy(
            update={"max_steps": train.max_steps * per_step, "warmup_steps": train.warmup_steps * per_step}
        )
        self.scheduler = build_scheduler(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None
        self.state = TrainerState()
        self.history: list[dict[str, Any]] = []
        self.best_in_memory: dict[str, torch.Tensor] | None = None
        self.window: Window | None = None  # the log window open now: checkpoints keep it
        self.resumed_window: Window | None = None
        self.trainable = [p for p in self.trained.parameters() if p.requires_grad]

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Place the model on the processes (DDP or FSDP, see engine/parallel.py); returns the module
        the loss is computed through. `self.trained` is the one whose parameters the optimiser steps."""

        self.placement = place(model, self.train, self.runtime)
        self.trained = self.placement.trained
        return self.placement.forward

    # -- resume --------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest intact checkpoint, saying which newer ones are damaged."""
        found = self.store.checkpoints() if self.store is not None else []
        if not found:
            raise TrainingError(
                "--resume: no complete checkpoint in "
                f"{self.store.directory if self.store else 'this run'} (the run stopped before its "
                "first checkpoint); start it again with --overwrite"
            )
        if self.writes:
            for stale in self.store.remove_stale():
                self.tracker.say(f"removed {stale}: a run killed while it wrote a checkpoint left it")
        damaged: list[str] = []
        for checkpoint in found:
            try:
                self.state, optimizer_state = self.store.read(checkpoint)
                break
            except DamagedCheckpoint as exc:
                self.tracker.warn(f"{checkpoint} is damaged ({exc}); trying the checkpoint before it")
                damaged.append(f"{checkpoint.name} ({exc})")
        else:
            raise TrainingError(
                f"--resume: every checkpoint in {self.store.directory} is damaged: {'; '.join(damaged)}. "
                "Start the run again with --overwrite"
            )
        # every rank reads the checkpoint: full weights and optimiser state, whatever world size wrote it
        placement = self.placement
        placement.ready_host_for_loading()
        load_weights(self.model, checkpoint)
        placement.push_host()
        placement.empty_host()
        placement.load_optimizer_state(self.optimizer, optimizer_state)
        self.store.restore_rng(checkpoint, self.state, self.runtime.rank)
        self.scheduler.load_state_dict(self.state.scheduler)
        if self.state.window is not None:
            self.resumed_window = Window.resumed(self.state.window, self.runtime)
        tally = objective_tally(self.objective)
        if tally is not None:
            tally.resume(self.state.tally, self.runtime)
        self.metrics.truncate_after(self.state.step)
        # the rows logged before the checkpoint: the run's history, and its last losses when no step
        # is left to run (a run stopped after its final checkpoint, or one resumed once finished)
        logged = self.metrics.path
        rows = read_metrics(logged, torn_tail=True) if logged.exists() else []
        self.history = [row for row in rows if row.get("step", 0) <= self.state.step]
        self.tracker.say(f"resumed from {checkpoint} at step {self.state.step}")

    # -- one optimiser step ----------------------------------------------------------------------
    def accumulate_gradients(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward and backward over this process's micro-batches of the next step's first update."""
        return self.gradients_on(next(iter(self.source.next_step(self.state).updates)))

    def gradients_on(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward and backward over this process's share (`batches`) of one global batch.

        Leaves in `.grad` the gradient of (summed loss / units in the global batch), whatever the
        split into processes and micro-batches. Returns the summed loss, the global unit count and
        the input tokens processed by all processes.
        """
        import torch

        runtime = self.runtime
        local = torch.tensor(
            [
                float(sum(self.objective.count(b) for b in batches)),
                float(sum(_tokens_in(b) for b in batches)),
            ],
            dtype=torch.float64,
            device=runtime.device,
        )
        units, tokens = runtime.sum_across(local).unbind()  # one all-reduce for both counts
        # DDP averages gradients over processes; scaling by world_size turns that into the sum.
        scale = runtime.world_size / units.clamp(min=1.0)
        loss_total = torch.zeros((), device=runtime.device, dtype=torch.float64)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not runtime.distributed
            with self.placement.gradient_sync(sync):
                with runtime.autocast():
                    loss_sum = self.objective.loss_sum(self.forward_module, batch)
                loss = loss_sum * scale.to(loss_sum.dtype)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_total += loss_sum.detach().double()
        return loss_total, units, int(tokens)

    def apply_update(self, loss_total: torch.Tensor) -> torch.Tensor:
        """Clip, check, step the optimiser and the schedule, clear gradients; returns the gradient norm.

        The loss and gradient norm are checked before the optimiser steps: a non-finite update stops
        the run with the weights (in memory and on disk) of the step before. Under fp16 the grad
        scaler skips an update whose gradients overflowed; the schedule moves only with the updates
        the optimiser really made, so it ends where train.max_steps says.
        """
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.train.grad_clip if self.train.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, already reduced over the shards
            grad_norm = grad_norm.full_tensor()
        self.check_finite(loss_total, grad_norm)
        stepped = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale  # the scale backs off only after a skipped step
        else:
            self.optimizer.step()
        if stepped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # -- evaluation and early stopping -----------------------------------------------------------
    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation loss and the objective's other validation metrics (needs a validation set)."""
        assert self.val_set is not None
        size = self.evaluation.batch_size or self.plan.micro_batch_size
        return evaluate(
            self.trained, self.objective, self.val_set, self.runtime, size, self.evaluation.max_batches
        )

    def note_validation(self, val_loss: float) -> bool:
        """Record a validation loss; True when early stopping says to stop."""
        state, rule = self.state, self.evaluation.early_stopping
        improved = state.best_val_loss is None or val_loss < state.best_val_loss - rule.min_delta
        if improved:
            state.best_val_loss, state.best_step = val_loss, state.step
            state.evals_without_improvement = 0
            keep_in_memory = self.store is None and self.evaluation.restore_best
            if self.store is not None or keep_in_memory:
                self.placement.fill_host(everywhere=keep_in_memory)
            if self.writes and self.store is not None:
                self.store.save_best(self.model, state.step, val_loss)
            elif keep_in_memory:
                # no run directory to keep best/ in: keep the best weights in memory instead
                self.best_in_memory = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.placement.empty_host()
            self.runtime.barrier()
            return False
        state.evals_without_improvement += 1
        state.stopped_early = rule.patience is not None and state.evals_without_improvement >= rule.patience
        return state.stopped_early

    def last_logged(self, key: str) -> float | None:
        """The last value of `key` in the rows logged so far (before a resume too), None if none."""
        return next((row[key] for row in reversed(self.history) if key in row), None)

    def checkpoint(self) -> None:
        """Rank 0 writes full weights and optimiser state; under FSDP every rank helps gather them."""

        self.state.scheduler = self.scheduler.state_dict()
        if self.store is not None:
            tally = objective_tally(self.objective)
            self.state.window = self.window.partial(self.runtime) if self.window is not None else None
            self.state.tally = tally.partial(self.runtime) if tally is not None else {}
            rank_rng = self.runtime.gather_objects(torch_rng_state())
            self.placement.fill_host(everywhere=False)
            optimizer_state = self.placement.optimizer_state(self.optimizer)
            if self.writes:
                self.store.save(self.model, optimizer_state, self.state, rank_rng)
            self.placement.empty_host()
        self.runtime.barrier()

    def fail_non_finite(self, what: str) -> None:
        latest = self.store.latest() if self.store is not None else None
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise TrainingError(
            f"{what} is not finite at step {self.state.step + 1}; training stopped and {kept}. "
            f"{self.non_finite_advice()}"
        )

    def non_finite_advice(self) -> str:
        """What to change after a non-finite update: only settings the run does not already have
        (advising train.grad_clip to a run that clips sends the user after the wrong knob)."""
        clip = self.train.grad_clip
        lower = f"train.lr (now {self.train.lr:g})"
        if clip is not None:
            lower += f" or train.grad_clip (now {clip:g})"
        advice = [f"lower {lower}"]
        if clip is None:
            advice.append("set train.grad_clip (e.g. 1.0)")
        if self.runtime.precision != "fp32":
            advice.append(f"use train.precision: fp32 (now {self.runtime.precision})")
        return "Try: " + "; ".join(advice) + "."

    # -- the loop --------------------------------------------------------------------------------
    def run(self, hooks: list[StepHook]) -> FitResult:
        train, state, source = self.train, self.state, self.source
        self.model.train()
        last_train_loss = self.last_logged("train_loss")
        last_val = self.last_logged("val_loss")
        stopped_early = state.stopped_early
        try:
            source.start(state)
            self.tracker.start(train.max_steps, state.step, source.name)
            window, window_start = self.new_window(), time.perf_counter()
            while state.step < train.max_steps and not stopped_early:
                step = source.next_step(state)
                tokens = 0
                for batches in step.updates:
                    loss_total, units, update_tokens = self.gradients_on(batches)
                    grad_norm = self.apply_update(loss_total)
                    window.add(loss_total, units, update_tokens, grad_norm)
                    tokens += update_tokens
                state.step += 1
                state.examples_seen += step.examples
                state.tokens_seen += tokens
                last = state.step == train.max_steps
                row: dict[str, Any] | None = None
                if state.step % source.log_every == 0 or last or state.step == 1:
                    window.seconds = time.perf_counter() - window_start
                    state.elapsed += window.seconds
                    tally = objective_tally(self.objective)
                    means = tally.drain(self.runtime) if tally is not None else {}
                    row = {"step": state.step, "lr": self.scheduler.get_last_lr()[0]}
                    row.update(source.row(window, state, means))
                    if row["train_loss"] is not None:  # None: the window drew no task target
                        last_train_loss = row["train_loss"]
                    self.tracker.update(state.step, source.status(row))
                    window, window_start = self.new_window(), time.perf_counter()
                if state.step % self.evaluation.every == 0 or last:
                    eval_start = time.perf_counter()
                    measured: dict[str, Any] = {}
                    if self.val_set is not None:
                        last_val, val_metrics = self.validate()
                        measured["val_loss"] = last_val
                        measured.update({f"val_{name}": value for name, value in val_metrics.items()})
                        stopped_early = self.note_validation(last_val)
                    measured.update(source.evaluate(state.step))
                    if measured:
                        row = row or {"step": state.step}
                        row.update(measured)
                    # evaluation time is not training time: keep it out of tokens/s
                    window_start += time.perf_counter() - eval_start
                if row is not None:
                    self.metrics.write(row)
                    self.history.append(row)
                if state.step % train.checkpoint_every == 0 or last or stopped_early:
                    self.checkpoint()
                for hook in hooks:
                    hook(state.step)
                if stopped_early:
                    self.tracker.say(
                        f"early stopping at step {state.step}: no improvement over "
                        f"{state.best_val_loss:.4f} (step {state.best_step}) for "
                        f"{state.evals_without_improvement} evaluations"
                    )
                    break
        finally:
            source.close()
            self.tracker.stop()
        self.placement.fill_host(everywhere=True)  # from here on the stage's model is whole on every rank
        restored = self.restore_best()
        return FitResult(
            steps=state.step,
            tokens_seen=state.tokens_seen,
            elapsed=state.elapsed,
            final_train_loss=last_train_loss,
            final_val_loss=last_val,
            best_step=state.best_step,
            best_val_loss=state.best_val_loss,
            stopped_early=stopped_early,
            restored_best=restored,
            history=self.history,
        )

    def new_window(self) -> Window:
        """A fresh log window; after a resume, first the one the checkpoint kept."""
        import torch

        if self.resumed_window is not None:
            self.window, self.resumed_window = self.resumed_window, None
        else:
            zero = torch.zeros((), dtype=torch.float64, device=self.runtime.device)
            self.window = Window(loss=zero, units=zero.clone())
        return self.window

    def check_finite(self, loss_total: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop the run at an update whose loss or gradient norm is not finite (under fp16 the grad
        scaler skips such updates itself)."""
        import torch

        if not torch.isfinite(loss_total):
            self.fail_non_finite("the loss")
        if self.scaler is None and not torch.isfinite(grad_norm):
            self.fail_non_finite("the gradient norm")

    def restore_best(self) -> bool:
        state = self.state
        if not self.evaluation.restore_best or state.best_step in (None, state.step):
            return False
        best = self.store.best() if self.store is not None else None
        if best is not None:
            try:
                load_weights(self.model, best)
            except Exception as exc:  # whatever the reader of a damaged file raises
                self.tracker.warn(
                    f"{best} is damaged ({damage(exc)}): the best weights (step {state.best_step}) cannot "
                    "be restored, and the run ends with its last weights"
                )
                return False
        elif self.best_in_memory is not None:
            self.model.load_state_dict(self.best_in_memory)
        else:
            return False
        self.tracker.say(
            f"restored the best weights: step {state.best_step}, val loss {state.best_val_loss:.4f}"
        )
        return True


def make_loop(
    model: torch.nn.Module,
    objective: Objective,
    train_set: Dataset | StepSource,
    val_set: Dataset | None,
    train: TrainBlock,
    evaluation: EvalBlock,
    runtime: Runtime,
    *,
    run_dir: Path | None = None,
    tracker: Tracker | None = None,
) -> TrainingLoop:
    """The loop's state, ready to run; tests use it to look at one step's gradients."""
    import torch

    if not isinstance(train_set, StepSource) and len(train_set) == 0:
        raise TrainingError("the training set is empty: no batch can be formed")
    torch.manual_seed(train.seed + runtime.rank)
    return TrainingLoop(
        model,
        objective,
        train_set,
        val_set,
        train,
        evaluation,
        runtime,
        run_dir,
        tracker or Tracker(enabled=False),
    )


def fit(
    model: torch.nn.Module,
    objective: Objective,
    train_set: Dataset | StepSource,
    val_set: Dataset | None,
    train: TrainBlock,
    evaluation: EvalBlock,
    runtime: Runtime,
    *,
    run_dir: Path | None = None,
    tracker: Tracker | None = None,
    resume: bool = False,
    hooks: list[StepHook] | None = None,
) -> FitResult:
    """Train `model` with `objective` until train.max_steps or early stopping: on `train_set`, one
    global batch a step, or on the steps a StepSource makes (see engine/steps.py)."""
    loop = make_loop(
        model, objective, train_set, val_set, train, evaluation, runtime, run_dir=run_dir, tracker=tracker
    )
    if resume:
        loop.resume()
    return loop.run(hooks or [])
