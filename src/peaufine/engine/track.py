"""The run's voice: metrics.jsonl (one JSON object per logged step) and the terminal (rich)."""

# Library code never prints; it hands messages to a `Tracker`, which only rank 0 lets through.

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from peaufine.atomic import write_text_atomic
from peaufine.rundir import read_metrics


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricSink(Protocol):
    """Somewhere else a run's metric rows go: TensorBoard, MLflow, a search's pruner.

    `write` gets every row metrics.jsonl gets, in order; it may raise to stop the run (a pruned
    trial). `close` gets the run's final evaluation, flattened to numbers.
    """

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self, summary: dict[str, float]) -> None: ...


# Sinks by the metrics file they follow. The engine only knows a run's metrics.jsonl, so whoever
# opens a run (tracking options) or drives it (a search) attaches sinks to that path.
_SINKS: dict[Path, list[MetricSink]] = {}


def add_sink(metrics_path: Path, sink: MetricSink) -> None:
    _SINKS.setdefault(Path(metrics_path).resolve(), []).append(sink)


def close_sinks(metrics_path: Path, summary: dict[str, float] | None = None) -> None:
    """Close and detach every sink of this run (each is closed even when another fails)."""
    sinks = _SINKS.pop(Path(metrics_path).resolve(), [])
    errors = []
    for sink in sinks:
        try:
            sink.close(summary or {})
        except Exception as exc:  # one broken integration must not keep the others open
            errors.append(exc)
    if errors:
        raise errors[0]


def detach_sinks(metrics_path: Path, kinds: tuple[type, ...] | None = None) -> None:
    """Detach this run's sinks (only those of `kinds`, when given) after a run that did not finish
    (failed, pruned): each sink that can `abort` does (an MLflow run is marked FAILED)."""
    key = Path(metrics_path).resolve()
    sinks = _SINKS.pop(key, [])
    kept = [sink for sink in sinks if kinds is not None and not isinstance(sink, kinds)]
    if kept:
        _SINKS[key] = kept
    for sink in sinks:
        abort = getattr(sink, "abort", None)
        if abort is not None and sink not in kept:
            abort()


class MetricsLog:
    """Appends metric rows to metrics.jsonl and flushes each, so a crash loses at most one row.

    Each row also goes to the sinks attached to this path (see `add_sink`).
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint: they will be logged again."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path, torn_tail=True) if r.get("step", 0) <= step]
        # atomically: a kill here leaves the old rows, and at most a temporary file the run folder
        # code knows for peaufine's (--overwrite removes it)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        for sink in _SINKS.get(self.path.resolve(), []):
            sink.write(row)


class Tracker:
    """Progress bar and messages for one run; silent on every rank but 0 and when `quiet`."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_line = 0

    def say(self, message: str, *, heading: str | None = None) -> None:
        """Print `message` as it is (a path may hold brackets that Rich would read as markup), after
        `heading` in bold when one is given."""
        if self.enabled:
            self.console.print(Text.assemble((heading, "bold"), " ", message) if heading else Text(message))

    def warn(self, message: str) -> None:
        if self.enabled:
            self.console.print(Text.assemble(("warning:", "bold yellow"), " ", message))

    def start(self, total: int, done: int, description: str) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=done, status="")
        self._last_line = done // max(1, total // 10)

    def update(self, step: int, status: str) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=step, status=status)
        # Without a terminal the bar is drawn only at the end; a log (CI, nohup) gets a line
        # every tenth of the run instead.
        total = self._progress.tasks[0].total or 0
        tenth = max(1, int(total) // 10)
        if not self.console.is_terminal and step // tenth > self._last_line:
            self._last_line = step // tenth
            self._progress.console.print(f"step {step:,}/{int(total):,}  {status}", highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
