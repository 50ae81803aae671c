"""Pretraining on corpora a new user brings: no validation split, one smaller than a block, or a corpus
too small to split; each works or is refused up front, and says which."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from test_cli import run_cli, tiny_recipe


def corpus(tmp_path: Path, documents: int, words: int = 30, sep: str = "\n\n") -> Path:
    rng = random.Random(0)
    vocabulary = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat"]
    path = tmp_path / "corpus.txt"
    path.write_text(
        sep.join(" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(documents))
    )
    return path


def pretrain(tmp_path: Path, source: Path, capsys, monkeypatch, *overrides: str) -> tuple[int, str, Path]:
    out = tmp_path / "run"
    args = ["pretrain", str(tiny_recipe(tmp_path, str(source))), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    code, _, err = run_cli(args, capsys, monkeypatch)
    return code, " ".join(err.split()), out


@pytest.mark.parametrize("patience", [None, 2])
def test_no_validation_split_trains_and_says_what_it_cannot_do(tmp_path, capsys, monkeypatch, patience):
    overrides = ["data.validation_fraction=0", "eval.samples=2"]
    if patience:
        overrides.append(f"eval.early_stopping.patience={patience}")
    code, err, out = pretrain(tmp_path, corpus(tmp_path, 40), capsys, monkeypatch, *overrides)
    assert code == 0, err
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["val_loss"] is None and evaluation["val_tokens"] == 0
    assert evaluation["steps"] == 3 and not evaluation["stopped_early"]
    assert "no validation" in err and "early stopping" in err, err


def test_a_validation_split_smaller_than_a_block_is_warned_about(tmp_path, capsys, monkeypatch):
    # 40 documents of 30 words; 5% held out is 2 documents, ~300 characters: fewer than one block of 512
    code, err, out = pretrain(
        tmp_path,
        corpus(tmp_path, 40),
        capsys,
        monkeypatch,
        "data.block_size=512",
        "model.config.max_position_embeddings=1024",
    )
    assert code == 0, err
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["val_loss"] is None
    assert "fewer than one block" in err and "data.validation_fraction" in err, err


def test_a_validation_split_of_whole_blocks_gets_no_warning(tmp_path, capsys, monkeypatch):
    """The negative control of the two tests above."""
    code, err, out = pretrain(tmp_path, corpus(tmp_path, 40), capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["val_loss"] is not None
    assert "no validation" not in err and "fewer than one block" not in err


@pytest.mark.parametrize("unit", ["file", "paragraph", "line"])
def test_a_corpus_of_one_document_gets_advice_that_fits_its_document_unit(
    tmp_path, capsys, monkeypatch, unit
):
    source = corpus(tmp_path, 1, words=200)
    code, err, out = pretrain(tmp_path, source, capsys, monkeypatch, f"data.document_unit={unit}")
    assert code == 2 and not out.exists(), err
    assert "1 document" in err and "data.validation_fraction" in err and str(source) in err, err
    advice = err.replace(f"data.document_unit is {unit}", "")
    if unit == "file":
        assert "paragraph" in advice, err
    else:  # never advise the unit already in use
        assert unit not in advice, err
