"""The machinery the side-by-side benchmarks share: process and thread setup, each side's run in a process
of its own, alternating repetitions and their paired ratios, the tiny Llama both sides load, table cells.

Scripts import it as `harness`: run as `python benchmarks/x.py`, their folder is first on sys.path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIDES = ("trl", "peaufine")  # the order each repetition runs them in: the peer first
LOG_EVERY = 10  # TRL's logging_steps default
# Llama at the baby-GPT scale of the other benchmarks; the vocabulary is a BPE trained on each one's data.
TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}


# -- this process and the ones it starts ------------------------------------------------------------
def limit_threads(threads: int) -> None:
    """Pin this process, and every process it starts, to `threads` torch / OpenMP / MKL threads, with the
    Hugging Face libraries offline, without progress bars or a tokenizer thread pool. OpenMP reads its
    variable once, when torch starts: call this before the first `import torch`."""
    os.environ.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' loading bars
        }
    )
    import torch

    torch.set_num_threads(threads)


def worker_env(threads: int) -> dict[str, str]:
    """The environment of one side's training process: `threads` threads from its start, offline, quiet."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),  # read once, when torch starts: it must be set before
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",  # TRL's reference-pass bar
    }


def skip_without_trl() -> bool:
    """True, after a SKIP line, when TRL (the peer) is not installed."""
    if importlib.util.find_spec("trl") is not None:
        return False
    print("SKIP: trl is not installed (pip install 'peaufine[bench]'); TRL is the peer of this benchmark")
    return True


def pretrained_minilm() -> Path | None:
    """The pretrained MiniLM-L6 the classifier benchmarks start from, with transformers' expected reports
    silenced; None, after a SKIP line saying why, when it is not installed."""
    import transformers

    from peaufine.errors import ModelError
    from peaufine.models.build import minilm_path

    transformers.logging.set_verbosity_error()  # the "classifier.* newly initialised" report, expected
    transformers.logging.disable_progress_bar()
    try:
        return minilm_path()
    except ModelError as exc:
        print(f"SKIP: {exc}")
        return None


@contextlib.contextmanager
def work_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """`keep` (created if need be), or a temporary folder removed afterwards: the runs' models and logs."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def library_versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- one side's run, in a process of its own ---------------------------------------------------------
def run_worker(script: str | Path, side: str, rep: int, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`python script --worker job.json` for `side`'s repetition `rep`, its output in run_dir/log.txt, so
    that its peak memory is its own. `job` holds what the side needs, with its "seed" and "threads";
    returns what the side returned, with `process_s` (the whole process's wall time) and `seed`."""
    job = {**job, "side": side, "result_file": str(run_dir / "result.json")}
    job_file = run_dir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    log = run_dir / "log.txt"
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--worker", str(job_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=worker_env(job["threads"]),
            cwd=REPO,
        )
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the {side} run {rep + 1} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(Path(job["result_file"]).read_text(encoding="utf-8"))
    result["process_s"] = time.perf_counter() - start
    result["seed"] = job["seed"]
    return result


