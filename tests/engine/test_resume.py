"""Resume loses nothing: a run stopped after any step and resumed logs the same rows, ends with the same
FitResult and weights as the run that never stopped, also when it stopped after its last checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PaddedExamples
from peaufine.engine.fit import FitResult, MetricTally, fit
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EarlyStoppingBlock, EvalBlock, TrainBlock
from peaufine.rundir import read_metrics

# timing is not reproducible: everything else in a row or a result must be
TIMING = {"tokens_per_s", "elapsed"}


class Stopped(Exception):
    """Raised from a step hook: the run stops right after a step (and its checkpoint, if any)."""


class TalliedLoss(NextTokenLoss):
    """The real loss, with a tally of its own (as preference objectives have): the mean loss per
    target and the number of sequences, both accumulated between log rows."""

    def __init__(self) -> None:
        object.__setattr__(self, "tally", MetricTally())

    def loss_sum(self, model, batch):
        loss = super().loss_sum(model, batch)
        self.tally.add("tallied_loss", loss.detach(), self.count(batch))
        self.tally.add("sequences", float(batch["input_ids"].shape[0]), 1.0)
        return loss


def data() -> tuple[PaddedExamples, PaddedExamples]:
    return (
        PaddedExamples(variable_examples(24, seed=3), pad_id=0),
        PaddedExamples(variable_examples(8, seed=4), pad_id=0),
    )


def run(out: Path, train: TrainBlock, evaluation: EvalBlock, *, stop_after=None, resume=False) -> FitResult:
    def stop(step: int) -> None:
        if step == stop_after:
            raise Stopped

    return fit_tallied(tiny_llama(), out, train, evaluation, resume=resume, hooks=[stop])


def fit_tallied(model, out: Path, train: TrainBlock, evaluation: EvalBlock, **options) -> FitResult:
    """`fit` of `model` with the tallied loss on the test's data, on the CPU, into `out`; `options` are
    fit's own (resume, hooks, tracker)."""
    train_set, val_set = data()
    return fit(
        model,
        TalliedLoss(),
        train_set,
        val_set,
        train,
        evaluation,
        make_cpu_runtime(),
        run_dir=out,
        **options,
    )


def make_cpu_runtime():
    from peaufine.engine.runtime import make_runtime

    return make_runtime(TrainBlock(device="cpu"))


def rows_without_timing(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(out / "metrics.jsonl")]


def comparable(result: FitResult) -> dict:
    return {
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "restored_best": result.restored_best,
        "history": [{k: v for k, v in row.items() if k not in TIMING} for row in result.history],
    }


TRAIN = TrainBlock(
    max_steps=8, batch_size=4, lr=3e-3, warmup_steps=1, log_every=3, checkpoint_every=2, device="cpu"
)
EVAL = EvalBlock(every=4)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, FitResult]:
    out = tmp_path_factory.mktemp("straight")
    return out, run(out, TRAIN, EVAL)


@pytest.mark.parametrize("stop_after", [2, 4, 6])
def test_a_resume_inside_a_log_window_logs_the_rows_of_the_uninterrupted_run(straight, tmp_path, stop_after):
    """log_every 3, checkpoint_every 2: the checkpoints at 2 and 4 fall inside a log window (rows at 1,
    3, 6, 8), so the window's partial sums and the objective's tally must come back with the resume."""
    straight_out, straight_result = straight
    with pytest.raises(Stopped):
        run(tmp_path, TRAIN, EVAL, stop_after=stop_after)
    resumed = run(tmp_path, TRAIN, EVAL, resume=True)
    assert rows_without_timing(tmp_path) == rows_without_timing(straight_out)
    assert comparable(resumed) == comparable(straight_result)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from peaufine.engine.checkpoint import CheckpointStore

    return load_file(CheckpointStore(out / "checkpoints").latest() / "model.safetensors")


@pytest.mark.parametrize("early_stopping", [False, True], ids=["to-max-steps", "stopped-early"])
def test_resuming_after_the_last_checkpoint_gives_the_uninterrupted_result(tmp_path, early_stopping):
    """A run stopped after its final checkpoint (during its final evaluation or report), or resumed
    once finished, returns the uninterrupted FitResult: its last losses, its early stop (no step more)
    and its restored best weights."""
    train, evaluation = TRAIN, EVAL
    if early_stopping:
        # a high lr on few examples overfits quickly; patience 1 stops at the first non-improvement
        train = TRAIN.model_copy(update={"max_steps": 60, "lr": 3e-2, "checkpoint_every": 100})
        evaluation = EvalBlock(every=2, early_stopping=EarlyStoppingBlock(patience=1))
    straight_model = tiny_llama()
    first = fit_tallied(straight_model, tmp_path, train, evaluation)
    assert first.stopped_early == early_stopping
    assert first.restored_best == early_stopping  # the control: the early stop does restore
    rows = rows_without_timing(tmp_path)

    resumed_model = tiny_llama(seed=1)  # other initial weights: everything must come from the checkpoint
    resumed = fit_tallied(resumed_model, tmp_path, train, evaluation, resume=True)
    assert comparable(resumed) == comparable(first)
    assert first.final_train_loss is not None and first.final_val_loss is not None
    assert rows_without_timing(tmp_path) == rows  # nothing logged twice, nothing lost
    for name, value in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"])
