"""Conversations to token ids through the tokenizer's chat template, with the mask of the tokens a
fine-tune learns from: each assistant turn's content and the end-of-turn token that closes it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peaufine.data.batching import Example
from peaufine.data.records import ChatRecord
from peaufine.errors import DataError, ModelError
from peaufine.models.tokenizer import ASSISTANT, CHAT_TEMPLATE, END_OF_TURN, SYSTEM, USER

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LOSS_ON = ("completion", "all")
TOO_LONG = ("error", "skip", "truncate")

# For tokenizers that have neither a template nor our turn tokens: plain-text headers any tokenizer
# can spell, and EOS after each answer so that the fine-tuned model learns to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\\n\\n' }}"
    "{% else %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class TokenizedExample:
    """A rendered conversation's ids; `target_mask[t]` says whether token t is learnt."""

    input_ids: list[int]
    target_mask: list[bool]
    truncated: bool = False


@dataclass
class TokenizeReport:
    """What tokenization did to a data set, for the run log and the run dir."""

    examples: int = 0
    truncated: int = 0
    skipped_too_long: int = 0
    tokens: int = 0
    target_tokens: int = 0  # targets after the first position: the labels the loss actually sees
    first_text: str = ""  # the first example as the model reads it, special tokens included
    first_target_text: str = ""  # its target tokens alone: what the model learns to say


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> tuple[str, bool]:
    """The tokenizer's chat template, set to a default first if it has none: (template, was_default).

    A tokenizer with our turn tokens gets our template (so a model we pretrained is fine-tuned in the
    format its tokenizer was built for); any other gets DEFAULT_CHAT_TEMPLATE. The caller logs a
    default and writes it to the run dir, since it is then part of what the model learns.
    """
    if tokenizer.chat_template:
        return tokenizer.get_chat_template(), False
    added = tokenizer.get_added_vocab()
    if all(token in added for token in (SYSTEM, USER, ASSISTANT, END_OF_TURN)):
        template = CHAT_TEMPLATE
    elif tokenizer.eos_token is None:
        raise ModelError(
            "the tokenizer has neither a chat template nor an EOS token, so a fine-tuned model could not "
            "learn where its answer ends; use a tokenizer that has one or the other"
        )
    else:
        template = DEFAULT_CHAT_TEMPLATE
    tokenizer.chat_template = template
    return template, True


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    record: ChatRecord,
    *,
    max_length: int,
    loss_on: str = "completion",
    too_long: str = "error",
) -> TokenizedExample | None:
    """Token ids of the rendered conversation and its target mask; None when it is skipped as too long.

    Targets are the assistant contents plus the special token that closes each assistant turn, or
    every token when `loss_on` is "all". An example over `max_length` raises a DataError naming its
    source, is skipped (None), or is truncated: from the left (earliest turns first) while the final
    assistant turn still fits, from the right otherwise.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, not {loss_on!r}")
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long must be one of {TOO_LONG}, not {too_long!r}")
    ids, mask = _ids_and_completion_mask(tokenizer, record.messages)
    truncated = False
    if len(ids) > max_length:
        if too_long == "error":
            raise DataError(
                f"the example is {len(ids)} tokens long, more than data.max_length ({max_length})",
                path=record.source,
                hint="raise data.max_length, or set data.anomalies.too_long: truncate (or skip)",
            )
        if too_long == "skip":
            return None
        cut = _truncate(ids, mask, max_length, tokenizer.bos_token_id)
        if cut is None:
            return None
        ids, mask = cut
        truncated = True
    if loss_on == "all":
        mask = [True] * len(ids)
    return TokenizedExample(ids, mask, truncated)


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[ChatRecord],
    *,
    max_length: int,
    loss_on: str = "completion",
    too_long: str = "error",
) -> tuple[list[Example], TokenizeReport]:
    """Examples for the engine's batching, and the counts a run reports about them.

    A truncated example whose window holds no answer token at all is useless, so it is dropped and
    counted with the skipped ones.
    """
    report = TokenizeReport()
    examples: list[Example] = []
    for record in records:
        tokenized = tokenize_chat(
            tokenizer, record, max_length=max_length, loss_on=loss_on, too_long=too_long
        )
        if tokenized is None:
            report.skipped_too_long += 1
            continue
        if not examples:
            report.first_text = tokenizer.decode(tokenized.input_ids)
            targets = [t for t, m in zip(tokenized.input_ids, tokenized.target_mask, strict=True) if m]
            report.first_target_text = tokenizer.decode(targets)
        examples.append(Example(tokenized.input_ids, tokenized.target_mask))
        report.examples += 1
        report.truncated += tokenized.truncated
        report.tokens += len(tokenized.input_ids)
        report.target_tokens += sum(tokenized.target_mask[1:])
    return examples, report


def generation_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The conversation up to its last user turn, ending with the assistant header a reply follows.

    What a model is given when its answer is to be compared with the reference (exact match, F1).
    """
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise DataError("the conversation has no user turn to answer")
    return tokenizer.apply_chat_template(
        messages[: users[-1] + 1], tokenize=False, add_generation_prompt=True
    )


