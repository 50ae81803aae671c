"""The recipe: one YAML file, validated by a pydantic schema, that describes a run completely."""

# Blocks: model / data / train / eval / method. Unknown keys and bad values fail here, naming the key path
# and the closest valid key, before anything is loaded or written.

from __future__ import annotations

import contextlib
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from peaufine.errors import RecipeError
from peaufine.nested import dotted_items

AnomalyPolicy = Literal["error", "skip"]


class Block(BaseModel):
    """Every block forbids unknown keys: a misspelt key must fail, never be silently ignored; and
    infinite numbers (YAML's .inf), which pass any lower bound."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TokenizerBlock(Block):
    kind: Literal["bpe", "char", "source"] = Field(
        "bpe",
        description="bpe: train a byte-level BPE on the corpus; char: one token per character; "
        "source: reuse the tokenizer of `path` or of model.source",
    )
    vocab_size: int = Field(1024, ge=64, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    path: str | None = None


# The recipe keys that belong to each adapter kind: setting one under another kind is refused, since it
# would be silently ignored (r under bottleneck, size under lora).
ADAPTER_KEYS: dict[str, tuple[str, ...]] = {
    "lora": ("r", "alpha", "dropout", "target_modules", "rslora", "dora", "train_special_tokens"),
    "bottleneck": ("reduction_factor", "size", "placement", "non_linearity", "layer_norm"),
    "ia3": ("target_modules", "feedforward_modules"),
    "prompt_tuning": ("num_virtual_tokens", "prompt_init", "prompt_init_text"),
}
# PEFT's prompt-learning kinds: a learnt prefix of each example, which packed rows cannot carry.
PROMPT_LEARNING_KINDS = ("prompt_tuning",)


class AdapterBlock(Block):
    """How a pretrained model is adapted: none (every weight, or what model.freeze leaves), LoRA / DoRA,
    bottleneck adapter modules, (IA)3 or a soft prompt (prompt tuning)."""

    kind: Literal["none", "lora", "bottleneck", "ia3", "prompt_tuning"] = "none"
    # lora (and dora)
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="lora, ia3: the linear layers adapted; ia3's all-linear is PEFT's default set for the "
        "architecture (attention keys and values, and the MLP's output)",
    )
    rslora: bool = False
    dora: bool = False
    train_special_tokens: bool = Field(
        True,
        description="also train the embedding rows of the tokenizer's special tokens: chat-turn tokens a "
        "base model never saw (so never learnt to emit) stay untrainable under LoRA otherwise",
    )
    # bottleneck adapter modules (Houlsby et al. 2019; Pfeiffer et al. 2020)
    reduction_factor: float = Field(
        16.0, ge=1.0, description="bottleneck: hidden size / adapter size (ignored when size is set)"
    )
    size: int | None = Field(None, ge=1, description="bottleneck: the adapter's inner width")
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby",
        description="bottleneck: houlsby, after the attention and after the MLP of each layer; "
        "pfeiffer, after the MLP only",
    )
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    layer_norm: bool = Field(False, description="bottleneck: a layer norm before the down-projection")
    # (IA)3 (Liu et al. 2022)
    feedforward_modules: list[str] | None = Field(
        None,
        description="ia3: the target modules whose input (not output) is rescaled; null: PEFT's default "
        "for the architecture",
    )
    # prompt tuning (Lester et al. 2021)
    num_virtual_tokens: int = Field(20, ge=1, description="prompt_tuning: learnt tokens before each example")
    prompt_init: Literal["random", "text"] = Field(
        "random", description="prompt_tuning: start from random vectors or from the embeddings of a text"
    )
    prompt_init_text: str | None = Field(None, description="prompt_tuning: the text when prompt_init is text")

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> AdapterBlock:
        # a key at its default is no setting (a resolved recipe.yaml writes every key back)
        own = set(ADAPTER_KEYS.get(self.kind, ()))
        changed = {
            key
            for key in self.model_fields_set - own - {"kind"}
            if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)
        }
        for key in sorted(changed):
            users = [kind for kind, keys in ADAPTER_KEYS.items() if key in keys]
            raise ValueError(
                f"{key} is a setting of kind {' / '.join(users)}, not of kind {self.kind}; "
                f"remove it or set kind: {users[0]}"
            )
        if self.kind == "prompt_tuning" and (self.prompt_init == "text") != bool(self.prompt_init_text):
            raise ValueError(
                "prompt_init: text needs prompt_init_text (and prompt_init_text needs prompt_init: text)"
            )
        return self


class FreezeBlock(Block):
    layers: list[int] = Field(default_factory=list, description="transformer layers to freeze")
    embeddings: bool = False
    all_but_head: bool = False


class ModelBlock(Block):
    source: str = Field(
        "llama-tiny", description="a preset name, a Hugging Face model dir, or a previous run dir"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the transformers config fields"
    )
    tokenizer: TokenizerBlock = Field(default_factory=TokenizerBlock)
    trust_remote_code: bool = False
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained",
        description="sft, classify: scratch trains model.source's architecture from random (seeded) "
        "weights, the baseline that shows what pretraining contributed",
    )
    adapter: AdapterBlock = Field(default_factory=AdapterBlock)
    freeze: FreezeBlock = Field(default_factory=FreezeBlock)
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="attention kernel (transformers attn_implementation); auto: sdpa; "
        "flash_attention_2 needs CUDA, the flash_attn package and bf16/fp16",
    )


class WorldBlock(Block):
    seed: int = 0
    size: Literal["default", "smoke"] = "default"
    documents: int = Field(4000, ge=10)
    faq_documents: int = Field(
        0, ge=0, description="question-and-answer pages about the fine-tuning split's facts"
    )
    candidate_sets: int = Field(
        1, ge=1, description="reward / dpo: sets of candidate answers the annotator ranks per question"
    )


class AnomalyBlock(Block):
    """What to do with each kind of bad record; `error` (the default) stops with the file and line."""

    not_utf8: AnomalyPolicy = "error"
    bad_json: AnomalyPolicy = "error"
    missing_field: AnomalyPolicy = "error"
    empty_text: AnomalyPolicy = "error"
    unknown_role: AnomalyPolicy = "error"
    empty_assistant: AnomalyPolicy = "error"
    too_long: Literal["error", "skip", "truncate"] = Field(
        "error", description="an example longer than data.max_length"
    )
    # preference data (reward, dpo)
    same_response: AnomalyPolicy = Field(
        "skip", description="a pair whose chosen and rejected responses are the same text"
    )
    short_ranking: AnomalyPolicy = Field("error", description="a ranking with fewer than two responses")
    prompt_mismatch: AnomalyPolicy = Field(
        "error", description="an HH pair whose two dialogues differ before the last assistant turn"
    )


class FieldsBlock(Block):
    """Where each part of a fine-tuning record lives in the user's files (a field mapping)."""

    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    label: str = "label"
    system: str | None = Field(None, description="a system message for every example")
    chosen: str = "chosen"
    rejected: str = "rejected"
    responses: str = Field("responses", description="a ranking's responses, best first")
    ranks: str = Field("ranks", description="optional rank of each response (1 = best; equal = tie)")


