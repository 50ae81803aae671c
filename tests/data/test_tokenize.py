"""Tests for peaufine.data.tokenize: completion-only target masks on both template paths, default
templates, the too-long policy, and the labels the batcher derives from the masks.

Tokenizers are tiny byte-level BPEs trained here on a few sentences; no model is needed.
"""

from __future__ import annotations

import copy

import pytest

from conftest import byte_level_bpe, chat
from peaufine.data.batching import IGNORE_INDEX, PaddedExamples
from peaufine.data.records import ChatRecord
from peaufine.data.tokenize import (
    DEFAULT_CHAT_TEMPLATE,
    ensure_chat_template,
    generation_prompt,
    tokenize_chat,
    tokenize_records,
)
from peaufine.errors import DataError
from peaufine.models.tokenizer import CHAT_TEMPLATE, END_OF_TURN, train_bpe

SENTENCES = [
    "The capital of Veloria is Tarsk. Tarsk lies on the river Ombe.",
    "What is the capital of Veloria? Which river runs through Tarsk?",
    "Be brief. Answer in one word.",
] * 10


@pytest.fixture(scope="module")
def trained():
    return train_bpe(SENTENCES, vocab_size=320)


@pytest.fixture
def bpe(trained):
    """A private copy: tests change the chat template."""
    return copy.deepcopy(trained)


