"""Preference pairs for the reward and dpo stages: gathered (the world's annotator or the user's files),
split by prompt, tokenized into the run's data/ folder, and read back."""

# The world's rankings come from its generator playing the annotator: for every question about a
# fact, a concise correct answer > a rambling correct one > a type-consistent wrong one > an
# off-topic one. Pairs are grouped by prompt (the question), as for any preference data: validation
# questions are never seen in training, though their facts may be, asked another way. The world's
# held-out facts (never asked during fine-tuning, nor in any training pair) give a third set: there,
# telling a right answer from a wrong one takes knowledge the model brought from pretraining.

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import Example
from peaufine.data.folds import recipe_fold
from peaufine.data.pairs import PairBatches, PairExample, encode_pairs
from peaufine.data.preferences import load_preference_pairs, ranking_pairs, split_pairs_by_prompt
from peaufine.data.token_cache import TokenCache, digest, texts_digest, tokenizer_digest
from peaufine.data.world import copy_world, source_world
from peaufine.data.world_preferences import preference_rankings
from peaufine.errors import RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peaufine.data.preferences import PreferencePair
    from peaufine.data.world import World
    from peaufine.engine.track import Tracker
    from peaufine.models.build import ModelSource
    from peaufine.recipe import Recipe

SPLITS = ("train", "validation", "heldout")


@dataclass
class PreferenceData:
    train: list[PreferencePair]
    validation: list[PreferencePair]
    heldout: list[PreferencePair] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)


def world_pairs(world: World, split: str, expand: str, candidate_sets: int = 1) -> list[PreferencePair]:
    """The annotator's rankings of candidate answers to the questions of `split`, as weighted pairs."""

    pairs: list[PreferencePair] = []
    for ranking in preference_rankings(world, split, candidate_sets=candidate_sets):
        pairs += ranking_pairs(
            [{"role": "user", "content": ranking.question}],
            list(ranking.responses),
            expand=expand,
            group=ranking.question,
            kinds=list(ranking.kinds),
            source=f"world seed {world.seed}, {split} split, fact {ranking.fact_id}",
        )
    return pairs


def gather_pairs(recipe: Recipe, source: ModelSource) -> PreferenceData:
    """Train / validation (split by prompt) / held-out pairs: the world's, or from data.source files."""

    data = recipe.data
    if data.source == "world":
        world = source_world(source)
        if world is None:
            raise RecipeError(
                "data.source: 'world' learns from the synthetic world's rankings, which needs "
                "model.source to be a run trained on the world (it has a world/ folder)"
            )
        sets = data.world.candidate_sets
        train, validation = split_pairs_by_prompt(
            world_pairs(world, "qa_train", data.rankings, sets),
            data.validation_fraction,
            recipe.train.seed,
            recipe_fold(data),
        )
        return PreferenceData(train, validation, world_pairs(world, "qa_heldout", data.rankings, sets))
    if data.format not in ("auto", "pairs", "ranking", "hh"):
        raise RecipeError(f"data.format: {data.format} holds no preferences; use pairs, ranking, hh or auto")
    pairs, report = load_preference_pairs(
        data.source,
        format=data.format,
        fields=data.fields,
        rankings=data.rankings,
        policy=data.anomalies.model_dump(),
    )
    train, validation = split_pairs_by_prompt(
        pairs, data.validation_fraction, recipe.train.seed, recipe_fold(data)
    )
    return PreferenceData(train, validation, anomalies=dict(report.counts))


def write_pairs(path: Path, pairs: list[PairExample], originals: list[PreferencePair] | None = None) -> None:
    """Tokenized pairs as JSON lines (with the texts when given, for evaluation by generation)."""
    lines = []
    for pair in pairs:
        row: dict[str, Any] = {
            "chosen": pair.chosen.input_ids,
            "chosen_mask": pair.chosen.target_mask,
            "rejected": pair.rejected.input_ids,
            "rejected_mask": pair.rejected.target_mask,
            "weight": pair.weight,
            "tie": pair.tie,
            "kind": pair.kind,
        }
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    if originals is not None:
        texts = path.with_name(path.name.replace(".pairs.jsonl", ".texts.jsonl"))
        texts.write_text(
            "".join(
                json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "kind": p.kind})
                + "\n"
                for p in originals
            ),
            encoding="utf-8",
        )


def read_pairs(path: Path) -> list[PairExample]:

    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line:
            continue
        row = json.loads(line)
        out.append(
            PairExample(
                Example(row["chosen"], row["chosen_mask"]),
                Example(row["rejected"], row["rejected_mask"]),
                row["weight"],
                row["tie"],
                row["kind"],
            )
        )
    return out