class ReplayBlock(Block):
    """Mix general text into fine-tuning batches, a mitigation of catastrophic forgetting."""

    source: str | None = Field(
        None, description="text files; default: the pretraining corpus of model.source when known"
    )
    ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of each batch that is replay")


class CrossValidationBlock(Block):
    """k-fold cross-validation: fold `fold` of `folds` is the validation split (set by --folds)."""

    folds: int | None = Field(
        None,
        ge=2,
        description="split the data into k folds by example (by prompt for preferences); "
        "null: hold out data.validation_fraction instead",
    )
    fold: int = Field(0, ge=0, description="which fold is the validation split, 0 to folds - 1")

    @model_validator(mode="after")
    def _fold_in_range(self) -> CrossValidationBlock:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(
                f"fold {self.fold} does not exist with {self.folds} folds (0 to {self.folds - 1})"
            )
        return self


class DataBlock(Block):
    source: str | list[str] = Field(
        "world", description="'world' (the built-in synthetic world) or files / folders"
    )
    text_field: str = "text"
    document_unit: Literal["file", "paragraph", "line"] = "paragraph"
    validation_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    train_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="sft, classify: train on this first fraction of the training examples (shuffled by "
        "train.seed; smaller fractions are subsets of larger ones); validation and held-out unchanged",
    )
    block_size: int = Field(128, ge=2)
    block_stride: int | None = Field(
        None,
        ge=1,
        description="tokens between the starts of consecutive training blocks; default block_size "
        "(no overlap); smaller strides show each token in several contexts",
    )
    anomalies: AnomalyBlock = Field(default_factory=AnomalyBlock)
    world: WorldBlock = Field(default_factory=WorldBlock)
    # fine-tuning data (sft, classify)
    format: Literal[
        "auto", "prompt_completion", "messages", "alpaca", "classification", "pairs", "ranking", "hh"
    ] = "auto"
    fields: FieldsBlock = Field(default_factory=FieldsBlock)
    max_length: int = Field(512, ge=8, description="tokens per fine-tuning example")
    packing: bool = Field(True, description="padding-free packing of examples into rows")
    loss_on: Literal["completion", "all"] = "completion"
    replay: ReplayBlock = Field(default_factory=ReplayBlock)
    # preference data (reward, dpo)
    rankings: Literal["all", "adjacent"] = Field(
        "all", description="pairs from a ranking of K responses: all K(K-1)/2, or the K-1 adjacent ones"
    )
    cross_validation: CrossValidationBlock = Field(default_factory=CrossValidationBlock)
    cache_dir: str | None = Field(
        None,
        description="tokenized data is cached here and reused by later runs (pretraining tokenizer "
        "and streams, SFT examples, general and replay text, preference pairs), keyed by the texts, "
        "the tokenizer's files and the settings that shape the tokens; null: tokenize in every run",
    )


