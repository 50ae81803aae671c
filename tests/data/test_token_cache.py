"""data.cache_dir: a second preparation with the same inputs trains no tokenizer and tokenizes nothing, yet
writes the same files; any change of input or setting misses; entries appear whole or not at all."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peaufine.data.token_cache import TokenCache, digest, texts_digest
from peaufine.recipe import validate_recipe

# -- the cache itself ------------------------------------------------------------------------------


def writer(calls: list[str], text: str = "tokens"):
    def make(folder: Path) -> None:
        calls.append(text)
        (folder / "a.bin").write_text(text)

    return make


def test_a_second_request_for_a_key_copies_the_entry_without_making_it(tmp_path):
    cache, calls = TokenCache(tmp_path / "cache"), []
    assert cache.files("k", digest("x"), writer(calls), tmp_path / "one") is False
    assert cache.files("k", digest("x"), writer(calls, "other"), tmp_path / "two") is True
    assert calls == ["tokens"]
    assert (tmp_path / "two" / "a.bin").read_text() == "tokens"
    assert cache.files("k", digest("y"), writer(calls, "y"), tmp_path / "three") is False  # a new key


def test_without_a_cache_dir_every_request_makes_its_files_in_place(tmp_path):
    cache, calls = TokenCache(None), []
    for name in ("one", "two"):
        assert cache.files("k", "", writer(calls), tmp_path / name) is False
    assert calls == ["tokens", "tokens"]


def test_a_failed_make_leaves_no_entry_behind(tmp_path):
    cache = TokenCache(tmp_path / "cache")

    def broken(folder: Path) -> None:
        (folder / "a.bin").write_text("half")
        raise ValueError("tokenizer crashed")

    with pytest.raises(ValueError, match="crashed"):
        cache.files("k", digest("x"), broken, tmp_path / "one")
    assert list((tmp_path / "cache").iterdir()) == []
    calls: list[str] = []
    assert cache.files("k", digest("x"), writer(calls), tmp_path / "two") is False and calls


def test_a_concurrent_run_that_publishes_first_wins(tmp_path):
    cache, key = TokenCache(tmp_path / "cache"), digest("x")

    def racing(folder: Path) -> None:
        (folder / "a.bin").write_text("mine")
        other = tmp_path / "cache" / f"k-{key[:32]}"  # the other run renames its entry in meanwhile
        other.mkdir()
        (other / "a.bin").write_text("theirs")

    assert cache.files("k", key, racing, tmp_path / "one") is False
    assert (tmp_path / "one" / "a.bin").read_text() == "theirs"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"k-{key[:32]}"]  # no leftovers


def test_texts_digest_separates_splits_and_texts():
    assert texts_digest([["ab", "c"]]) != texts_digest([["a", "bc"]])
    assert texts_digest([["a"]], [["b"]]) != texts_digest([["a", "b"]], [])
    assert texts_digest([["a"]], [["b"]]) == texts_digest(iter([["a"]]), iter([["b"]]))


# -- pretrain ----------------------------------------------------------------------------------------


class Notes:
    """A tracker that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self.lines.append(message)

    warn = say


def counting(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def corpus(path: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["the", "river", "stone", "north", "light", "green", "house", "small", "early", "winter"]
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(60)))
    return path


def pretrain_recipe(source: Path, cache: Path, **data):
    return validate_recipe(
        {
            "model": {"source": "llama-tiny", "tokenizer": {"kind": "bpe", "vocab_size": 300}},
            "data": {"source": str(source), "block_size": 16, "cache_dir": str(cache), **data},
        }
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pretraining_data_is_tokenized_once_and_reused(tmp_path, monkeypatch):
    import peaufine.stages.pretrain as pretrain

    text = corpus(tmp_path / "corpus.txt")
    trained = counting(monkeypatch, pretrain, "train_bpe")
    tokenized = counting(monkeypatch, pretrain, "tokenize_stream")
    notes = [Notes(), Notes(), Notes()]
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run in runs:
        run.mkdir()

    first = pretrain.prepare(pretrain_recipe(text, tmp_path / "cache"), runs[0], notes[0])
    assert (len(trained), len(tokenized)) == (1, 2)
    second = pretrain.prepare(pretrain_recipe(text, tmp_path / "cache"), runs[1], notes[1])
    assert (len(trained), len(tokenized)) == (1, 2)  # nothing trained or tokenized again
    assert any("reused from the cache" in line for line in notes[1].lines)
    assert not any("reused" in line for line in notes[0].lines)
    assert second == first
    assert files_of(runs[1] / "data") == files_of(runs[0] / "data")
    assert files_of(runs[1] / "tokenizer") == files_of(runs[0] / "tokenizer")

    # the same file with other text, or another split of it: tokenized afresh
    corpus(text, seed=1)
    pretrain.prepare(pretrain_recipe(text, tmp_path / "cache"), runs[2], notes[2])
    assert (len(trained), len(tokenized)) == (2, 4)
    assert files_of(runs[2] / "data") != files_of(runs[0] / "data")
    run3 = tmp_path / "run3"
    run3.mkdir()
    pretrain.prepare(pretrain_recipe(text, tmp_path / "cache", validation_fraction=0.2), run3, Notes())
    assert len(tokenized) == 6


# -- sft ---------------------------------------------------------------------------------------------


def chat_model_dir(root: Path, chars: str = "abcdefghijklmnopqrstuvwxyz ?.0123456789") -> Path:
    """A folder that passes for a Hugging Face model as far as preparing data goes: config and tokenizer."""
    from transformers import LlamaConfig

    from peaufine.models.tokenizer import train_char

    folder = root / "base"
    train_char([chars]).save_pretrained(folder)
    LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        folder
    )
    return folder