# ---------------------------------------------------------------------------------------------
# Masks


def _ids_and_completion_mask(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[bool]]:
    if not tokenizer.chat_template:
        raise ModelError("the tokenizer has no chat template; call ensure_chat_template first")
    if not tokenizer.is_fast:
        # Both ways of finding the assistant's tokens map characters to tokens, which needs offsets.
        raise ModelError("fine-tuning on conversations needs a fast (Rust-backed) tokenizer")
    if _GENERATION_TAG.search(tokenizer.get_chat_template()):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(out["input_ids"])
        mask = [bool(m) for m in out["assistant_masks"]]
    else:
        ids, mask = _mask_by_prefixes(tokenizer, messages)
    return ids, _close_turns(ids, mask, _special_ids(tokenizer), _whitespace_test(tokenizer))


def _mask_by_prefixes(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[bool]]:
    """The assistant-content mask of a template without {% generation %} markers.

    Rendering messages[:i] with the generation prompt gives the text before assistant turn i, and
    messages[:i+1] the text through it; the content sits between, and the tokens whose characters
    overlap it are targets. The whole conversation is tokenized once, so the ids are exactly those a
    template with markers would give.
    """

    def render(part: list[dict[str, str]], prompt: bool = False) -> str:
        if not part:
            return ""
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt)

    full = render(messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (full.startswith(through) and through.startswith(before)):
            raise ModelError(
                "the chat template renders a conversation's beginning differently from the whole "
                "conversation, so the assistant's tokens cannot be found; add {% generation %} markers "
                "around the assistant content in the template"
            )
        at = through.find(message["content"], len(before))
        # The turn's text from the end of the generation prompt through its content (a space the
        # template puts before the content belongs to the answer's first token); a template that
        # rewrites the content (strips it, say): learn the whole rendered turn.
        spans.append((len(before), at + len(message["content"])) if at >= 0 else (len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    # byte-level offsets are trimmed: a lone space token has an empty span, inside if it starts inside
    mask = [
        any((start < b and end > a) or (start == end and a <= start < b) for a, b in spans)
        for start, end in encoded["offset_mapping"]
    ]
    return ids, mask


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    special = set(tokenizer.all_special_ids)
    special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return special


def _close_turns(
    ids: list[int], mask: list[bool], special: set[int], is_space: Callable[[int], bool]
) -> list[bool]:
    """Also target the special token that closes each assistant span, and the whitespace before it.

    The turn's end is what teaches stopping, and templates differ on where it sits: inside their
    {% generation %} block or after it, right after the content (ChatML) or after a space (Llama-2:
    `' ' + content + ' ' + eos_token`). A span already ending in a special token (whitespace after it
    aside) is closed; otherwise the first special token after it is its end when only whitespace
    tokens sit between, and those are learnt too, since the model must say them before it can stop.
    """
    closed = list(mask)
    t = 0
    while t < len(ids):
        if not mask[t]:
            t += 1
            continue
        end = t
        while end < len(ids) and mask[end]:
            end += 1
        last = end - 1
        while last >= t and ids[last] not in special and is_space(ids[last]):
            last -= 1
        if last < t or ids[last] not in special:
            gap = end
            while gap < len(ids) and not mask[gap] and ids[gap] not in special and is_space(ids[gap]):
                gap += 1
            if gap < len(ids) and not mask[gap] and ids[gap] in special:
                closed[end : gap + 1] = [True] * (gap + 1 - end)
        t = end
    return closed


def _whitespace_test(tokenizer: PreTrainedTokenizerBase) -> Callable[[int], bool]:
    """Whether a token is only whitespace (or decodes to nothing, as a lone SentencePiece '▁' may)."""
    seen: dict[int, bool] = {}

    def is_space(token: int) -> bool:
        if token not in seen:
            seen[token] = not tokenizer.decode([token]).strip()
        return seen[token]

    return is_space


def _truncate(
    ids: list[int], mask: list[bool], max_length: int, bos_id: int | None
) -> tuple[list[int], list[bool]] | None:
    """Cut to `max_length` tokens, keeping the final assistant turn whole when it fits (see tokenize_chat).

    A leading BOS is kept on a left cut: models are trained and prompted with it in first place.
    """
    keep = 1 if bos_id is not None and ids and ids[0] == bos_id else 0
    last = max((t for t, m in enumerate(mask) if m), default=None)
    if last is not None:
        start = last
        while start > 0 and mask[start - 1]:
            start -= 1
        # At least one token must precede the answer: position 0 is never a label.
        if len(ids) - start + keep < max_length:
            tail = len(ids) - (max_length - keep)
            return ids[:keep] + ids[tail:], mask[:keep] + mask[tail:]
    ids, mask = ids[:max_length], mask[:max_length]
    return (ids, mask) if any(mask[1:]) else None