class TrainBlock(Block):
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch: sequences per optimiser step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward pass and process; default: the whole share"
    )
    lr: float = Field(1e-3, gt=0.0)
    min_lr: float | None = Field(None, ge=0.0, description="schedule floor; default lr / 10")
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(
        100,
        ge=0,
        description="linear warmup, in steps; must be below max_steps. Left out: the stage's default, "
        "at most a tenth of max_steps",
    )
    weight_decay: float = Field(0.1, ge=0.0)
    decay_biases: bool = False
    decay_norms: bool = False
    decay_embeddings: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = Field(False, description="torch.compile the model (slow first step, then faster)")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: replicate (DDP) or shard (FSDP2 fully_shard)"
    )
    fsdp_cpu_offload: bool = Field(False, description="FSDP: keep parameters and optimiser state on the CPU")
    activation_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% more compute"
    )
    fused_adamw: Literal["auto", "on", "off"] = Field("auto", description="fused AdamW kernel; auto: on CUDA")
    loss_chunk_tokens: int | None = Field(
        None,
        ge=1,
        description="cross-entropy over chunks of this many tokens, never the whole batch's logits "
        "at once (large vocabularies); null: in one piece",
    )
    prefetch_batches: int = Field(
        2, ge=0, description="batches prepared ahead by a background thread; 0: prepared in the loop"
    )
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


class ForgettingBlock(Block):
    """Loss on general held-out text before vs after fine-tuning."""

    general: str | None = Field(
        None, description="text files; default: the validation split of model.source's pretraining"
    )
    threshold: float = Field(0.10, ge=0.0, description="relative loss increase that warns")
    max_blocks: int | None = Field(256, ge=1)


class TransferBlock(Block):
    """Fine-tuned vs base zero-shot vs base few-shot vs the same architecture from scratch."""

    from_scratch: bool = False
    few_shot: int = Field(3, ge=0, description="in-context examples for the few-shot baseline")


