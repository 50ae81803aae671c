"""The recipe: one YAML file, validated by a pydantic schema, that describes a run completely.

Blocks: model / data / train / eval / method. Unknown keys and bad values fail here, naming the key path
and the closest valid key, before anything is loaded or written.
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from peaufine.errors import RecipeError

AnomalyPolicy = Literal["error", "skip"]


class Block(BaseModel):
    """Every block forbids unknown keys: a misspelt key must fail, never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerBlock(Block):
    kind: Literal["bpe", "char", "source"] = Field(
        "bpe",
        description="bpe: train a byte-level BPE on the corpus; char: one token per character; "
        "source: reuse the tokenizer of `path` or of model.source",
    )
    vocab_size: int = Field(1024, ge=64, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    path: str | None = None


class ModelBlock(Block):
    source: str = Field(
        "llama-tiny", description="a preset name, a Hugging Face model dir, or a previous run dir"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the transformers config fields"
    )
    tokenizer: TokenizerBlock = Field(default_factory=TokenizerBlock)
    trust_remote_code: bool = False


class WorldBlock(Block):
    seed: int = 0
    size: Literal["default", "smoke"] = "default"
    documents: int = Field(4000, ge=10)


class AnomalyBlock(Block):
    """What to do with each kind of bad record; `error` (the default) stops with the file and line."""

    not_utf8: AnomalyPolicy = "error"
    bad_json: AnomalyPolicy = "error"
    missing_field: AnomalyPolicy = "error"
    empty_text: AnomalyPolicy = "error"


class DataBlock(Block):
    source: str | list[str] = Field(
        "world", description="'world' (the built-in synthetic world) or files / folders"
    )
    text_field: str = "text"
    document_unit: Literal["file", "paragraph", "line"] = "paragraph"
    validation_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    block_size: int = Field(128, ge=2)
    block_stride: int | None = Field(
        None,
        ge=1,
        description="tokens between the starts of consecutive training blocks; default block_size "
        "(no overlap); smaller strides show each token in several contexts",
    )
    anomalies: AnomalyBlock = Field(default_factory=AnomalyBlock)
    world: WorldBlock = Field(default_factory=WorldBlock)


class TrainBlock(Block):
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch: sequences per optimiser step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward pass and process; default: the whole share"
    )
    lr: float = Field(1e-3, gt=0.0)
    min_lr: float | None = Field(None, ge=0.0, description="schedule floor; default lr / 10")
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    decay_biases: bool = False
    decay_norms: bool = False
    decay_embeddings: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _floor_below_peak(self) -> TrainBlock:
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr


class EarlyStoppingBlock(Block):
    patience: int | None = Field(
        None, ge=1, description="evaluations without improvement before stopping; null: off"
    )
    min_delta: float = Field(0.0, ge=0.0)


class EvalBlock(Block):
    every: int = Field(200, ge=1, description="evaluate on the validation set every N steps")
    max_batches: int | None = Field(None, ge=1, description="null: the whole validation split")
    batch_size: int | None = Field(None, ge=1)
    early_stopping: EarlyStoppingBlock = Field(default_factory=EarlyStoppingBlock)
    restore_best: bool = Field(True, description="end the run with the best validated weights")
    samples: int = Field(3, ge=0, description="samples generated at the end of the run")
    sample_tokens: int = Field(40, ge=1)


class MethodBlock(Block):
    name: Literal["lm"] = "lm"


class Recipe(Block):
    stage: Literal["pretrain"] = "pretrain"
    model: ModelBlock = Field(default_factory=ModelBlock)
    data: DataBlock = Field(default_factory=DataBlock)
    train: TrainBlock = Field(default_factory=TrainBlock)
    eval: EvalBlock = Field(default_factory=EvalBlock)
    method: MethodBlock = Field(default_factory=MethodBlock)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _schema_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The block class that holds the key at `path`, so we can suggest its valid keys."""
    block: type[BaseModel] = Recipe
    for part in path[:-1]:
        field = block.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        block = annotation
    return block


def _describe(error: dict[str, Any], source: str) -> str:
    path = tuple(error["loc"])
    key = ".".join(str(p) for p in path)
    if error["type"] == "extra_forbidden":
        block = _schema_at(path)
        valid = sorted(block.model_fields) if block else []
        close = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.5)
        parent = ".".join(str(p) for p in path[:-1])
        hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        listing = f"valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key '{key}'. {hint} {listing}".replace("  ", " ")
    value = error.get("input")
    return f"{source}: bad value for '{key}' ({value!r}): {error['msg']}"


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping; every problem becomes one RecipeError naming key paths."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of blocks, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        messages = [_describe(err, source) for err in exc.errors()]
        raise RecipeError("\n".join(messages)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 0.0003); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    # YAML 1.1 reads "3e-4" as a string; a number is what anyone typing it means.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                here = ".".join(path[: depth + 1])
                raise RecipeError(f"--set {text!r}: '{here}' is a value, not a block of keys")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{where}: not valid YAML: {problem}") from None
    return data or {}


def load_recipe(path: Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file (or start from the defaults), apply `--set` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "recipe"
    return validate_recipe(apply_overrides(data, overrides or []), source)