def serve_worker(job_path: Path, sides: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> int:
    """The worker's end of run_worker: the job's side trains, its result goes to the job's result file."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    result = sides[job["side"]](job)
    Path(job["result_file"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


def alternate(
    reps: int, run: Callable[[str, int], dict[str, Any]], describe: Callable[[dict[str, Any]], str]
) -> dict[str, list[dict[str, Any]]]:
    """`reps` repetitions, each running TRL then peaufine (`run(side, rep)`), so that a slow spell of the
    machine falls on both; one progress line per run on stderr. Returns each side's runs in order."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for rep in range(reps):
        for side in SIDES:
            result = run(side, rep)
            runs[side].append(result)
            print(f"  repetition {rep + 1}/{reps} {side:>8}: {describe(result)}", file=sys.stderr)
    return runs


# -- what the workers report, read the same way for both sides ---------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def digest(rows: list[Any]) -> str:
    """sha256 of `rows` as JSON: equal digests, the same tokens in the same order."""
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def targets_of(mask: list[bool] | list[int]) -> list[int]:
    """The positions a mask marks as targets; position 0 is never one (nothing predicts it)."""
    return [t for t in range(1, len(mask)) if mask[t]]


def optimizer_groups(optimizer: Any, model: Any) -> tuple[list[str], dict[str, Any]]:
    """Names of the decayed parameters and the AdamW settings an optimizer holds, read the same way
    for both sides."""
    names = {id(p): n for n, p in model.named_parameters()}
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    decayed = sorted(names[id(p)] for g in inner.param_groups if g["weight_decay"] > 0 for p in g["params"])
    group = inner.param_groups[0]
    settings = {
        "class": type(inner).__name__,
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "weight_decay": max(g["weight_decay"] for g in inner.param_groups),
        "fused": bool(group.get("fused")),
        "foreach": group.get("foreach"),
    }
    return decayed, settings


def steady_rate(run: dict[str, Any], skip: int, drop_last: bool = False) -> dict[str, float]:
    """Tokens/s and steps/s of steps skip+1 .. N (N-1 with `drop_last`), from the end of step `skip` to
    the end of the last step counted: the first steps allocate and warm up, so they are left out."""
    ends, tokens = run["step_ends"], run["step_tokens"]
    last = len(ends) - 1 if drop_last else len(ends)
    seconds = ends[last - 1] - ends[skip - 1]
    return {"tokens_per_s": sum(tokens[skip:last]) / seconds, "steps_per_s": (last - skip) / seconds}


def logged_loss(run: dict[str, Any], step: int) -> float | None:
    """The training loss a side logged at `step` (the mean over its logging window), if it logged there."""
    return next((loss for s, loss in run["train_log"] if s == step), None)


def paired_ratios(
    runs: dict[str, list[dict[str, Any]]], value: Callable[[dict[str, Any]], float]
) -> list[float]:
    """peaufine's `value` over TRL's, repetition by repetition (the two ran back to back)."""
    return [value(o) / value(t) for t, o in zip(runs["trl"], runs["peaufine"], strict=True)]


def paired_differences(
    runs: dict[str, list[dict[str, Any]]], value: Callable[[dict[str, Any]], float]
) -> list[float]:
    """peaufine's `value` minus TRL's, repetition by repetition."""
    return [value(o) - value(t) for t, o in zip(runs["trl"], runs["peaufine"], strict=True)]


def lr_gaps(runs: dict[str, list[dict[str, Any]]]) -> list[float]:
    """|TRL's lr - peaufine's| at every step of the first repetition: the schedules, checked equal."""
    return [abs(a - b) for a, b in zip(runs["trl"][0]["lrs"], runs["peaufine"][0]["lrs"], strict=True)]


# -- the peer's side ---------------------------------------------------------------------------------
def trl_training_args(job: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments every side-by-side sets on TRL's config besides its method's: the job's AdamW
    settings and seed, fp32 on the CPU, TRL's default logging window, nothing saved, evaluated or shown."""
    return {
        "weight_decay": job["weight_decay"],
        "adam_beta1": job["betas"][0],
        "adam_beta2": job["betas"][1],
        "adam_epsilon": job["eps"],
        "max_grad_norm": job["grad_clip"],
        # CPU settings (NOTES.md): TRL's configs turn bf16 and gradient checkpointing on by default.
        "bf16": False,
        "fp16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "dataloader_pin_memory": False,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": LOG_EVERY,
        "disable_tqdm": True,
        "seed": job["seed"],
        "model_init_kwargs": {"dtype": "float32"},
    }


def trl_step_clock() -> Any:
    """A TrainerCallback that notes the start of training (time and peak memory), the lr each optimiser step
    used and the wall time at each step's end; with its `trainer` set, also TRL's own running count of
    non-padding tokens (`_total_train_tokens`, the attention masks summed) at each step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.start = 0.0
            self.rss_before = 0.0
            self.ends: list[float] = []
            self.tokens_seen: list[int] = []
            self.lrs: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.rss_before = maxrss_mb()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.lrs.append(kwargs["optimizer"].param_groups[0]["lr"])  # before the scheduler steps

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())
            if self.trainer is not None:
                self.tokens_seen.append(int(self.trainer._total_train_tokens))

        def step_tokens(self) -> list[int]:
            """Non-padding tokens of each step: the differences of TRL's running count."""
            return [b - a for a, b in zip([0, *self.tokens_seen], self.tokens_seen, strict=False)]

    return StepClock()


# -- the model both sides start from -----------------------------------------------------------------
def save_tiny_llama(
    tokenizer: Any, max_positions: int, seed: int, folder: Path, stop_ids: list[int] | None = None
) -> int:
    """A TINY_LLAMA with random weights from `seed` over `tokenizer`'s vocabulary, saved with the tokenizer
    in `folder`, where both sides load it from; `stop_ids`, the tokens its generation stops at (default
    the tokenizer's EOS). Returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **TINY_LLAMA,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if stop_ids is not None:
        model.generation_config.eos_token_id = stop_ids
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# -- the table --------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str = ",.0f") -> str:
    """A figure for the table; '-' for one that was not measured (None, NaN or infinite)."""
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


@dataclass
class ComparisonTable:
    """Rows of a side-by-side table: a label, TRL's figure, peaufine's, then their ratio or difference."""

    trl: dict[str, Any]  # TRL's summary in the report
    ours: dict[str, Any]  # peaufine's
    label_width: int = 44
    ratio_width: int = 12

    def row(self, label: str, trl: str, ours: str, ratio: str = "") -> str:
        return f"{label:<{self.label_width}}{trl:>14}{ours:>14}{ratio:>{self.ratio_width}}"

    def pair(
        self, label: str, trl: float | None, ours: float | None, spec: str = ",.0f", ratio: str = ""
    ) -> str:
        return self.row(label, fmt(trl, spec), fmt(ours, spec), ratio)

    def figure(self, label: str, key: str, spec: str = ",.0f", ratio: str = "") -> str:
        """Both sides' `key` in their summaries."""
        return self.pair(label, self.trl[key], self.ours[key], spec, ratio)