class EvalBlock(Block):
    every: int = Field(200, ge=1, description="evaluate on the validation set every N steps")
    max_batches: int | None = Field(None, ge=1, description="null: the whole validation split")
    batch_size: int | None = Field(None, ge=1)
    early_stopping: EarlyStoppingBlock = Field(default_factory=EarlyStoppingBlock)
    restore_best: bool = Field(True, description="end the run with the best validated weights")
    samples: int = Field(3, ge=0, description="samples generated at the end of the run")
    sample_tokens: int = Field(40, ge=1)
    forgetting: ForgettingBlock = Field(default_factory=ForgettingBlock)
    transfer: TransferBlock = Field(default_factory=TransferBlock)
    answers: int | None = Field(
        200, ge=0, description="validation examples answered by generation for exact match / F1"
    )


class RewardBlock(Block):
    """Bradley-Terry reward model: -log sigmoid(r_chosen - r_rejected - margin)."""

    margin: float = Field(0.0, ge=0.0, description="required gap between chosen and rejected rewards")
    center: float = Field(
        0.01, ge=0.0, description="weight of mean((r_chosen + r_rejected)^2): keeps rewards near zero"
    )
    backbone: str | None = Field(
        None, description="encoder or causal LM folder for the reward model; default model.source"
    )


class DpoBlock(Block):
    loss: Literal["sigmoid", "ipo", "cdpo", "simpo"] = "sigmoid"
    beta: float = Field(0.1, gt=0.0, description="strength of the KL leash (sigmoid, ipo, cdpo)")
    label_smoothing: float = Field(
        0.1, ge=0.0, lt=0.5, description="cdpo: probability that a preference label is flipped"
    )
    ipo_log_ratio: Literal["per_token", "sum"] = Field(
        "per_token",
        description="ipo: each answer's log-ratio to the reference as a per-token mean (the IPO authors', "
        "as TRL; beta then does not depend on answer length) or summed over its tokens",
    )
    simpo_beta: float = Field(2.0, gt=0.0)
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: target reward margin")
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the chosen answers' mean negative log-likelihood added to the loss (RPO): "
        "keeps DPO from lowering the chosen answers' probability along with the rejected ones'",
    )
    reference: Literal["precomputed", "adapter"] = Field(
        "precomputed",
        description="precomputed: reference log-probs computed once before training; adapter: the "
        "adapted model with its adapter disabled (needs a model.adapter.kind other than none)",
    )


class RewardSourceBlock(Block):
    source: str = Field(
        description="a reward-model folder (or run dir), or a Python function module:function"
    )
    weight: float = 1.0


class RlBlock(Block):
    algorithm: Literal["grpo", "ppo"] = "grpo"
    rewards: list[RewardSourceBlock] = Field(default_factory=list, description="summed, weighted")
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=1, description="samples per prompt (grpo: advantages within a group)")
    passes: int = Field(1, ge=1, description="optimisation passes over each batch of rollouts (mu)")
    mini_batches: int = Field(1, ge=1, description="optimiser steps per pass")
    clip: float = Field(0.2, gt=0.0, description="importance-ratio clipping")
    kl_coef: float = Field(0.04, ge=0.0)
    kl_control: Literal["fixed", "adaptive"] = "fixed"
    target_kl: float = Field(6.0, gt=0.0, description="adaptive control: KL (nats per sequence) aimed at")
    kl_horizon: int = Field(10000, ge=1, description="adaptive control: samples over which to correct")
    scale_rewards: bool = Field(True, description="grpo: divide advantages by the group's std")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="ppo discount")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="ppo GAE lambda")
    value_coef: float = Field(0.1, ge=0.0)
    value_clip: float = Field(0.2, gt=0.0)
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_k: int | None = Field(None, ge=1)
    min_pass_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="keep prompts whose pass rate before training is at least this"
    )
    max_pass_rate: float | None = Field(None, ge=0.0, le=1.0)
    pass_threshold: float = Field(
        1.0, description="a sample passes when its reward reaches this (for the pass-rate filter)"
    )
    pass_source: str | None = Field(
        None, description="the reward source whose score decides a pass; default: the weighted sum"
    )
    eval_prompts: int = Field(64, ge=1, description="prompts scored before, during and after training")
    sample_every: int = Field(10, ge=1, description="log generated samples every N steps")


