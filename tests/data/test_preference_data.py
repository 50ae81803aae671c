"""Tests for peaufine.data.preference_data: the pairs a stage writes to its data folder weigh one unit per
ranking over the pairs that stage keeps, whether it drops tied pairs (dpo) or keeps them (reward).

Rankings are written into tmp_path; the tokenizer is a tiny byte-level BPE trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.data.pairs import encode_pairs
from peaufine.data.preference_data import PreferenceData, encode_splits, read_pairs
from peaufine.data.preferences import load_preference_pairs, prompt_key, ranking_pairs
from peaufine.models.tokenizer import train_bpe

RANKINGS = [
    {"prompt": "Name a colour.", "responses": ["Blue", "Bleu", "Blurple"]},  # no tie
    {"prompt": "Count to two.", "responses": ["1, 2", "2, 1", "one", "no"], "ranks": [1, 2, 2, 4]},
    {"prompt": "Say hi.", "responses": ["hi", "hello", "hey", "yo"], "ranks": [1, 1, 2, 2]},
    {"prompt": "Say no.", "responses": ["no", "nope", "nah"], "ranks": [1, 1, 1]},  # all tied
]


@pytest.fixture(scope="module")
def bpe():
    words = [r["prompt"] + " " + " ".join(r["responses"]) for r in RANKINGS] * 10
    return train_bpe(words, vocab_size=300)


def ranking_file(tmp_path: Path) -> Path:
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RANKINGS), encoding="utf-8")
    return path


def weight_per_prompt(folder: Path, split: str = "train") -> dict[str, float]:
    """Each prompt's summed pair weight in a stage's written pairs (texts and pairs are line-aligned)."""
    pairs = read_pairs(folder / f"{split}.pairs.jsonl")
    texts = [json.loads(line) for line in (folder / f"{split}.texts.jsonl").read_text().splitlines()]
    totals: dict[str, float] = {}
    for pair, text in zip(pairs, texts, strict=True):
        key = text["prompt"][-1]["content"]
        totals[key] = totals.get(key, 0.0) + pair.weight
    return totals


@pytest.mark.parametrize("rankings", ["all", "adjacent"])
@pytest.mark.parametrize("skip_ties", [True, False], ids=["drops-ties(dpo)", "keeps-ties(reward)"])
def test_each_ranking_weighs_one_over_the_pairs_the_stage_keeps(
    bpe, tmp_path: Path, rankings: str, skip_ties: bool
) -> None:
    pairs, _ = load_preference_pairs(ranking_file(tmp_path), rankings=rankings)
    data = PreferenceData(train=pairs, validation=[])
    counts = encode_splits(
        data, bpe, tmp_path, max_length=64, too_long="error", skip_ties=skip_ties, scored=False
    )
    totals = weight_per_prompt(tmp_path)
    # a ranking whose pairs are all tied has none left when ties are dropped; every other weighs 1
    expected = {r["prompt"] for r in RANKINGS} - ({"Say no."} if skip_ties else set())
    assert set(totals) == expected
    assert totals == pytest.approx(dict.fromkeys(expected, 1.0))
    ties = sum(p.tie for p in pairs)
    assert counts["train"]["ties_skipped"] == (ties if skip_ties else 0)
    assert counts["train"]["pairs"] == len(pairs) - (ties if skip_ties else 0)


@pytest.mark.parametrize("skip_ties", [True, False])
def test_a_ranking_without_ties_weighs_the_same_whether_ties_are_dropped_or_not(bpe, skip_ties: bool) -> None:
    # negative control: with no tie, each of the K(K-1)/2 pairs keeps 1 / K(K-1)/2
    pairs = ranking_pairs([{"role": "user", "content": "Q"}], ["a", "b", "c", "d"], group="Q")
    examples, _ = encode_pairs(bpe, pairs, max_length=64, skip_ties=skip_ties)
    assert [e.weight for e in examples] == pytest.approx([1 / 6] * 6)


@pytest.mark.parametrize(("ranks", "kept"), [([1, 2, 2, 3], 5), ([1, 1, 2, 2], 4), ([1, 2, 3, 3], 5)])
def test_the_kept_pairs_of_a_ranking_with_ties_share_one_unit(bpe, ranks: list[int], kept: int) -> None:
    prompt = [{"role": "user", "content": "Q"}]
    pairs = ranking_pairs(prompt, ["a", "b", "c", "d"], ranks, group=prompt_key(prompt))
    dropped, _ = encode_pairs(bpe, pairs, max_length=64, skip_ties=True)
    assert [e.weight for e in dropped] == pytest.approx([1 / kept] * kept)
    everything, _ = encode_pairs(bpe, pairs, max_length=64, skip_ties=False)
    assert [e.weight for e in everything] == pytest.approx([1 / 6] * 6)
