"""Bad records: what one is (a located anomaly of a kind), the one policy that turns it into an error
or a skipped record, and the report of what was skipped, shared by every loader of data/."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from peaufine.errors import DataError

POLICY_VALUES = ("error", "skip")

# What the user can do about each kind of bad record: fix it, or let the policy skip it.
ANOMALY_HINTS: dict[str, str] = {
    "not_utf8": "re-encode the file as UTF-8, or set data.anomalies.not_utf8: skip",
    "bad_json": "fix the record, or set data.anomalies.bad_json: skip",
    "missing_field": "fix the record or name its fields under data.fields, "
    "or set data.anomalies.missing_field: skip",
    "empty_text": "remove the record, or set data.anomalies.empty_text: skip",
    "unknown_role": "use the roles system, user, assistant, or set data.anomalies.unknown_role: skip",
    "empty_assistant": "give the record an assistant answer, or set data.anomalies.empty_assistant: skip",
    "same_response": "a pair needs two different responses: remove it, "
    "or set data.anomalies.same_response: skip",
    "short_ranking": "rank at least two responses, or set data.anomalies.short_ranking: skip",
    "prompt_mismatch": "make both sides continue the same conversation, "
    "or set data.anomalies.prompt_mismatch: skip",
}


@dataclass(frozen=True)
class Anomaly:
    """One bad record, located; the policy turns it into a DataError or counts it."""

    kind: str
    path: Path
    message: str
    line: int | None = None
    field: str | None = None

    def describe(self) -> str:
        return str(DataError(self.message, path=self.path, line=self.line, field=self.field))

    def error(self, hint: str | None = None) -> DataError:
        return DataError(
            self.message,
            path=self.path,
            line=self.line,
            field=self.field,
            hint=ANOMALY_HINTS.get(self.kind) if hint is None else hint,
        )


@dataclass
class AnomalyReport:
    """What the skip policy dropped, so the run log can say how much input was discarded and why."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def total(self) -> int:
        """Number of records skipped, all kinds together."""
        return sum(self.counts.values())

    def add(self, anomaly: Anomaly) -> None:
        self.counts[anomaly.kind] = self.counts.get(anomaly.kind, 0) + 1
        self.examples.setdefault(anomaly.kind, anomaly.describe())


@dataclass(frozen=True)
class AnomalyPolicy:
    """The action (error or skip) for each anomaly kind one loader knows, and the hint for each."""

    actions: Mapping[str, str]
    hints: Mapping[str, str] = field(default_factory=dict)

    def report(self) -> AnomalyReport:
        """An empty report with a zero count for every kind of this policy."""
        return AnomalyReport(counts=dict.fromkeys(self.actions, 0))

    def handle(self, anomaly: Anomaly, report: AnomalyReport) -> None:
        """Raise the anomaly as a DataError with its kind's hint, or count it in `report` when the
        policy for its kind allows skipping."""
        if self.actions[anomaly.kind] == "error":
            raise anomaly.error(self.hints.get(anomaly.kind, ANOMALY_HINTS.get(anomaly.kind)))
        report.add(anomaly)


def anomaly_policy(
    policy: Mapping[str, str] | None,
    defaults: Mapping[str, str],
    *,
    ignored: Iterable[str] = (),
    hints: Mapping[str, str] | None = None,
) -> AnomalyPolicy:
    """`defaults` (kind -> action) overridden by `policy` (`recipe.data.anomalies` can be passed whole);
    keys in `ignored` belong to another loader and are left alone, any other unknown key is refused."""
    ignored = tuple(ignored)
    actions = dict(defaults)
    for kind, value in (policy or {}).items():
        if kind in ignored:
            continue
        if kind not in defaults:
            raise DataError(
                f"unknown anomaly kind {kind!r} in data.anomalies",
                hint=f"valid kinds: {', '.join((*defaults, *ignored))}",
            )
        if value not in POLICY_VALUES:
            raise DataError(
                f"data.anomalies.{kind} is {value!r}; use error or skip",
                hint=f"valid values: {', '.join(POLICY_VALUES)}",
            )
        actions[kind] = value
    return AnomalyPolicy(actions, dict(hints or {}))


@dataclass(frozen=True)
class Where:
    """Where a record starts: a line for text formats, a record number where lines cannot tell."""

    path: Path
    line: int | None = None
    record: int | None = None

    def __str__(self) -> str:
        parts = [str(self.path)]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record {self.record}")
        return ", ".join(parts)

    def anomaly(self, kind: str, message: str, field: str | None = None) -> Anomaly:
        if self.record is not None:
            message = f"record {self.record}: {message}"
        return Anomaly(kind, self.path, message, line=self.line, field=field)
