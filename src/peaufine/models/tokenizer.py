"""Tokenizers we train (byte-level BPE, character-level) or reuse, always loadable by AutoTokenizer."""

# A tokenizer we train reserves every special token later stages need (pad distinct from EOS, BOS,
# chat-turn markers) and ships a chat template, so no stage after pretraining resizes the embeddings.

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.errors import ModelError
from peaufine.models.folders import adapted_parts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT, END_OF_TURN]

# Assistant turns are wrapped in {% generation %} so that `return_assistant_tokens_mask` marks
# exactly the tokens a fine-tune should learn, including the end-of-turn token that makes it stop.
# A role marker is followed by a space, not a newline: a byte-level BPE learns words with their
# leading space (" Tarsk"), so content that starts after a space is tokenized as in running text,
# and what the model knows about " Tarsk" from pretraining is what it answers with.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}"
    "{% generation %}{{ ' ' + message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _wrap(tokenizer_object: Any) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT, END_OF_TURN],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE: any text encodes (no unknown tokens), merges learnt from `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ModelError(
            f"model.tokenizer.vocab_size ({vocab_size}) must be at least "
            f"{len(SPECIAL_TOKENS) + 256}: 256 bytes plus {len(SPECIAL_TOKENS)} special tokens"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def train_char(texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """One token per character seen in `texts` (nanoGPT's Shakespeare setting); others map to UNK."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    parts = adapted_parts(Path(path))
    if parts is not None:  # an adapted model's tokenizer is its base's
        path = str(parts[0])
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load a tokenizer from here ({exc})") from None


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id after which generation should stop: EOS and, when present, the end-of-turn token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
        ids.append(end)
    return ids


def batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