def pair_dataset(data_dir: Path, split: str, pad_id: int) -> PairBatches | None:
    """The tokenized pairs of `split` in a run's data folder, or None when it has none."""

    path = data_dir / f"{split}.pairs.jsonl"
    pairs = read_pairs(path) if path.is_file() else []
    return PairBatches(pairs, pad_id) if pairs else None


def read_texts(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def prepare_pairs(
    recipe: Recipe,
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase,
    staging: Path,
    *,
    skip_ties: bool,
    scored: bool,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Gather, split and tokenize the pairs into staging/data; returns counts for prepared.json.

    `scored`: encode for a reward model (an encoder reads [CLS] prompt [SEP] response [SEP]). With
    data.cache_dir, the tokenized files and their counts come from the cache when the tokenizer's files,
    the pairs of every split and the settings that shape their tokens all match an entry.
    """

    data = gather_pairs(recipe, source)
    if not data.train:
        raise RecipeError("data.source: no training pairs")
    out = staging / "data"
    out.mkdir(exist_ok=True)
    settings = {
        "max_length": recipe.data.max_length,
        "too_long": recipe.data.anomalies.too_long,
        "skip_ties": skip_ties,
        "scored": scored,
    }
    cache = TokenCache(recipe.data.cache_dir)

    def make(folder: Path) -> None:
        counts = encode_splits(data, tokenizer, folder, **settings)
        (folder / "counts.json").write_text(json.dumps(counts), encoding="utf-8")

    if cache.enabled:
        key = digest(tokenizer_digest(tokenizer), settings, pairs_digest(data))
        with tempfile.TemporaryDirectory() as tmp:
            reused = cache.files("pairs", key, make, Path(tmp))
            counts = json.loads((Path(tmp) / "counts.json").read_text(encoding="utf-8"))
            for path in sorted(Path(tmp).glob("*.jsonl")):
                shutil.copyfile(path, out / path.name)
        if reused and tracker is not None:
            tracker.say(f"tokens: preference pairs reused from the cache in {recipe.data.cache_dir}")
    else:
        counts = encode_splits(data, tokenizer, out, **settings)
    copy_world(source, staging)
    return {"pairs": counts, "anomalies": data.anomalies}


# How the log names each kind of pair that preparation can skip (data.anomalies with the skip policy).
SKIPPED_NAMES = {"same_response": "identical pairs", "short_ranking": "short rankings"}


def skipped_summary(prepared: dict[str, Any], *, ties: bool) -> str:
    """What preparation dropped, for the log line: the training ties (when the stage skips ties) and
    every anomaly skipped by the data.anomalies policy, counted as eval.json counts them."""
    parts = [f"{prepared['pairs']['train']['ties_skipped']:,} ties skipped"] if ties else []
    for kind, count in sorted(prepared.get("anomalies", {}).items()):
        if count:
            parts.append(f"{count:,} {SKIPPED_NAMES.get(kind, kind)} skipped (data.anomalies.{kind})")
    return ", ".join(parts)


def pairs_digest(data: PreferenceData) -> str:
    """SHA-256 of everything of the pairs that their tokens and counts depend on, split by split in
    order; not `source`, which only names a pair in an error (and an error leaves no entry)."""

    def rows(pairs: list[PreferencePair]) -> list[str]:
        return [
            json.dumps(
                [p.prompt, p.chosen, p.rejected, p.weight, p.weight_without_ties, p.tie, p.group, p.kind]
            )
            for p in pairs
        ]

    return texts_digest(*([rows(getattr(data, name))] for name in SPLITS))  # one batch per split


def encode_splits(
    data: PreferenceData,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    *,
    max_length: int,
    too_long: str,
    skip_ties: bool,
    scored: bool,
) -> dict[str, Any]:
    """Tokenize each split into folder/{split}.pairs.jsonl (and .texts.jsonl); returns their counts."""

    counts: dict[str, Any] = {}
    for name in SPLITS:
        originals = getattr(data, name)
        if not originals and name == "heldout":
            continue
        examples, report = encode_pairs(
            tokenizer, originals, max_length=max_length, too_long=too_long, skip_ties=skip_ties, scored=scored
        )
        write_pairs(folder / f"{name}.pairs.jsonl", examples, [originals[i] for i in report.kept])
        counts[name] = {
            "pairs": len(examples),
            "prompts": len({p.group for p in originals}),
            "ties_skipped": report.skipped_ties,
            "truncated": report.truncated,
            "skipped_too_long": report.skipped_too_long,
        }
    return counts
