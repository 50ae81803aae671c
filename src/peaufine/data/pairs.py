"""Preference pairs as token ids, batched chosen-rows-then-rejected-rows so one forward pass scores both."""

# A causal LM reads a pair as prompt + response: chat prompts through the tokenizer's chat template
# (the response is the assistant turn, its tokens and the end-of-turn token are the targets), raw-text
# prompts (the HH dialogues) as the prompt's tokens followed by the response's and EOS. A too-long pair
# keeps its whole response and loses the start of its prompt: the end of a dialogue is what the
# response answers.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peaufine.data.batching import Batch, Example, PaddedExamples
from peaufine.data.preferences import prompt_key
from peaufine.data.records import ChatRecord
from peaufine.data.tokenize import tokenize_chat
from peaufine.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peaufine.data.preferences import PreferencePair, Prompt


@dataclass
class PairExample:
    """One tokenized pair; `ref_*` are the reference model's summed log-probs, once computed."""

    chosen: Example
    rejected: Example
    weight: float = 1.0
    tie: bool = False
    kind: str = ""
    ref_chosen: float | None = None
    ref_rejected: float | None = None


@dataclass
class PairEncodeReport:
    pairs: int = 0
    truncated: int = 0
    skipped_too_long: int = 0
    skipped_ties: int = 0
    first_text: str = ""
    kept: list[int] = field(default_factory=list)  # index in the input of each encoded pair


def encoder_style(tokenizer: PreTrainedTokenizerBase) -> bool:
    """A BERT-like tokenizer ([CLS] a [SEP] b [SEP]) with no chat template: an encoder reads pairs."""
    return (
        not tokenizer.chat_template
        and tokenizer.cls_token_id is not None
        and tokenizer.sep_token_id is not None
    )


def encode_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    response: str,
    *,
    max_length: int,
    too_long: str,
    source: str = "preference pair",
) -> tuple[Example, bool] | None:
    """The text a reward model scores: an encoder's [CLS] prompt [SEP] response [SEP], else as a
    causal LM reads it (`encode_response`). Either way the end of the prompt and the whole response
    are kept when it is too long."""
    if not encoder_style(tokenizer):
        return encode_response(
            tokenizer, prompt, response, max_length=max_length, too_long=too_long, source=source
        )
    prompt_ids = tokenizer(prompt_key(prompt), add_special_tokens=False)["input_ids"]
    response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
    fitted = _fit([tokenizer.cls_token_id], prompt_ids, response_ids, max_length - 1, too_long, source)
    if fitted is None:
        return None
    example, truncated = fitted
    split = example.target_mask.index(True)
    ids = [*example.input_ids[:split], tokenizer.sep_token_id, *example.input_ids[split:]]
    mask = [False] * (split + 1) + [True] * (len(ids) - split - 1)
    return Example(ids, mask), truncated


def encode_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    response: str,
    *,
    max_length: int,
    too_long: str,
    source: str = "preference pair",
) -> tuple[Example, bool] | None:
    """(ids with the response's tokens as targets, truncated?) or None when skipped as too long."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            response_ids = [*response_ids, tokenizer.eos_token_id]
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return _fit(head, prompt_ids, response_ids, max_length, too_long, source)

    record = ChatRecord([*prompt, {"role": "assistant", "content": response}], source)
    tokenized = tokenize_chat(tokenizer, record, max_length=max_length, too_long=too_long)
    if tokenized is None:
        return None
    return Example(tokenized.input_ids, tokenized.target_mask), tokenized.truncated


def _fit(
    head: list[int], prompt: list[int], response: list[int], max_length: int, too_long: str, source: str
) -> tuple[Example, bool] | None:
    total = len(head) + len(prompt) + len(response)
    truncated = total > max_length
    if truncated:
        if too_long == "error":
            raise DataError(
                f"a preference pair is {total} tokens long, more than data.max_length ({max_length})",
                path=source,
                hint="raise data.max_length, or set data.anomalies.too_long: truncate (or skip)",
            )
        if too_long == "skip":
            return None
        room = max_length - len(head) - len(response)
        if room >= 1:
            prompt = prompt[len(prompt) - room :]
        else:  # the response alone does not fit: one prompt token, then as much response as fits
            prompt = prompt[-1:]
            response = response[: max_length - len(head) - 1]
    ids = [*head, *prompt, *response]
    mask = [False] * (len(head) + len(prompt)) + [True] * len(response)
    return Example(ids, mask), truncated


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int,
    too_long: str = "truncate",
    skip_ties: bool = False,
    scored: bool = False,
) -> tuple[list[PairExample], PairEncodeReport]:
    """Tokenize every pair for a causal LM (or, `scored`, for a reward model: `encode_scored`);
    ties are dropped (and counted) when `skip_ties`, and a ranking's kept pairs then share its unit
    of weight (`PreferencePair.kept_weight`)."""
    report = PairEncodeReport()
    out: list[PairExample] = []
    encode = encode_scored if scored else encode_response
    for index, pair in enumerate(pairs):
        if pair.tie and skip_ties:
            report.skipped_ties += 1
            continue
        where = pair.source or "preference pair"
        chosen, rejected = (
            encode(tokenizer, pair.prompt, text, max_length=max_length, too_long=too_long, source=where)
            for text in (pair.chosen, pair.rejected)
        )
        if chosen is None or rejected is None:
            report.skipped_too_long += 1
            continue
        if not out:
            report.first_text = tokenizer.decode(chosen[0].input_ids)
        report.truncated += chosen[1] or rejected[1]
        out.append(PairExample(chosen[0], rejected[0], pair.kept_weight(skip_ties), pair.tie, pair.kind))
        report.kept.append(index)
        report.pairs += 1
    return out, report


@dataclass
class PairBatches:
    """Pairs for the engine: a batch of B pairs is 2B right-padded rows, the B chosen rows first.

    Keys: input_ids, attention_mask, labels (shifted, -100 off the response), weights [B], ties [B],
    and ref_logps [2B] once the reference log-probs are known.
    """

    pairs: list[PairExample]
    pad_id: int
    _rows: PaddedExamples = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = PaddedExamples(
            [p.chosen for p in self.pairs] + [p.rejected for p in self.pairs], self.pad_id
        )

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def has_reference(self) -> bool:
        return all(p.ref_chosen is not None and p.ref_rejected is not None for p in self.pairs)

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        n = len(self.pairs)
        batch = self._rows.collate([*indices, *(n + i for i in indices)])
        chosen = [self.pairs[i] for i in indices]
        batch["weights"] = torch.tensor([p.weight for p in chosen], dtype=torch.float32)
        batch["ties"] = torch.tensor([p.tie for p in chosen], dtype=torch.bool)
        if self.has_reference:
            batch["ref_logps"] = torch.tensor(
                [p.ref_chosen for p in chosen] + [p.ref_rejected for p in chosen], dtype=torch.float64
            )
        return batch
