"""Tests for the end-of-turn token in peaufine.data.tokenize: with chat templates in the style of the
major model families, the learnt tokens are each assistant answer plus the special token closing its turn.

The templates are written here after Llama-2-chat, Llama-3, ChatML (Qwen), Mistral, Gemma, Phi-3 and
Zephyr, each with and without {% generation %} markers; one byte-level BPE knows all their tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from conftest import byte_level_bpe, chat, tiny_llama
from peaufine.data.records import ChatRecord
from peaufine.data.tokenize import generation_prompt, tokenize_chat, tokenize_records

SENTENCES = [
    "The capital of Veloria is Tarsk. Tarsk lies on the river Ombe.",
    "What is the capital of Veloria? Which river runs through Tarsk?",
    "Be brief. Answer in one word. INST SYS user model assistant system",
] * 10

FAMILY_TOKENS = [
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|pad|>",
]


@dataclass(frozen=True)
class Family:
    """A template, the tokenizer's BOS/EOS for it, and the text that closes each assistant turn.

    `lead` is what the answer's first learnt token carries before the content (a byte-level BPE merges
    a space into the word after it); `close` is the whitespace and special token after the content.
    """

    name: str
    template: str
    bos: str
    eos: str
    close: str
    lead: str = ""

    @property
    def terminator(self) -> str:
        return self.close.strip()

    def learnt_close(self, markers: bool) -> str:
        """Without markers nothing after the terminator is learnt; with them, what the block holds."""
        return self.close if markers else self.close.rstrip()


def _split_system(body_user: str, body_assistant: str, system_prefix: str, system_suffix: str) -> str:
    """A Llama-2 / Mistral style template: the system prompt is folded into the first user turn."""
    return (
        "{% if messages[0]['role'] == 'system' %}"
        f"{{% set system = '{system_prefix}' + messages[0]['content'] + '{system_suffix}' %}}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for m in loop_messages %}"
        "{% if m['role'] == 'user' %}" + body_user + "{% else %}" + body_assistant + "{% endif %}"
        "{% endfor %}"
    )


LLAMA2 = Family(
    "llama2",
    _split_system(
        "{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}",
        # the prompt ends at [/INST]: the space before the answer is the model's to say
        "{% generation %}{{ ' ' + m['content'] }}{% endgeneration %}{{ ' ' + eos_token }}",
        "<<SYS>>\\n",
        "\\n<</SYS>>\\n\\n",
    ),
    bos="<s>",
    eos="</s>",
    close=" </s>",
    lead=" ",
)
LLAMA3 = Family(
    "llama3",
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim }}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    close="<|eot_id|>",
)
CHATML = Family(
    "chatml",
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    bos="<|im_start|>",
    eos="<|im_end|>",
    close="<|im_end|>",
)
# ChatML as some fine-tuning templates mark it: the terminator and the newline after it inside the block.
# The turn is then already closed, and the next turn's <|im_start|> must not be learnt.
CHATML_CLOSED = Family(
    "chatml-closed",
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    bos="<|im_start|>",
    eos="<|im_end|>",
    close="<|im_end|>\n",
)
MISTRAL = Family(
    "mistral",
    "{{ bos_token }}"
    + _split_system(
        "{{ '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}",
        "{% generation %}{{ m['content'] }}{% endgeneration %}{{ eos_token }}",
        "",
        "\\n\\n",
    ),
    bos="<s>",
    eos="</s>",
    close="</s>",
)
GEMMA = Family(
    "gemma",
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if role == 'model' %}{% generation %}{{ m['content'] | trim }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim }}{% endif %}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    bos="<bos>",
    eos="<eos>",
    close="<end_of_turn>",
)
PHI3 = Family(
    "phi3",
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{{ '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    bos="<s>",
    eos="<|end|>",
    close="<|end|>",
)
ZEPHYR = Family(
    "zephyr",
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{{ eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    bos="<s>",
    eos="</s>",
    close="</s>",
)
FAMILIES = [LLAMA2, LLAMA3, CHATML, CHATML_CLOSED, MISTRAL, GEMMA, PHI3, ZEPHYR]


def without_markers(template: str) -> str:
    return template.replace("{% generation %}", "").replace("{% endgeneration %}", "")


MULTI = chat(
    ("system", "Be brief."),
    ("user", "What is the capital of Veloria?"),
    ("assistant", "Tarsk"),
    ("user", "Which river runs through Tarsk?"),
    ("assistant", "The river Ombe."),
    ("user", "Answer in one word."),
    ("assistant", "Ombe"),
)
NO_SYSTEM = chat(
    ("user", "Which river runs through Tarsk?"),
    ("assistant", "Ombe"),
    ("user", "What is the capital of Veloria?"),
    ("assistant", "The capital of Veloria is Tarsk."),
)


@pytest.fixture(scope="module")
def trained_bpe():
    return byte_level_bpe(SENTENCES, 340, FAMILY_TOKENS)


def family_tokenizer(tok, family: Family, markers: bool):
    """A fast tokenizer with every family's tokens special, this family's BOS/EOS and template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(tok),
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token="<|pad|>",
        extra_special_tokens=[t for t in FAMILY_TOKENS if t not in (family.bos, family.eos, "<|pad|>")],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = family.template if markers else without_markers(family.template)
    return tokenizer