class MethodBlock(Block):
    name: Literal["lm", "classify", "reward", "dpo", "rl"] = "lm"
    num_labels: int | None = Field(None, ge=1, description="classify: 1 means regression")
    reward: RewardBlock = Field(default_factory=RewardBlock)
    dpo: DpoBlock = Field(default_factory=DpoBlock)
    rl: RlBlock = Field(default_factory=RlBlock)


class TrackBlock(Block):
    """Where else the metrics go, beside metrics.jsonl (which every run writes)."""

    tensorboard: bool = Field(False, description="TensorBoard event files in <run>/tensorboard")
    mlflow: bool = Field(False, description="an MLflow run (params, metrics, final evaluation)")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; null: a local SQLite store, sqlite:///<run>/mlflow.db"
    )
    mlflow_experiment: str = "peaufine"


class Recipe(Block):
    stage: Literal["pretrain", "sft", "classify", "reward", "dpo", "rl"] = "pretrain"
    model: ModelBlock = Field(default_factory=ModelBlock)
    data: DataBlock = Field(default_factory=DataBlock)
    train: TrainBlock = Field(default_factory=TrainBlock)
    eval: EvalBlock = Field(default_factory=EvalBlock)
    method: MethodBlock = Field(default_factory=MethodBlock)
    track: TrackBlock = Field(default_factory=TrackBlock)

    @model_validator(mode="after")
    def _soft_prompt_needs_unpacked_rows(self) -> Recipe:
        # a learnt prefix belongs to one example: in a packed row it would sit before the first only;
        # packing left at its default is switched off, asked for it is refused
        if self.model.adapter.kind in PROMPT_LEARNING_KINDS and self.data.packing and self.stage == "sft":
            if "packing" not in self.data.model_fields_set:
                self.data.packing = False
                return self
            raise ValueError(
                f"data.packing: model.adapter.kind {self.model.adapter.kind} puts a learnt prompt before "
                "each example, which packed rows cannot carry; set data.packing: false"
            )
        return self

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


# Keys as other tools spell them (Transformers' TrainingArguments, TRL, PEFT, nanoGPT, axolotl), each
# mapped to the recipe key that does its job, so "learning_rate" gets "did you mean 'train.lr'" wherever
# it is written. tests/test_recipe_input.py checks that every target is a key of the schema.
KEY_SYNONYMS: dict[str, str] = {
    "learning_rate": "train.lr",
    "min_learning_rate": "train.min_lr",
    "lr_scheduler_type": "train.schedule",
    "lr_scheduler": "train.schedule",
    "scheduler": "train.schedule",
    "num_train_epochs": "train.max_steps",
    "epochs": "train.max_steps",
    "max_epochs": "train.max_steps",
    "max_iters": "train.max_steps",
    "per_device_train_batch_size": "train.micro_batch_size",
    "train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.batch_size",
    "max_grad_norm": "train.grad_clip",
    "gradient_clipping": "train.grad_clip",
    "clip_grad_norm": "train.grad_clip",
    "warmup_ratio": "train.warmup_steps",
    "warmup_iters": "train.warmup_steps",
    "num_warmup_steps": "train.warmup_steps",
    "adam_beta1": "train.betas",
    "adam_beta2": "train.betas",
    "adam_epsilon": "train.eps",
    "logging_steps": "train.log_every",
    "log_interval": "train.log_every",
    "save_steps": "train.checkpoint_every",
    "save_total_limit": "train.keep_checkpoints",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "mixed_precision": "train.precision",
    "gradient_checkpointing": "train.activation_checkpointing",
    "torch_compile": "train.compile",
    "eval_steps": "eval.every",
    "eval_interval": "eval.every",
    "per_device_eval_batch_size": "eval.batch_size",
    "eval_batch_size": "eval.batch_size",
    "early_stopping_patience": "eval.early_stopping.patience",
    "lora_r": "model.adapter.r",
    "lora_rank": "model.adapter.r",
    "lora_alpha": "model.adapter.alpha",
    "lora_dropout": "model.adapter.dropout",
    "lora_target_modules": "model.adapter.target_modules",
    "use_rslora": "model.adapter.rslora",
    "use_dora": "model.adapter.dora",
    "use_peft": "model.adapter.kind",
    "model_name_or_path": "model.source",
    "model_name": "model.source",
    "base_model": "model.source",
    "init_from": "model.source",
    "attn_implementation": "model.attention",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "seq_length": "data.max_length",
    "sequence_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "dataset": "data.source",
    "dataset_name": "data.source",
    "dataset_path": "data.source",
    "train_file": "data.source",
    "data_files": "data.source",
    "dataset_text_field": "data.text_field",
    "completion_only_loss": "data.loss_on",
    "val_set_size": "data.validation_fraction",
    "validation_split": "data.validation_fraction",
    "test_size": "data.validation_fraction",
    "loss_type": "method.dpo.loss",
    "rpo_alpha": "method.dpo.sft_weight",
    "num_generations": "method.rl.group_size",
    "max_completion_length": "method.rl.max_new_tokens",
    "num_iterations": "method.rl.passes",
    "cliprange": "method.rl.clip",
    "epsilon": "method.rl.clip",
    "init_kl_coef": "method.rl.kl_coef",
    "reward_funcs": "method.rl.rewards",
    "report_to": "track",
}