def sft_recipe(model_dir: Path, data: Path, cache: Path, max_length: int = 64):
    return validate_recipe(
        {
            "stage": "sft",
            "model": {"source": str(model_dir)},
            "data": {"source": str(data), "max_length": max_length, "cache_dir": str(cache)},
        }
    )


def test_fine_tuning_examples_are_tokenized_once_and_reused(tmp_path, monkeypatch):
    import peaufine.stages.sft as sft

    model_dir = chat_model_dir(tmp_path)
    data = tmp_path / "task.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"what is {i} plus {i}?", "completion": f"{2 * i}."}) + "\n"
            for i in range(30)
        )
    )
    calls = counting(monkeypatch, sft, "tokenize_records")
    runs = []
    for k, max_length in enumerate([64, 64, 48]):
        run = tmp_path / f"run{k}"
        run.mkdir()
        notes = Notes()
        sft.prepare(sft_recipe(model_dir, data, tmp_path / "cache", max_length), run, notes)
        runs.append((run, notes, len(calls)))
    (first, _, after_first), (second, notes, after_second), (_, _, after_third) = runs
    assert after_first == 3  # train, validation, held-out
    assert after_second == 3  # all three from the cache
    assert sum("reused from the cache" in line for line in notes.lines) == 3
    assert files_of(second / "data") == files_of(first / "data")
    assert after_third == 6  # another max_length: tokenized again


def forbid_tokenizing(monkeypatch) -> None:
    """From here on, turning any text into ids fails the test."""
    from transformers import PreTrainedTokenizerBase

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized, though the cache holds the entry")

    for name in ("__call__", "encode", "apply_chat_template"):
        monkeypatch.setattr(PreTrainedTokenizerBase, name, refuse)


def entries(cache: Path, kind: str) -> list[str]:
    return sorted(p.name for p in cache.glob(f"{kind}-*"))


# -- sft: the general text (forgetting) and replay ---------------------------------------------------


def test_general_text_is_tokenized_once_per_tokenizer_and_texts(tmp_path, monkeypatch):
    from peaufine.data.corpus import tokenize_general
    from peaufine.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(chat_model_dir(tmp_path)))
    cache = TokenCache(tmp_path / "cache")
    text = corpus(tmp_path / "general.txt")
    plain = tokenize_general(tokenizer, str(text), tmp_path / "plain.bin")  # cache off
    assert not (tmp_path / "cache").exists()
    first = tokenize_general(tokenizer, str(text), tmp_path / "first.bin", cache=cache, tracker=Notes())
    assert first.read_bytes() == plain.read_bytes()

    # the same texts under another name, written later: nothing tokenized, the same stream
    copy = tmp_path / "copy.txt"
    copy.write_text(text.read_text())
    with monkeypatch.context() as patch:
        forbid_tokenizing(patch)
        with pytest.raises(AssertionError, match="tokenized"):
            tokenizer("forbidden")
        notes = Notes()
        second = tokenize_general(tokenizer, str(copy), tmp_path / "replay.bin", cache=cache, tracker=notes)
    assert second.read_bytes() == plain.read_bytes()
    assert notes.lines == [f"tokens: general text {copy} reused from the cache in {tmp_path / 'cache'}"]
    assert len(entries(tmp_path / "cache", "general")) == 1

    # one word changed, or another tokenizer: a new entry each
    copy.write_text(text.read_text().replace("river", "rivet", 1))
    changed = tokenize_general(tokenizer, str(copy), tmp_path / "changed.bin", cache=cache)
    assert changed.read_bytes() != plain.read_bytes()
    other = load_tokenizer(str(chat_model_dir(tmp_path / "other", chars="abcdefghijklmnopqrstuvwxyz .")))
    tokenize_general(other, str(text), tmp_path / "other.bin", cache=cache)
    assert len(entries(tmp_path / "cache", "general")) == 3


def sft_general_recipe(model_dir: Path, data: Path, general: Path, replay: Path, cache: Path | None):
    return validate_recipe(
        {
            "stage": "sft",
            "model": {"source": str(model_dir)},
            "data": {
                "source": str(data),
                "max_length": 64,
                "cache_dir": None if cache is None else str(cache),
                "replay": {"source": str(replay), "ratio": 0.25},
            },
            "eval": {"forgetting": {"general": str(general)}},
        }
    )


