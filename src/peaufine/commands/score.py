"""`peaufine score`: prompt + response records scored by a reward model, one number each (higher is
better), as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from peaufine.data.prompts import load_scoring_records
from peaufine.methods.reward import RewardScorer


def score_records(
    model: Path, data: Path, prompt_field: str, response_field: str, max_length: int | None
) -> tuple[list[str], list[float]]:
    """Each record of `data` with its score, as JSON lines, and the scores."""
    records = load_scoring_records(data, prompt_field, response_field)
    scorer = RewardScorer.load(model, max_length=max_length)
    scores = scorer.score([r[0] for r in records], [r[1] for r in records])
    lines = [
        json.dumps({prompt_field: p, response_field: r, "score": s})
        for (p, r), s in zip(records, scores, strict=True)
    ]
    return lines, scores