# What to know when another tool's key maps to ours with another meaning.
SYNONYM_NOTES = {
    "train.max_steps": "peaufine counts optimiser steps, not epochs",
    "train.batch_size": "the global batch: micro_batch_size sets each pass's share, the rest is accumulated",
    "train.warmup_steps": "a number of steps, not a ratio",
    "train.precision": "precision: bf16, fp16 or fp32",
    "train.betas": "both betas as a pair, e.g. [0.9, 0.95]",
}


def _leaf_keys(block: type[BaseModel] = Recipe, prefix: str = "") -> dict[str, str]:
    """Every key path of the schema, blocks included, keyed by path, valued by its last name."""
    keys: dict[str, str] = {}
    for name, field in block.model_fields.items():
        keys[prefix + name] = name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(_leaf_keys(annotation, prefix + name + "."))
    return keys


def _closest_key(path: tuple[str | int, ...]) -> tuple[str, str] | None:
    """The recipe key an unknown key at `path` most likely means, and a note; None when nothing is close.

    In order: another tool's name for one of our keys; our key of that name in another block; the
    closest spelling (by difflib's ratio) among this block's keys, the synonyms and every other key,
    this block's keys winning ties.
    """
    written = str(path[-1]).strip().lower().replace("-", "_")
    parent = ".".join(str(p) for p in path[:-1])
    block = _schema_at(path)
    here = {(f"{parent}.{name}" if parent else name): name for name in (block.model_fields if block else [])}
    everywhere = _leaf_keys()
    if written in KEY_SYNONYMS:
        target = KEY_SYNONYMS[written]
        return target, f"{written} is another tool's name for it" + (
            f"; {SYNONYM_NOTES[target]}" if target in SYNONYM_NOTES else ""
        )
    elsewhere = sorted((k for k, name in everywhere.items() if name == written and k not in here), key=len)
    if elsewhere:
        return elsewhere[0], f"{written} belongs in the {elsewhere[0].rpartition('.')[0]} block"
    candidates = [(name, key, 0.0) for key, name in here.items()]
    candidates += [(name, key, 0.02) for name, key in KEY_SYNONYMS.items()]
    candidates += [(name, key, 0.05) for key, name in everywhere.items() if key not in here]
    scored = [
        (difflib.SequenceMatcher(None, written, name).ratio() - penalty, key)
        for name, key, penalty in candidates
    ]
    score, key = max(scored, default=(0.0, ""), key=lambda item: item[0])
    return (key, "") if score >= 0.5 else None


