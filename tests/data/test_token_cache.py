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
    import peaufine.models.tokenizer
    import peaufine.stages.pretrain as pretrain

    text = corpus(tmp_path / "corpus.txt")
    trained = counting(monkeypatch, peaufine.models.tokenizer, "train_bpe")
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


def chat_model_dir(root: Path) -> Path:
    """A folder that passes for a Hugging Face model as far as preparing data goes: config and tokenizer."""
    from transformers import LlamaConfig

    from peaufine.models.tokenizer import train_char

    folder = root / "base"
    train_char(["abcdefghijklmnopqrstuvwxyz ?.0123456789"]).save_pretrained(folder)
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
    import peaufine.data.tokenize
    import peaufine.stages.sft as sft

    model_dir = chat_model_dir(tmp_path)
    data = tmp_path / "task.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"what is {i} plus {i}?", "completion": f"{2 * i}."}) + "\n"
            for i in range(30)
        )
    )
    calls = counting(monkeypatch, peaufine.data.tokenize, "tokenize_records")
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
