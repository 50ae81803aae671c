"""2 processes (torchrun, gloo) == 1 process at the same global batch, on variable-length data.

The worker (ddp_worker.py) trains a tiny Llama for 6 steps of global batch 8: once in one process
(micro-batch 4, accumulation 2), once in two with DDP (micro-batch 2, accumulation 2 on each), and
once in two with FSDP2 (fully_shard with CPU offload, the same split). Each trains the next-token loss
on whole logits and through the chunked cross-entropy, which must not change a thing.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TORCHRUN_2, need_gloo, run_launched

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 6
BATCH_SIZE = 8
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
TIMEOUT_S = 180


@dataclass
class Launch:
    """What one launch left behind: each rank's record, its parameter files, and the engine's run dirs."""

    out_dir: Path
    run_root: Path
    ranks: list[dict[str, Any]]

    def history(self, objective: str, rank: int = 0) -> list[dict[str, Any]]:
        return self.ranks[rank]["objectives"][objective]["history"]

    def params(self, objective: str, which: str, rank: int = 0) -> np.ndarray:
        return np.load(self.out_dir / self.ranks[rank]["objectives"][objective]["params_files"][which])


def _launch(
    tmp: Path,
    name: str,
    launcher: list[str],
    micro_batch_size: int,
    processes: int,
    extra: tuple[str, ...] = (),
) -> Launch:
    out_dir, run_root = tmp / name / "out", tmp / name / "run"
    out_dir.mkdir(parents=True)
    command = [
        *launcher,
        str(WORKER),
        "--run-root",
        str(run_root),
        "--out-dir",
        str(out_dir),
        "--batch-size",
        str(BATCH_SIZE),
        "--micro-batch-size",
        str(micro_batch_size),
        "--steps",
        str(STEPS),
        *extra,
    ]
    run_launched(command, f"{name} run", TIMEOUT_S)
    records = sorted(out_dir.glob("rank*.json"))
    assert len(records) == processes, f"{name}: expected {processes} rank records, found {records}"
    return Launch(out_dir, run_root, [json.loads(p.read_text(encoding="utf-8")) for p in records])


@pytest.fixture(scope="module")
def launch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def runs(launch_root: Path) -> tuple[Launch, Launch]:
    need_gloo()
    one = _launch(launch_root, "one-process", [sys.executable], micro_batch_size=4, processes=1)
    two = _launch(launch_root, "two-processes", TORCHRUN_2, micro_batch_size=2, processes=2)
    return one, two


@pytest.fixture(scope="module")
def fsdp(launch_root: Path, runs: tuple[Launch, Launch]) -> Launch:
    # with CPU offload: on a CPU it changes nothing but which code path FSDP takes
    extra = ("--strategy", "fsdp", "--objectives", "per_token,chunked", "--cpu-offload")
    return _launch(launch_root, "fsdp", TORCHRUN_2, micro_batch_size=2, processes=2, extra=extra)


def _relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def _column(history: list[dict[str, Any]], key: str) -> list[float]:
    return [row[key] for row in history if key in row]


def test_the_two_process_run_really_had_two_gloo_ranks(runs: tuple[Launch, Launch]) -> None:
    # Two separate one-process trainings would give the very same losses: the world size is the proof.
    one, two = runs
    assert [(r["rank"], r["world_size"], r["dist_initialized"]) for r in one.ranks] == [(0, 1, False)]
    assert sorted(r["rank"] for r in two.ranks) == [0, 1]
    for record in two.ranks:
        assert record["world_size"] == 2
        assert record["dist_world_size"] == 2
        assert record["backend"] == "gloo"


def test_each_rank_trains_on_its_own_share_of_the_global_batch(runs: tuple[Launch, Launch]) -> None:
    one, two = runs
    seen_one = one.ranks[0]["objectives"]["per_token"]["seen"]
    seen_two = [r["objectives"]["per_token"]["seen"] for r in two.ranks]
    assert [len(m) for m in seen_one] == [4] * 2 * STEPS  # accumulation 2 of micro-batch 4
    for seen in seen_two:
        assert [len(m) for m in seen] == [2] * 2 * STEPS  # accumulation 2 of micro-batch 2, per rank
    for step in range(STEPS):
        whole = sorted(seen_one[2 * step] + seen_one[2 * step + 1])
        rank0, rank1 = (set(s[2 * step] + s[2 * step + 1]) for s in seen_two)
        assert not rank0 & rank1, f"step {step + 1}: both ranks trained on examples {rank0 & rank1}"
        assert sorted(rank0 | rank1) == whole, f"step {step + 1}: the ranks' shares are not the global batch"


def test_two_processes_follow_the_one_process_trajectory(runs: tuple[Launch, Launch]) -> None:
    one, two = runs
    expected = one.history("per_token")
    assert [row["step"] for row in expected] == list(range(1, STEPS + 1))
    # untrained, a model of 50 tokens predicts near-uniformly
    assert abs(expected[0]["train_loss"] - math.log(50)) < 0.2
    assert expected[-1]["train_loss"] < expected[0]["train_loss"] - 0.1, "training did not move the loss"
    for rank in (0, 1):
        got = two.history("per_token", rank)
        assert [row["step"] for row in got] == [row["step"] for row in expected]
        for key in ("train_loss", "grad_norm", "val_loss", "lr"):
            gap = _relative_gap(_column(expected, key), _column(got, key))
            assert gap < LOSS_RTOL, f"rank {rank}: {key} differs from the one-process run by {gap:.2e}"
        assert len(_column(got, "val_loss")) == 2  # steps 3 and 6
    for which in ("last_step", "returned"):
        reference = one.params("per_token", which)
        for rank in (0, 1):
            gap = np.abs(two.params("per_token", which, rank) - reference).max()
            assert gap < PARAM_ATOL, f"rank {rank}: {which} parameters differ by {gap:.2e}"
        # DDP keeps the replicas bit-identical
        np.testing.assert_array_equal(two.params("per_token", which, 0), two.params("per_token", which, 1))
    for key in ("restored_best", "best_step"):
        assert {r["objectives"]["per_token"][key] for r in two.ranks} == {
            one.ranks[0]["objectives"]["per_token"][key]
        }


def test_only_rank_zero_writes_the_run_dir(runs: tuple[Launch, Launch]) -> None:
    one, two = runs

    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    # the same files as the one-process run: no second writer's temporary or extra checkpoint folders
    assert listing(two.run_root / "per_token") == listing(one.run_root / "per_token")
    metrics = (two.run_root / "per_token" / "metrics.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in metrics.splitlines()]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "metrics from more than one writer"
    gap = _relative_gap(_column(rows, "train_loss"), _column(one.history("per_token"), "train_loss"))
    assert gap < LOSS_RTOL


def test_normalising_per_micro_batch_would_be_caught(runs: tuple[Launch, Launch]) -> None:
    """The control: averaging micro-batch means (units = micro-batches, not target tokens) depends on how
    the global batch is cut, so on variable-length data the two launches part by far more than the
    tolerances above. This shows those tolerances can fail."""
    one, two = runs
    for key in ("train_loss", "grad_norm"):
        gap = _relative_gap(
            _column(one.history("per_micro_batch"), key), _column(two.history("per_micro_batch"), key)
        )
        assert gap > 100 * LOSS_RTOL, f"{key}: per-micro-batch means agree ({gap:.2e}); data too uniform"
    one_params, two_params = (run.params("per_micro_batch", "last_step") for run in runs)
    assert np.abs(one_params - two_params).max() > 100 * PARAM_ATOL


def test_tokens_seen_counts_every_process(runs: tuple[Launch, Launch]) -> None:
    one, two = runs
    expected = _column(one.history("per_token"), "tokens_seen")
    for rank in (0, 1):
        assert _column(two.history("per_token", rank), "tokens_seen") == expected


def test_fsdp_really_shards_the_model_over_the_two_ranks(fsdp: Launch) -> None:
    for record in fsdp.ranks:
        assert (record["world_size"], record["backend"]) == (2, "gloo")
        objective = record["objectives"]["per_token"]
        assert objective["strategy"] == "fsdp"
        elements = objective["trained_elements"]
        # each rank holds about half of every parameter (a shard is padded to equal sizes)
        assert 0.45 < elements["local"] / elements["whole"] < 0.55, elements


def test_fsdp_follows_the_one_process_trajectory(runs: tuple[Launch, Launch], fsdp: Launch) -> None:
    one, _ = runs
    expected = one.history("per_token")
    for rank in (0, 1):
        got = fsdp.history("per_token", rank)
        assert [row["step"] for row in got] == [row["step"] for row in expected]
        for key in ("train_loss", "grad_norm", "val_loss", "lr", "tokens_seen"):
            gap = _relative_gap(_column(expected, key), _column(got, key))
            assert gap < LOSS_RTOL, f"rank {rank}: {key} differs from the one-process run by {gap:.2e}"
        # fit() hands back the whole model on every rank, the same as one process trains
        gap = np.abs(fsdp.params("per_token", "returned", rank) - one.params("per_token", "returned")).max()
        assert gap < PARAM_ATOL, f"rank {rank}: returned parameters differ by {gap:.2e}"
    np.testing.assert_array_equal(
        fsdp.params("per_token", "returned", 0), fsdp.params("per_token", "returned", 1)
    )


def test_fsdp_checkpoints_hold_the_whole_model_written_once(
    runs: tuple[Launch, Launch], fsdp: Launch
) -> None:
    from safetensors.torch import load_file

    one, _ = runs

    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    assert listing(fsdp.run_root / "per_token") == listing(one.run_root / "per_token")
    rows = [
        json.loads(line) for line in (fsdp.run_root / "per_token" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "metrics from more than one writer"
    checkpoint = f"checkpoints/step-{STEPS:08d}/model.safetensors"
    sharded = load_file(fsdp.run_root / "per_token" / checkpoint)
    whole = load_file(one.run_root / "per_token" / checkpoint)
    assert sharded.keys() == whole.keys()
    for key, tensor in whole.items():
        assert sharded[key].shape == tensor.shape, key  # unsharded: full shapes
        assert (sharded[key] - tensor).abs().max() < PARAM_ATOL, key


def test_the_chunked_loss_follows_the_same_trajectory_under_ddp_and_fsdp(
    runs: tuple[Launch, Launch], fsdp: Launch
) -> None:
    """Chunks call the output head outside the model's forward: DDP must still average its gradient and
    FSDP must still have its parameters gathered. Every layout ends where whole logits end."""
    one, two = runs
    expected = one.history("per_token")
    for name, launch in (("one process", one), ("DDP", two), ("FSDP", fsdp)):
        for rank in range(len(launch.ranks)):
            got = launch.history("chunked", rank)
            for key in ("train_loss", "grad_norm", "val_loss"):
                gap = _relative_gap(_column(expected, key), _column(got, key))
                assert gap < LOSS_RTOL, f"{name} rank {rank}: chunked {key} differs by {gap:.2e}"
            gap = np.abs(
                launch.params("chunked", "returned", rank) - one.params("per_token", "returned")
            ).max()
            assert gap < PARAM_ATOL, f"{name} rank {rank}: chunked parameters differ by {gap:.2e}"