def expected_mask(
    tokenizer, ids: list[int], text: str, record: ChatRecord, lead: str, close: str
) -> list[bool]:
    """Learnt iff the token lies in `lead + content + close` of an assistant answer, found in order.

    Token positions come from decoding prefixes, independent of the offsets the code under test uses;
    a token that straddles a span's edge fails the test (the span must be whole tokens).
    """
    spans, cursor = [], 0
    for message in record.messages:
        if message["role"] != "assistant":
            continue
        wanted = lead + message["content"] + close
        at = text.find(wanted, cursor)
        assert at >= 0, f"{wanted!r} is not in the rendered text {text!r}"
        spans.append((at, at + len(wanted)))
        cursor = at + len(wanted)
    mask = []
    for t in range(len(ids)):
        a, b = len(tokenizer.decode(ids[:t])), len(tokenizer.decode(ids[: t + 1]))
        inside = [s <= a and b <= e for s, e in spans]
        overlap = [a < e and s < b for s, e in spans]
        assert inside == overlap, f"token {t} ({text[a:b]!r}) straddles an answer's edge"
        mask.append(any(inside))
    return mask


def _case(family: Family, markers: bool):
    return pytest.param(family, markers, id=f"{family.name}-{'markers' if markers else 'no-markers'}")


@pytest.mark.parametrize(("family", "markers"), [_case(f, m) for f in FAMILIES for m in (True, False)])
@pytest.mark.parametrize("record", [MULTI, NO_SYSTEM], ids=["with-system", "without-system"])
def test_learnt_tokens_are_the_answers_and_their_turn_terminator(
    trained_bpe, family: Family, markers: bool, record: ChatRecord
) -> None:
    tokenizer = family_tokenizer(trained_bpe, family, markers)
    example = tokenize_chat(tokenizer, record, max_length=512)
    text = tokenizer.apply_chat_template(record.messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == text
    close = family.learnt_close(markers)
    assert example.target_mask == expected_mask(
        tokenizer, example.input_ids, text, record, family.lead, close
    )
    # and the terminator is learnt once per answer: it is what teaches the model to stop
    terminator = tokenizer.convert_tokens_to_ids(family.terminator)
    learnt = [t for t, m in zip(example.input_ids, example.target_mask, strict=True) if m]
    answers = sum(m["role"] == "assistant" for m in record.messages)
    assert learnt.count(terminator) == answers


def test_a_special_token_after_text_that_is_not_whitespace_is_not_learnt(trained_bpe) -> None:
    # Negative control for the whitespace rule: text that is not whitespace between the answer and the
    # next special token stops the search, so nothing after the answer is learnt.
    family = Family(
        "no-terminator",
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\nEnd.\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        bos="<s>",
        eos="</s>",
        close="",
    )
    tokenizer = family_tokenizer(trained_bpe, family, markers=False)
    example = tokenize_chat(tokenizer, NO_SYSTEM, max_length=512)
    text = tokenizer.apply_chat_template(NO_SYSTEM.messages, tokenize=False)
    assert example.target_mask == expected_mask(tokenizer, example.input_ids, text, NO_SYSTEM, "", "")


# ---------------------------------------------------------------------------------------------
# A short fine-tune: the model learns to stop


QA = [
    ("What is the capital of Veloria?", "Tarsk"),
    ("Which river runs through Tarsk?", "The river Ombe."),
    ("Be brief.", "Ombe"),
    ("Answer in one word.", "Veloria"),
]


def _fine_tune(tokenizer, steps: int = 60):
    import torch

    from peaufine.data.batching import IGNORE_INDEX, PaddedExamples

    records = [chat(("user", q), ("assistant", a)) for q, a in QA]
    examples, _ = tokenize_records(tokenizer, records, max_length=128)
    batch = PaddedExamples(examples, tokenizer.pad_token_id).collate(range(len(examples)))
    model = tiny_llama(vocab_size=len(tokenizer), seed=0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize(
    ("family", "markers"),
    [
        pytest.param(LLAMA2, False, id="llama2-no-markers"),
        pytest.param(CHATML, True, id="chatml-markers"),
        pytest.param(LLAMA3, False, id="llama3-no-markers"),
    ],
)
def test_greedy_generation_after_a_short_fine_tune_stops_at_the_terminator(
    trained_bpe, family: Family, markers: bool
) -> None:
    import torch

    torch.manual_seed(0)
    tokenizer = family_tokenizer(trained_bpe, family, markers)
    model = _fine_tune(tokenizer)
    terminator = tokenizer.convert_tokens_to_ids(family.terminator)
    budget = 24
    for question, answer in QA:
        prompt = generation_prompt(tokenizer, [{"role": "user", "content": question}])
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=budget, do_sample=False, eos_token_id=terminator, pad_token_id=terminator
            )
        new = out[0, ids.shape[1] :].tolist()
        assert new[-1] == terminator and len(new) < budget, tokenizer.decode(new)
        assert tokenizer.decode(new) == family.lead + answer + family.close
