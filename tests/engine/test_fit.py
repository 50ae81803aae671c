"""The loop's guarantees: non-finite losses stop it safely, early stopping restores the best weights,
and checkpoints are atomic."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PaddedExamples
from peaufine.engine import checkpoint as checkpoint_module
from peaufine.engine.checkpoint import CheckpointStore
from peaufine.engine.fit import fit
from peaufine.errors import TrainingError
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EarlyStoppingBlock, EvalBlock, TrainBlock
from peaufine.rundir import read_metrics


class PoisonedAfter(NextTokenLoss):
    """The real loss, but NaN from the `bad_call`-th training forward on."""

    def __init__(self, bad_call: int) -> None:
        self.calls = 0
        self.bad_call = bad_call

    def loss_sum(self, model, batch):
        loss = super().loss_sum(model, batch)
        if model.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                return loss * float("nan")
        return loss


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cpu_runtime):
    model = tiny_llama()
    data = PaddedExamples(variable_examples(16), pad_id=0)
    train = TrainBlock(max_steps=10, batch_size=4, lr=1e-3, checkpoint_every=2, device="cpu")
    with pytest.raises(TrainingError) as caught:
        fit(model, PoisonedAfter(bad_call=5), data, None, train, EvalBlock(), cpu_runtime, run_dir=tmp_path)
    message = str(caught.value)
    assert "not finite at step 5" in message
    assert "step-00000004" in message
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.latest().name == "step-00000004"
    saved = checkpoint_module.TrainerState(
        **__import__("json").loads((store.latest() / checkpoint_module.STATE).read_text())
    )
    assert saved.step == 4


def overfitting_setup():
    train_set = PaddedExamples(variable_examples(4, seed=1, masked=False), pad_id=0)
    val_set = PaddedExamples(variable_examples(24, seed=2, masked=False), pad_id=0)
    return train_set, val_set


def test_early_stopping_restores_the_best_weights(tmp_path, cpu_runtime):
    from safetensors.torch import load_file

    model = tiny_llama()
    train_set, val_set = overfitting_setup()
    train = TrainBlock(
        max_steps=400,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.0,
        checkpoint_every=1000,
        log_every=5,
        device="cpu",
    )
    evaluation = EvalBlock(every=5, early_stopping=EarlyStoppingBlock(patience=3))
    result = fit(model, NextTokenLoss(), train_set, val_set, train, evaluation, cpu_runtime, run_dir=tmp_path)
    assert result.stopped_early
    assert result.steps < 400
    assert result.best_step == result.steps - 15  # three evaluations without improvement
    assert result.restored_best
    rows = read_metrics(tmp_path / "metrics.jsonl")
    vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert min(vals, key=vals.get) == result.best_step
    assert vals[result.steps] > vals[result.best_step]
    best = load_file(CheckpointStore(tmp_path / "checkpoints").best() / "model.safetensors")
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, best[name], rtol=0, atol=0)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_usable(
    tmp_path, cpu_runtime, monkeypatch
):
    model = tiny_llama()
    data = PaddedExamples(variable_examples(16), pad_id=0)
    train = TrainBlock(max_steps=4, batch_size=4, checkpoint_every=2, device="cpu")
    real_save = torch.save
    calls = {"n": 0}

    def crash_on_second_checkpoint(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # optimizer.pt of the 2nd checkpoint (1st: optimizer, 2nd: rng)
            real_save(obj, f, *args, **kwargs)
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(model, NextTokenLoss(), data, None, train, EvalBlock(), cpu_runtime, run_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.latest().name == "step-00000002"
    assert not (tmp_path / "checkpoints" / "step-00000004").exists()
    # and the run resumes from it to the end
    result = fit(
        tiny_llama(),
        NextTokenLoss(),
        data,
        None,
        train,
        EvalBlock(),
        cpu_runtime,
        run_dir=tmp_path,
        resume=True,
    )
    assert result.steps == 4
    assert store.latest().name == "step-00000004"


def test_old_checkpoints_are_pruned_to_keep(tmp_path, cpu_runtime):
    data = PaddedExamples(variable_examples(8), pad_id=0)
    train = TrainBlock(max_steps=6, batch_size=4, checkpoint_every=1, keep_checkpoints=2, device="cpu")
    fit(tiny_llama(), NextTokenLoss(), data, None, train, EvalBlock(), cpu_runtime, run_dir=tmp_path)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-00000005", "step-00000006"]


def test_best_weights_are_restored_without_a_run_directory(cpu_runtime):
    model = tiny_llama()
    train_set, val_set = overfitting_setup()
    train = TrainBlock(
        max_steps=400,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.0,
        log_every=5,
        device="cpu",
    )
    evaluation = EvalBlock(every=5, early_stopping=EarlyStoppingBlock(patience=3))
    result = fit(model, NextTokenLoss(), train_set, val_set, train, evaluation, cpu_runtime)
    assert result.stopped_early and result.restored_best
    from peaufine.engine.fit import evaluate_loss

    restored = evaluate_loss(model, NextTokenLoss(), val_set, cpu_runtime, batch_size=4)
    assert restored == pytest.approx(result.best_val_loss, rel=1e-6)


# -- a non-finite update never reaches the weights, a skipped update never moves the schedule ------------
class NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward: a finite loss whose update is poisoned."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NanGradientAfter(PoisonedAfter):
    """The real loss, with NaN gradients from the `bad_call`-th training forward on."""

    def loss_sum(self, model, batch):
        loss = NextTokenLoss.loss_sum(self, model, batch)
        if model.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                return NanGradient.apply(loss)
        return loss


def constant_lr(**update) -> TrainBlock:
    settings = dict(max_steps=10, batch_size=4, lr=1e-2, warmup_steps=0, schedule="constant", device="cpu")
    return TrainBlock(**{**settings, **update})


@pytest.mark.parametrize("poison", [PoisonedAfter, NanGradientAfter], ids=["nan-loss", "nan-gradient"])
@pytest.mark.parametrize("bad_step", [1, 3])
def test_a_non_finite_update_leaves_the_weights_of_the_step_before(cpu_runtime, poison, bad_step):
    data = PaddedExamples(variable_examples(16), pad_id=0)
    before = tiny_llama()
    if bad_step > 1:
        fit(
            before, NextTokenLoss(), data, None, constant_lr(max_steps=bad_step - 1), EvalBlock(), cpu_runtime
        )
    model = tiny_llama()
    with pytest.raises(TrainingError, match=f"not finite at step {bad_step}"):
        fit(model, poison(bad_step), data, None, constant_lr(), EvalBlock(), cpu_runtime)
    expected = before.state_dict()
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


def test_a_poisoned_update_would_change_the_weights_if_stepped(cpu_runtime):
    # the negative control of the test above: stepping the poisoned gradients does change the weights
    from peaufine.engine.fit import make_loop

    data = PaddedExamples(variable_examples(16), pad_id=0)
    for poison in (PoisonedAfter(1), NanGradientAfter(1)):
        model = tiny_llama()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        loop = make_loop(model, poison, data, None, constant_lr(), EvalBlock(), cpu_runtime)
        loop.accumulate_gradients()
        loop.optimizer.step()
        assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())


class FakeScaler:
    """torch.amp.GradScaler's contract, on the CPU: it skips the updates numbered in `skip` (1-based)
    as GradScaler skips one with inf/NaN gradients, and halves its scale after a skip."""

    def __init__(self, skip: set[int]) -> None:
        self.skip, self.scale_value, self.updates, self.skipped = skip, 1024.0, 0, False

    def scale(self, loss):
        return loss * self.scale_value

    def unscale_(self, optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale_value)

    def step(self, optimizer):
        self.updates += 1
        self.skipped = self.updates in self.skip
        if not self.skipped:
            optimizer.step()

    def update(self):
        if self.skipped:
            self.scale_value /= 2

    def get_scale(self):
        return self.scale_value


@pytest.mark.parametrize(
    "skip",
    [set(), {2}, {1, 3}],
    ids=["none-skipped", "2-skipped", "1-and-3-skipped"],
)
def test_an_update_the_grad_scaler_skips_does_not_move_the_schedule(cpu_runtime, skip):
    from peaufine.engine.fit import make_loop
    from peaufine.engine.optim import lr_at

    data = PaddedExamples(variable_examples(16), pad_id=0)
    train = TrainBlock(
        max_steps=4, batch_size=4, lr=1e-2, warmup_steps=0, schedule="linear", log_every=1, device="cpu"
    )
    loop = make_loop(tiny_llama(), NextTokenLoss(), data, None, train, EvalBlock(), cpu_runtime)
    loop.scaler = FakeScaler(skip)
    result = loop.run([])
    # a row's lr is the one the next update uses: lr_at(updates the optimiser really made)
    made = [sum(1 for u in range(1, step + 1) if u not in skip) for step in range(1, 5)]
    assert [row["lr"] for row in result.history] == pytest.approx([lr_at(m, train) for m in made])
    assert loop.scheduler.last_epoch == 4 - len(skip)


# -- the advice of a non-finite stop names only what is not already set ------------------------------------
@pytest.mark.parametrize(
    ("grad_clip", "precision"),
    [(None, "bf16"), (None, "fp32"), (1.0, "bf16"), (1.0, "fp32")],
)
def test_the_non_finite_advice_suggests_only_what_is_not_set(grad_clip, precision):
    from peaufine.engine.runtime import make_runtime

    train = constant_lr(max_steps=3, grad_clip=grad_clip, precision=precision)
    data = PaddedExamples(variable_examples(8), pad_id=0)
    with pytest.raises(TrainingError) as caught:
        fit(tiny_llama(), PoisonedAfter(1), data, None, train, EvalBlock(), make_runtime(train))
    message = str(caught.value)
    assert "train.lr" in message  # always worth lowering
    assert ("set train.grad_clip" in message) == (grad_clip is None)
    assert ("train.precision" in message) == (precision != "fp32")
    if grad_clip is not None:  # already clipping: the advice says at what norm
        assert f"train.grad_clip (now {grad_clip:g})" in message