@pytest.fixture(scope="module")
def plain_trained():
    """A tokenizer with an EOS token but none of our turn tokens and no chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(SENTENCES, 300, ["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture
def plain(plain_trained):
    return copy.deepcopy(plain_trained)


SINGLE = chat(("user", "What is the capital of Veloria?"), ("assistant", "Tarsk"))
MULTI = chat(
    ("system", "Be brief."),
    ("user", "What is the capital of Veloria?"),
    ("assistant", "Tarsk"),
    ("user", "Which river runs through Tarsk?"),
    ("assistant", "The river Ombe."),
)


def target_runs(tokenizer, ids: list[int], mask: list[bool]) -> list[str]:
    """The decoded text of each maximal run of target tokens."""
    runs, current = [], []
    for token, marked in zip(ids, mask, strict=True):
        if marked:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def without_generation_tags(template: str) -> str:
    stripped = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert stripped != template
    return stripped


# ---------------------------------------------------------------------------------------------
# Target masks


@pytest.mark.parametrize("record", [SINGLE, MULTI], ids=["single-turn", "multi-turn-with-system"])
def test_targets_are_exactly_the_answers_and_their_end_of_turn(bpe, record: ChatRecord) -> None:
    example = tokenize_chat(bpe, record, max_length=512)
    answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
    # our template starts each turn's content after a space, which the answer's first token carries
    assert target_runs(bpe, example.input_ids, example.target_mask) == [
        " " + a + END_OF_TURN for a in answers
    ]
    # The ids are the rendered conversation, and everything outside the runs is prompt.
    rendered = bpe.apply_chat_template(record.messages, tokenize=False)
    assert bpe.decode(example.input_ids) == rendered
    prompt = [t for t, m in zip(example.input_ids, example.target_mask, strict=True) if not m]
    assert "Tarsk" + END_OF_TURN not in bpe.decode(prompt)
    assert not example.truncated


def test_loss_on_all_makes_every_token_a_target(bpe) -> None:
    example = tokenize_chat(bpe, MULTI, max_length=512, loss_on="all")
    completion = tokenize_chat(bpe, MULTI, max_length=512)
    assert example.input_ids == completion.input_ids
    assert example.target_mask == [True] * len(example.input_ids)


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, DEFAULT_CHAT_TEMPLATE], ids=["ours", "default"])
def test_prefix_rendering_gives_the_generation_marker_mask(bpe, template: str) -> None:
    bpe.chat_template = template
    marked = tokenize_chat(bpe, MULTI, max_length=512)
    bpe.chat_template = without_generation_tags(template)
    derived = tokenize_chat(bpe, MULTI, max_length=512)
    assert derived.input_ids == marked.input_ids
    assert derived.target_mask == marked.target_mask
    assert sum(derived.target_mask) > 2


def test_prefix_rendering_finds_content_after_a_header_that_merges_with_it(plain) -> None:
    # With "A:" + content, BPE may merge the header's space into the first answer token: the answer
    # must still be found, and the template's EOS still learnt.
    plain.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'A: ' + m['content'] + eos_token }}"
        "{% else %}{{ 'Q: ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
    )
    example = tokenize_chat(plain, MULTI, max_length=512)
    runs = target_runs(plain, example.input_ids, example.target_mask)
    assert [r.strip() for r in runs] == ["Tarsk<|endoftext|>", "The river Ombe.<|endoftext|>"]


def test_labels_from_the_batcher_predict_only_the_answers(bpe) -> None:
    examples, _ = tokenize_records(bpe, [SINGLE, MULTI], max_length=512)
    batch = PaddedExamples(examples, pad_id=bpe.pad_token_id).collate([0, 1])
    for row, record in zip(batch["labels"].tolist(), (SINGLE, MULTI), strict=True):
        learnt = [t for t in row if t != IGNORE_INDEX]
        answers = [" " + m["content"] + END_OF_TURN for m in record.messages if m["role"] == "assistant"]
        assert bpe.decode(learnt) == "".join(answers)


# ---------------------------------------------------------------------------------------------
# Templates


def test_a_tokenizer_with_our_tokens_gets_our_template_by_default(bpe) -> None:
    bpe.chat_template = None
    template, was_default = ensure_chat_template(bpe)
    assert (template, was_default) == (CHAT_TEMPLATE, True)
    assert bpe.chat_template == CHAT_TEMPLATE
    assert ensure_chat_template(bpe) == (CHAT_TEMPLATE, False)


def test_a_tokenizer_without_template_or_turn_tokens_gets_the_plain_default(plain) -> None:
    assert not plain.chat_template
    template, was_default = ensure_chat_template(plain)
    assert (template, was_default) == (DEFAULT_CHAT_TEMPLATE, True)
    example = tokenize_chat(plain, MULTI, max_length=512)
    runs = target_runs(plain, example.input_ids, example.target_mask)
    assert runs == ["Tarsk<|endoftext|>", "The river Ombe.<|endoftext|>"]
    text = plain.decode(example.input_ids)
    assert text.startswith("### System:\nBe brief.\n\n### User:\nWhat is the capital of Veloria?\n\n")
    assert generation_prompt(plain, SINGLE.messages).endswith("### Assistant:\n")


def test_an_existing_template_is_kept(plain) -> None:
    plain.chat_template = CHAT_TEMPLATE.replace("<|end|>", "<|endoftext|>")
    assert ensure_chat_template(plain) == (plain.chat_template, False)


def test_generation_prompt_stops_at_the_last_user_turn(bpe) -> None:
    prompt = generation_prompt(bpe, MULTI.messages)
    expected = bpe.apply_chat_template(MULTI.messages[:4], tokenize=False, add_generation_prompt=True)
    assert prompt == expected
    assert prompt.endswith("Which river runs through Tarsk?<|end|>\n<|assistant|>")
    assert "The river Ombe." not in prompt


# ---------------------------------------------------------------------------------------------
# Too long


def test_truncate_keeps_the_final_answer_and_is_counted(bpe) -> None:
    full = tokenize_chat(bpe, MULTI, max_length=512)
    final = " The river Ombe." + END_OF_TURN
    limit = len(full.input_ids) - 5
    examples, report = tokenize_records(bpe, [MULTI, SINGLE], max_length=limit, too_long="truncate")
    cut = examples[0]
    assert len(cut.input_ids) == limit
    # Cut from the left: the window is the conversation's end.
    assert cut.input_ids == full.input_ids[-limit:]
    assert target_runs(bpe, cut.input_ids, cut.target_mask)[-1] == final
    assert report.truncated == 1 and report.examples == 2 and report.skipped_too_long == 0


def test_truncate_keeps_a_leading_bos_on_a_left_cut(bpe) -> None:
    bpe.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    full = tokenize_chat(bpe, MULTI, max_length=512)
    assert full.input_ids[0] == bpe.bos_token_id
    cut = tokenize_chat(bpe, MULTI, max_length=len(full.input_ids) - 3, too_long="truncate")
    assert cut.input_ids == [bpe.bos_token_id, *full.input_ids[4:]]


def test_truncate_cuts_from_the_right_when_the_answer_alone_is_too_long(bpe) -> None:
    long_answer = chat(("user", "Say it."), ("assistant", " ".join(["Tarsk lies on the river Ombe."] * 20)))
    full = tokenize_chat(bpe, long_answer, max_length=1024)
    example = tokenize_chat(bpe, long_answer, max_length=30, too_long="truncate")
    assert example.truncated
    assert example.input_ids == full.input_ids[:30]
    assert example.target_mask == full.target_mask[:30]
    assert any(example.target_mask)


def test_skip_returns_none_and_is_counted(bpe) -> None:
    assert tokenize_chat(bpe, MULTI, max_length=10, too_long="skip") is None
    examples, report = tokenize_records(bpe, [MULTI, SINGLE], max_length=20, too_long="skip")
    assert report.skipped_too_long == 1 and report.examples == 1 and len(examples) == 1


def test_error_names_the_source_line_and_the_length(bpe) -> None:
    record = chat(*[(m["role"], m["content"]) for m in MULTI.messages], source="chat.jsonl, line 7")
    n = len(tokenize_chat(bpe, record, max_length=512).input_ids)
    with pytest.raises(DataError) as info:
        tokenize_chat(bpe, record, max_length=10)
    message = str(info.value)
    assert message.startswith("chat.jsonl, line 7: ")
    assert f"{n} tokens" in message and "data.max_length (10)" in message
    assert "data.anomalies.too_long" in message


# ---------------------------------------------------------------------------------------------
# Report


def test_report_counts_tokens_and_shows_the_first_example(bpe) -> None:
    examples, report = tokenize_records(bpe, [SINGLE, MULTI], max_length=512)
    assert report.examples == 2
    assert report.tokens == sum(len(e.input_ids) for e in examples)
    assert report.target_tokens == sum(sum(e.target_mask[1:]) for e in examples)
    assert report.first_text == bpe.apply_chat_template(SINGLE.messages, tokenize=False)
    assert report.first_target_text == " Tarsk" + END_OF_TURN