def _describe(error: dict[str, Any], source: str, origins: dict[str, str] | None = None) -> str:
    """One validation error as a line naming where the key was written: the file (`source`), or the
    `--set` option that wrote it (`origins`: key path -> option)."""
    path = tuple(error["loc"])
    key = ".".join(str(p) for p in path)
    for written, origin in (origins or {}).items():
        if key == written or key.startswith(written + "."):
            source = origin
    if error["type"] == "extra_forbidden":
        block = _schema_at(path)
        valid = sorted(block.model_fields) if block else []
        close = _closest_key(path)
        hint = ""
        if close:
            hint = f"did you mean '{close[0]}'?" + (f" ({close[1]})" if close[1] else "")
        listing = f"valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key '{key}'. {hint} {listing}".replace("  ", " ")
    value = error.get("input")
    return f"{source}: bad value for '{key}' ({value!r}): {error['msg']}"


# The objective each stage trains with: method.name must agree (the stage's defaults set it).
METHOD_OF_STAGE = {
    "pretrain": "lm",
    "sft": "lm",
    "classify": "classify",
    "reward": "reward",
    "dpo": "dpo",
    "rl": "rl",
}

# Fine-tuning starts from weights that already work: smaller steps and shorter runs than pretraining.
STAGE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sft": {
        "train": {"lr": 1e-4, "max_steps": 300, "warmup_steps": 20, "weight_decay": 0.0, "batch_size": 8},
        "eval": {"every": 50},
    },
    "classify": {
        "train": {"lr": 5e-5, "max_steps": 300, "warmup_steps": 30, "weight_decay": 0.01, "batch_size": 32},
        "eval": {"every": 50},
        "method": {"name": "classify"},
    },
    "reward": {
        "train": {"lr": 5e-5, "max_steps": 300, "warmup_steps": 20, "weight_decay": 0.0, "batch_size": 16},
        "eval": {"every": 50},
        "method": {"name": "reward"},
    },
    "dpo": {
        "train": {"lr": 5e-6, "max_steps": 200, "warmup_steps": 10, "weight_decay": 0.0, "batch_size": 16},
        "eval": {"every": 50},
        "method": {"name": "dpo"},
    },
    "rl": {
        "train": {
            "lr": 1e-5,
            "max_steps": 100,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "schedule": "constant",
        },
        "eval": {"every": 25},
        "method": {"name": "rl"},
    },
}


def _with_stage_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """The stage's defaults under the user's keys: what the user wrote always wins."""
    defaults = STAGE_DEFAULTS.get(str(data.get("stage", "pretrain")), {})
    merged = dict(data)
    for block, values in defaults.items():
        given = merged.get(block)
        if given is None:
            merged[block] = dict(values)
        elif isinstance(given, dict):
            merged[block] = {**values, **given}
    return merged


# The member tags pydantic puts in an error's location for a key of several types (str | list[str]).
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\])$")


