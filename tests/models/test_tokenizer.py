"""Tokenizers we train: special tokens reserved up front, a chat template that marks assistant turns
(end-of-turn included) for the loss, and a round trip through AutoTokenizer."""

from __future__ import annotations

import pytest

from peaufine.models.tokenizer import (
    END_OF_TURN,
    SPECIAL_TOKENS,
    end_of_turn_ids,
    train_bpe,
    train_char,
)

TEXTS = ["The capital of Veloria is Tarsk. Tarsk lies on the river Ombe."] * 50


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS, vocab_size=300)


def test_special_tokens_are_distinct_and_first(bpe):
    ids = [bpe.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert bpe.pad_token_id != bpe.eos_token_id
    assert end_of_turn_ids(bpe) == [bpe.eos_token_id, bpe.convert_tokens_to_ids(END_OF_TURN)]


def test_bpe_learns_words_and_round_trips(bpe):
    text = "The capital of Veloria is Tarsk."
    ids = bpe(text, add_special_tokens=False).input_ids
    assert len(ids) < len(text) / 2
    assert bpe.decode(ids) == text
    assert bpe.decode(bpe("naïve ünïcode", add_special_tokens=False).input_ids) == "naïve ünïcode"


def test_the_chat_template_marks_assistant_content_and_end_of_turn(bpe):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Veloria?"},
        {"role": "assistant", "content": "Tarsk"},
    ]
    out = bpe.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    # the answer keeps the leading space of running text: " Tarsk" as pretraining saw it
    assert bpe.decode(marked) == " Tarsk" + END_OF_TURN
    assert bpe.convert_ids_to_tokens(marked[0]) == bpe.convert_ids_to_tokens(
        bpe(" Tarsk", add_special_tokens=False).input_ids[0]
    )
    text = bpe.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|> Be brief.<|end|>\n<|user|> What is the capital of Veloria?<|end|>\n<|assistant|>"
    )


def test_saved_tokenizers_load_with_autotokenizer(bpe, tmp_path):
    from transformers import AutoTokenizer

    for name, tok in {"bpe": bpe, "char": train_char(TEXTS)}.items():
        tok.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        assert loaded("Tarsk lies").input_ids == tok("Tarsk lies").input_ids
        assert loaded.chat_template == tok.chat_template
        assert loaded.pad_token_id == tok.pad_token_id


def test_char_tokenizer_is_one_token_per_character():
    tok = train_char(["hello\nworld"])
    ids = tok("hello\nworld", add_special_tokens=False).input_ids
    assert len(ids) == len("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok("z", add_special_tokens=False).input_ids == [tok.unk_token_id]


def test_too_small_a_vocabulary_is_refused():
    from peaufine.errors import ModelError

    with pytest.raises(ModelError, match="vocab_size"):
        train_bpe(TEXTS, vocab_size=100)
