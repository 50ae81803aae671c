"""Worker of test_distributed.py: trains a tiny Llama for a few steps with `fit()` and writes what it saw.

Run it with plain python (one process) or under torchrun (several); each rank writes rank<R>.json and,
per objective, its parameters at the last step and as fit() returned them (.npy) into OUT_DIR.
The engine's own files (metrics, checkpoints) go to RUN_ROOT/<objective>. With `--strategy fsdp` the
model is sharded (FSDP2; `--cpu-offload` adds CPUOffloadPolicy); the stage's model is whole only once
fit() returns, so only those parameters are written.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from peaufine.data.batching import Batch, Example, PaddedExamples
from peaufine.engine.fit import make_loop
from peaufine.engine.runtime import make_runtime
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EvalBlock, TrainBlock

VOCAB = 50
PAD_ID = 0
N_TRAIN = 32
N_VAL = 10


def make_examples(n: int, seed: int, tag_first_token: bool) -> list[Example]:
    """Lengths 3..20; every other example has a prompt whose tokens are not targets.

    With `tag_first_token`, example i starts with token i + 1, so a batch tells which examples it holds.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(3, 21))
        ids = [int(t) for t in rng.integers(1, VOCAB, size=length)]
        if tag_first_token:
            ids[0] = i + 1
        mask = None
        if i % 2:
            prompt = int(rng.integers(1, length - 1))  # at least two targets stay
            mask = [t >= prompt for t in range(length)]
        examples.append(Example(ids, mask))
    return examples


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(0)  # every process builds the same weights
    return LlamaForCausalLM(config)


@dataclass
class SeenExamples:
    """Wraps an objective and records which examples (by their tagged first token) each train forward saw."""

    inner: Any
    seen: list[list[int]] = field(default_factory=list)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        if torch.is_grad_enabled():  # evaluation runs under no_grad
            self.seen.append((batch["input_ids"][:, 0] - 1).tolist())
        return self.inner.loss_sum(model, batch)

    def count(self, batch: Batch) -> torch.Tensor:
        return self.inner.count(batch)


@dataclass(frozen=True)
class MicroBatchMeanLoss:
    """A control, not a method: the classic accumulation bug of averaging each micro-batch on its own.

    Each micro-batch's mean loss counts as one unit, so the engine averages micro-batch means; on
    variable-length data that depends on how the global batch is cut into micro-batches and processes.
    """

    inner: NextTokenLoss = field(default_factory=NextTokenLoss)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return self.inner.loss_sum(model, batch) / self.inner.count(batch)

    def count(self, batch: Batch) -> torch.Tensor:
        return torch.ones((), dtype=torch.long)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


OBJECTIVES = {
    "per_token": NextTokenLoss,
    "per_micro_batch": MicroBatchMeanLoss,
    # the same loss, its targets through the output head 5 at a time (train.loss_chunk_tokens)
    "chunked": lambda: NextTokenLoss(chunk_tokens=5),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-root", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--cpu-offload", action="store_true", help="fsdp: CPUOffloadPolicy")
    args = parser.parse_args()

    runtime = make_runtime(TrainBlock(device="cpu", precision="fp32"))
    record: dict[str, Any] = {
        "rank": runtime.rank,
        "world_size": runtime.world_size,
        "dist_initialized": dist.is_initialized(),
        "dist_world_size": dist.get_world_size() if dist.is_initialized() else None,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "objectives": {},
    }
    train_set = PaddedExamples(make_examples(N_TRAIN, seed=1, tag_first_token=True), PAD_ID)
    val_set = PaddedExamples(make_examples(N_VAL, seed=2, tag_first_token=False), PAD_ID)
    train = TrainBlock(
        max_steps=args.steps,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        lr=1e-2,
        warmup_steps=0,
        log_every=1,
        device="cpu",
        precision="fp32",
        distributed=args.strategy,
        fsdp_cpu_offload=args.cpu_offload,
    )
    evaluation = EvalBlock(every=3)
    for name in args.objectives.split(","):
        objective = SeenExamples(OBJECTIVES[name]())
        model = tiny_llama()
        files = {"returned": f"params-{name}-returned-rank{runtime.rank}.npy"}
        if args.strategy == "ddp":
            files["last_step"] = f"params-{name}-last_step-rank{runtime.rank}.npy"

        def save_last_step(step: int, model: torch.nn.Module = model, files: dict = files) -> None:
            # the weights of the last step, before fit() may restore the best validated ones
            if step == args.steps and "last_step" in files:
                np.save(args.out_dir / files["last_step"], flat_parameters(model))

        # fit(), spelt out, to look at the loop's placement
        loop = make_loop(
            model, objective, train_set, val_set, train, evaluation, runtime, run_dir=args.run_root / name
        )
        trained = list(loop.trained.parameters())
        local = [p.to_local() if hasattr(p, "to_local") else p for p in trained]
        result = loop.run([save_last_step])
        np.save(args.out_dir / files["returned"], flat_parameters(model))
        record["objectives"][name] = {
            "history": result.history,
            "seen": objective.seen,
            "params_files": files,
            "restored_best": result.restored_best,
            "best_step": result.best_step,
            "strategy": loop.placement.strategy,
            "trained_elements": {
                "local": sum(p.numel() for p in local),
                "whole": sum(p.numel() for p in trained),
            },
        }
    (args.out_dir / f"rank{runtime.rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