def _one_error_per_key(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors with the errors of each member of a union merged into one per key: a key of
    several types (data.source: a path or a list of paths) gets one line naming the key, not a line
    per type with the type's tag in the key ('data.source.list[str].0')."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    members: set[tuple[Any, ...]] = set()
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = tuple(error["loc"])
        cut = next((i for i, p in enumerate(loc) if isinstance(p, str) and _TYPE_TAG.match(p)), None)
        if cut is None:
            out.append(error)
            continue
        key, rest = loc[:cut], loc[cut + 1 :]
        if (*key, loc[cut]) in members:  # one error per member is enough (the first bad item)
            continue
        members.add((*key, loc[cut]))
        where = f" (item {'.'.join(str(p) for p in rest)}: {error.get('input')!r})" if rest else ""
        if key not in merged:
            merged[key] = {
                "type": "union",
                "loc": key,
                "input": error.get("input"),
                "msg": error["msg"] + where,
            }
            out.append(merged[key])
        else:
            merged[key]["msg"] += f"; or {error['msg']}{where}"
        if not rest:
            merged[key]["input"] = error.get("input")
    return out


def validate_recipe(
    data: dict[str, Any], source: str = "recipe", origins: dict[str, str] | None = None
) -> Recipe:
    """Validate a raw mapping; every problem becomes one RecipeError naming key paths and where each
    was written (`origins`: the key paths that `--set` options wrote, to the option)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of blocks, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(_with_stage_defaults(data))
    except ValidationError as exc:
        messages = [_describe(err, source, origins) for err in _one_error_per_key(exc.errors())]
        raise RecipeError("\n".join(messages)) from None
    expected = METHOD_OF_STAGE[recipe.stage]
    if recipe.method.name != expected:
        raise RecipeError(
            f"{source}: method.name is {recipe.method.name!r}, but stage {recipe.stage!r} trains with "
            f"{expected!r}; leave method.name out (the stage sets it)"
        )
    train = data.get("train")
    _fit_warmup(recipe, isinstance(train, dict) and "warmup_steps" in train, source)
    return recipe


def _fit_warmup(recipe: Recipe, given: bool, source: str) -> None:
    """A warmup as long as the run never reaches train.lr: refused when the user wrote it; when it is
    a default (100 steps, or the stage's), it shrinks to a tenth of the run, so a short run (50 steps)
    still reaches its lr, and a run of the default length keeps the default."""
    train = recipe.train
    if given and train.warmup_steps >= train.max_steps:
        raise RecipeError(
            f"{source}: train.warmup_steps ({train.warmup_steps}) must be less than train.max_steps "
            f"({train.max_steps}): the learning rate would never reach train.lr; lower "
            "train.warmup_steps (or leave it out: a tenth of the run) or raise train.max_steps"
        )
    if not given:
        train.warmup_steps = min(train.warmup_steps, train.max_steps // 10)


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


def set_dotted(data: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """Set the key at `path` in a raw recipe mapping, creating blocks on the way; `where` names the
    setting in the error when a block on the way is a value."""
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            here = ".".join(path[: depth + 1])
            raise RecipeError(f"{where}: '{here}' is a value, not a block of keys")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(data, path, value, f"--set {text!r}")
    return data


def _duplicate_key(node: yaml.Node | None, path: tuple[str, ...] = ()) -> tuple[str, int] | None:
    """The dotted path and line of the first key that a YAML mapping repeats, or None."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if key in seen and key != "<<":  # "<<" merges: a YAML feature, not a key
                return ".".join((*path, key)), key_node.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(value_node, (*path, key))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, (*path, str(index)))
            if found:
                return found
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{where}: not valid YAML: {problem}") from None
    if duplicate is not None:
        key, line = duplicate
        raise RecipeError(
            f"{path}, line {line}: '{key}' is written twice (YAML keeps the last value silently); keep one"
        )
    if data is None:  # an empty file, or comments only: the defaults
        return {}
    if not isinstance(data, dict):
        shown = repr(data) if len(repr(data)) <= 60 else repr(data)[:57] + "..."
        found = "a list" if isinstance(data, list) else f"the {type(data).__name__} {shown}"
        raise RecipeError(
            f"{path}: expected a mapping of keys at the top (lines such as `train:` with keys below "
            f"them), but the file holds {found}"
        )
    return data


def load_recipe(path: Path | None, overrides: list[str] | None = None, stage: str | None = None) -> Recipe:
    """Read a recipe file (or start from the defaults), apply `--set` overrides, validate.

    `stage` is the command's stage: a recipe without a stage key gets it; one for another stage fails.
    """
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "recipe"
    data = apply_overrides(data, overrides or [])
    if stage is not None:
        given = data.setdefault("stage", stage)
        if given != stage:
            raise RecipeError(
                f"{source}: stage '{given}' cannot run as `peaufine {stage}`; "
                f"use `peaufine {given}` or set stage: {stage}"
            )
    reference = _pipeline_reference(data)
    if reference is not None:
        key, value = reference
        raise RecipeError(
            f"{source}: {key} is {value!r}, a reference to a pipeline stage's run; run this recipe in a "
            "pipeline (peaufine run), or replace the reference with a run folder"
        )
    origins = {".".join(parse_override(text)[0]): f"--set {text!r}" for text in overrides or []}
    return validate_recipe(data, source, origins)


def _pipeline_reference(data: Any) -> tuple[str, str] | None:
    """The first string holding `${...}` (only a pipeline can fill it in), with its key path."""

    found = (
        (key, value)
        for key, value in dotted_items(data, into_lists=True)
        if isinstance(value, str) and "${" in value
    )
    return next(found, None)
