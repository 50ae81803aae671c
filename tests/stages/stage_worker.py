"""Worker of test_distributed_stages.py: runs a stage as `peaufine <stage> RECIPE --out OUT --set k=v` does,
under plain python or torchrun, and can also write what the CLI cannot show.

--digests DIR: each rank writes rank<R>.json with its world size and a digest of the parameters of the
model it trained (to check that the processes end with the same weights). --stop-after N: every rank
leaves right after step N (and its checkpoint), like a run that was stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from peaufine.cli import _quiet_libraries
from peaufine.engine import fit as engine
from peaufine.recipe import load_recipe
from peaufine.stages import STAGE_RUNNERS

LOOPS: list[Any] = []


def record_loops() -> None:
    """Keep every TrainingLoop a stage makes: its `model` is the stage's model, trained."""
    init = engine.TrainingLoop.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        LOOPS.append(self)

    engine.TrainingLoop.__init__ = recording  # type: ignore[method-assign]


def digest(model: torch.nn.Module) -> dict[str, Any]:
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
    return {
        "sha256": hashlib.sha256(flat.float().numpy().tobytes()).hexdigest(),
        "elements": flat.numel(),
        "sum": float(flat.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--digests", type=Path)
    args = parser.parse_args()

    _quiet_libraries()
    record_loops()
    recipe = load_recipe(args.recipe, args.sets, stage=args.stage)
    module, function = STAGE_RUNNERS[recipe.stage]
    runner = getattr(importlib.import_module(module), function)
    options: dict[str, Any] = {"resume": args.resume}
    if args.stop_after is not None:

        def stop(step: int) -> None:
            if step == args.stop_after:
                os._exit(0)  # no cleanup: the checkpoint of this step is all that is left

        options["hooks"] = [stop]
    runner(recipe, args.out, **options)
    if args.digests is not None:
        loop = LOOPS[-1]
        runtime = loop.runtime
        args.digests.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": runtime.rank,
            "world_size": runtime.world_size,
            "strategy": loop.placement.strategy,
            **digest(loop.model),
        }
        (args.digests / f"rank{runtime.rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