def test_sft_general_and_replay_streams_come_from_the_cache(tmp_path, monkeypatch):
    import peaufine.stages.sft as sft

    model_dir = chat_model_dir(tmp_path)
    data = tmp_path / "task.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"what is {i} plus {i}?", "completion": f"{2 * i}."}) + "\n"
            for i in range(20)
        )
    )
    general, replay = corpus(tmp_path / "general.txt"), corpus(tmp_path / "replay.txt", seed=2)
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    cache = tmp_path / "cache"
    first = sft.prepare(sft_general_recipe(model_dir, data, general, replay, cache), runs[0], Notes())
    assert len(entries(cache, "general")) == 2  # the general text and the replay text
    with monkeypatch.context() as patch:
        forbid_tokenizing(patch)
        notes = Notes()
        second = sft.prepare(sft_general_recipe(model_dir, data, general, replay, cache), runs[1], notes)
    assert second == first
    assert files_of(runs[1] / "data") == files_of(runs[0] / "data")
    reused = [line for line in notes.lines if line.startswith("tokens: general text")]
    assert reused == [
        f"tokens: general text {name} reused from the cache in {cache}" for name in (general, replay)
    ]

    # without data.cache_dir: the same files, and no cache entry made anywhere
    def refuse(self, entry, make):
        raise AssertionError(f"a cache entry {entry} was made with data.cache_dir unset")

    monkeypatch.setattr(TokenCache, "_make_entry", refuse)
    third = sft.prepare(sft_general_recipe(model_dir, data, general, replay, None), runs[2], Notes())
    assert third == first
    assert files_of(runs[2] / "data") == files_of(runs[0] / "data")
    assert len(list(cache.iterdir())) == 5  # train, validation, held-out, general, replay


# -- preference pairs (reward, dpo) ------------------------------------------------------------------


def pairs_file(path: Path) -> Path:
    rows = [
        {"prompt": f"what is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
        for i in range(20)
    ]
    rows.append({"prompt": "tell me " + "about the stone " * 6, "chosen": "no.", "rejected": "yes."})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pairs_recipe(
    model_dir: Path, data: Path, cache: Path | None, stage: str = "reward", max_length: int = 48
):
    return validate_recipe(
        {
            "stage": stage,
            "model": {"source": str(model_dir)},
            "data": {
                "source": str(data),
                "max_length": max_length,
                "anomalies": {"too_long": "truncate"},
                "cache_dir": None if cache is None else str(cache),
            },
            "method": {"dpo": {"reference": "precomputed"}},
        }
    )


def test_preference_pairs_are_tokenized_once_and_reused(tmp_path, monkeypatch):
    import peaufine.data.pairs
    import peaufine.stages.dpo as dpo
    import peaufine.stages.reward as reward

    model_dir = chat_model_dir(tmp_path)
    data = pairs_file(tmp_path / "pairs.jsonl")
    cache = tmp_path / "cache"
    runs = [tmp_path / f"run{i}" for i in range(7)]
    for run in runs:
        run.mkdir()

    first = reward.prepare(pairs_recipe(model_dir, data, cache), runs[0], Notes())
    assert first["pairs"]["train"]["truncated"] + first["pairs"]["validation"]["truncated"] == 1
    with monkeypatch.context() as patch:
        forbid_tokenizing(patch)
        patch.setattr(peaufine.data.pairs, "encode_pairs", None)  # calling it would fail
        notes = Notes()
        second = reward.prepare(pairs_recipe(model_dir, data, cache), runs[1], notes)
    assert second == first
    assert files_of(runs[1] / "data") == files_of(runs[0] / "data")
    assert f"tokens: preference pairs reused from the cache in {cache}" in notes.lines
    assert len(entries(cache, "pairs")) == 1

    # one answer changed, another max_length, another tokenizer, dpo's encoding: a new entry each
    changed = tmp_path / "changed.jsonl"
    changed.write_text(data.read_text().replace('"chosen": "0."', '"chosen": "zero."', 1))
    reward.prepare(pairs_recipe(model_dir, changed, cache), runs[2], Notes())
    reward.prepare(pairs_recipe(model_dir, data, cache, max_length=40), runs[3], Notes())
    assert files_of(runs[3] / "data") != files_of(runs[0] / "data")  # the long pair is cut shorter
    other = chat_model_dir(tmp_path / "other", chars="abcdefghijklmnopqrstuvwxyz ?.0123456789!")
    reward.prepare(pairs_recipe(other, data, cache), runs[4], Notes())
    dpo.prepare(pairs_recipe(model_dir, data, cache, stage="dpo"), runs[5], Notes())
    assert len(entries(cache, "pairs")) == 5

    # without data.cache_dir: the same files and counts, and no cache entry made
    def refuse(self, entry, make):
        raise AssertionError(f"a cache entry {entry} was made with data.cache_dir unset")

    monkeypatch.setattr(TokenCache, "_make_entry", refuse)
    plain = reward.prepare(pairs_recipe(model_dir, data, None), runs[6], Notes())
    assert plain == first
    assert files_of(runs[6] / "data") == files_of(runs[0] / "data")
