"""What the search tests share: a space or recipe file written from an indented literal, and a study on a
journal file with short heartbeats (so an abandoned trial is seen within seconds)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna

from peaufine.drivers.search.study import open_storage


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def journal_study(path: Path, sampler: optuna.samplers.BaseSampler, **kwargs) -> optuna.Study:
    storage = open_storage(path.parent, str(path), heartbeat=1.0, grace=2.0)
    return optuna.create_study(storage=storage, study_name="t", sampler=sampler, **kwargs)