def test_a_damaged_latest_checkpoint_is_named_and_the_newest_intact_one_resumed(straight, tmp_path, damaged):
    """Whichever file of the latest checkpoint is truncated, the resume says which checkpoint is
    damaged and goes on from the one before, to the rows and result of the uninterrupted run."""
    import io

    from rich.console import Console

    from peaufine.engine.track import Tracker

    straight_out, straight_result = straight
    with pytest.raises(Stopped):
        run(tmp_path, TRAIN, EVAL, stop_after=6)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000006"]
    truncate(checkpoints / "step-00000006" / damaged)
    buffer = io.StringIO()
    resumed = fit_tallied(
        tiny_llama(),
        tmp_path,
        TRAIN,
        EVAL,
        resume=True,
        tracker=Tracker(enabled=True, console=Console(file=buffer, width=1000)),
    )
    said = " ".join(buffer.getvalue().split())
    assert f"{checkpoints / 'step-00000006'} is damaged" in said
    assert "resumed from" in said and "step-00000004 at step 4" in said
    assert rows_without_timing(tmp_path) == rows_without_timing(straight_out)
    assert comparable(resumed) == comparable(straight_result)


def test_a_resume_with_every_checkpoint_damaged_is_refused_naming_them(tmp_path):
    from peaufine.errors import TrainingError

    with pytest.raises(Stopped):
        run(tmp_path, TRAIN, EVAL, stop_after=6)
    for step in ("step-00000004", "step-00000006"):
        truncate(tmp_path / "checkpoints" / step / "model.safetensors")
    with pytest.raises(TrainingError) as refused:
        run(tmp_path, TRAIN, EVAL, resume=True)
    message = str(refused.value)
    assert "step-00000004" in message and "step-00000006" in message and "--overwrite" in message


def test_a_damaged_best_weights_checkpoint_is_named_and_the_last_weights_kept(tmp_path):
    """An early-stopped run whose best-weights snapshot is truncated, resumed: it says so and ends with
    its last weights, reporting that the best were not restored."""
    import io

    from rich.console import Console

    from peaufine.engine.checkpoint import CheckpointStore
    from peaufine.engine.track import Tracker

    train = TRAIN.model_copy(update={"max_steps": 60, "lr": 3e-2, "checkpoint_every": 100})
    evaluation = EvalBlock(every=2, early_stopping=EarlyStoppingBlock(patience=1))
    first = fit_tallied(tiny_llama(), tmp_path, train, evaluation)
    assert first.restored_best  # the control: intact, the best weights are restored
    best = CheckpointStore(tmp_path / "checkpoints").best()
    truncate(best / "model.safetensors")
    buffer = io.StringIO()
    model = tiny_llama(seed=1)
    resumed = fit_tallied(
        model,
        tmp_path,
        train,
        evaluation,
        resume=True,
        tracker=Tracker(enabled=True, console=Console(file=buffer, width=1000)),
    )
    assert f"{best} is damaged" in buffer.getvalue()
    assert not resumed.restored_best and resumed.steps == first.steps
    for name, value in weights(tmp_path).items():  # the last checkpoint's weights
        assert torch.equal(model.state_dict()[name], value), name


def test_a_row_torn_by_a_kill_mid_write_is_dropped_by_the_resume(straight, tmp_path):
    """A kill while a row was being appended leaves half a line at the end of metrics.jsonl: the resume
    drops it (its step is logged again) and ends with the uninterrupted rows."""
    straight_out, straight_result = straight
    with pytest.raises(Stopped):
        run(tmp_path, TRAIN, EVAL, stop_after=4)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 5, "lr": 0.0012, "train_lo')
    resumed = run(tmp_path, TRAIN, EVAL, resume=True)
    assert rows_without_timing(tmp_path) == rows_without_timing(straight_out)
    assert comparable(resumed) == comparable(straight_result)
