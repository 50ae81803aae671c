"""Prompt records for RL (a prompt plus the columns its reward functions read) and the prompt-response
records `peaufine score` scores, normalised from whatever data/read.py reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peaufine.data.anomalies import Anomaly
from peaufine.data.preferences import Prompt
from peaufine.data.read import read_records, record_paths
from peaufine.errors import DataError


def load_prompt_records(source: str | Path | Iterable[str | Path], prompt_field: str) -> list[dict[str, Any]]:
    """Every record of `source` with its prompt (text or chat messages, under `prompt_field`) as chat
    messages in "prompt"; every other field is kept, a column for the reward functions."""
    records = []
    for item in read_records(record_paths(source)):
        if isinstance(item, Anomaly):
            raise item.error()
        where, raw = item
        prompt = raw.get(prompt_field)
        if isinstance(prompt, str) and prompt.strip():
            prompt = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
            raise DataError(
                f"no prompt: expected text or chat messages in {prompt_field!r}",
                path=where.path,
                line=where.line,
                field=prompt_field,
                hint="name the field with data.fields.prompt",
            )
        records.append({**raw, "prompt": prompt})
    if not records:
        raise DataError("no prompts", path=str(source))
    return records


def load_scoring_records(path: Path, prompt_field: str, response_field: str) -> list[tuple[Prompt, str]]:
    """(prompt, response) from each record of a JSON lines / JSON / CSV / Parquet file; a record
    without either field is an error naming its line."""
    out: list[tuple[Prompt, str]] = []
    for item in read_records(record_paths(path)):
        if isinstance(item, Anomaly):
            raise item.error()
        where, raw = item
        prompt, response = raw.get(prompt_field), raw.get(response_field)
        for name, value in ((prompt_field, prompt), (response_field, response)):
            if not isinstance(value, (str, list)) or (name == response_field and not isinstance(value, str)):
                raise DataError(
                    f"field {name!r} is missing or not text (got {type(value).__name__})",
                    path=where.path,
                    line=where.line,
                    field=name,
                    hint="use --prompt-field / --response-field to name your fields",
                )
        out.append((prompt, response))
    if not out:
        raise DataError("no records to score", path=path)
    return out
