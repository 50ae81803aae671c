"""Parameter and training-memory accounting, done on the meta device so nothing is allocated."""

# Answers "how big is this model, will it fit" before any weight exists (`peaufine params`).

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.errors import ModelError
from peaufine.models.adapters import apply_adapter, peft_base, prompt_length
from peaufine.models.build import max_positions, resolve_source
from peaufine.models.folders import read_model_config
from peaufine.models.presets import build_config
from peaufine.recipe import ADAPTER_KEYS, PROMPT_LEARNING_KINDS, AdapterBlock, load_recipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig

    from peaufine.recipe import Recipe

# Config attributes that name the number of routed experts, across transformers MoE families.
_NUM_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
# Config attributes holding dropout probabilities; dropout masks cost activation memory only when
# one of them is non-zero.
_DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


@dataclass
class ParamBudget:
    """Parameter counts of one model; shared (tied) tensors are counted once."""

    total: int
    trainable: int
    by_module_type: dict[str, dict[str, int]] = field(default_factory=dict)
    # Parameters one token goes through in an MoE model: k of the E routed experts in each MoE
    # layer, plus everything else (attention, routers, shared experts, embeddings). None if dense.
    active_per_token: int | None = None
    # Input embeddings (token and learned position tables) plus an untied output head.
    embedding: int = 0

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@dataclass
class MemoryEstimate:
    """Bytes needed to train, by component, with the assumptions that produced them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    batch_size: int
    seq_len: int
    activation_checkpointing: bool
    fused_attention: bool
    optimizer_name: str = "adamw"
    # positions a soft prompt (prompt tuning) puts before each sequence: activations and logits are
    # those of seq_len + prefix_tokens positions
    prefix_tokens: int = 0


def meta_model(config: PreTrainedConfig) -> torch.nn.Module:
    """A causal LM built from `config` on the meta device: real shapes and module tree, no memory.

    Builds a 47B-parameter Mixtral in well under a second, so budgets need no GPU and no download.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _in_modules(module_path: str, names: Iterable[str]) -> bool:
    # Whole dotted components only, as PEFT's `target_modules`: "proj" must not match "q_proj".
    padded = f".{module_path}."
    return any(f".{name.strip('.')}." in padded for name in names)


def _is_routed_experts(name: str, module: Any) -> bool:
    """Mixtral/Qwen2-MoE in transformers 5 fuse experts into 3-D tensors in a `*Experts` module.

    Older layouts keep a `ModuleList` named `experts`; both hold only routed experts (a shared
    expert lives in `shared_expert`, outside this module).
    """
    return type(module).__name__.endswith("Experts") or name.rsplit(".", 1)[-1] == "experts"


def count_parameters(
    model: torch.nn.Module, trainable_only_modules: Iterable[str] | None = None
) -> ParamBudget:
    """Count a model's parameters, real or on the meta device.

    Trainable means `requires_grad`, so a model that froze layers or was wrapped by PEFT counts
    right as it is. `trainable_only_modules` asks "what if only these were trained" without touching
    the model: module names as dotted components (`lm_head`, `q_proj`, `layers.0`).
    A tensor shared by two modules (tied embeddings) counts once, for the module seen first.
    """
    only = list(trainable_only_modules) if trainable_only_modules is not None else None
    seen: set[int] = set()
    total = trainable = 0
    by_type: dict[str, dict[str, int]] = {}
    for module_path, module in model.named_modules():
        type_name = type(module).__name__
        for param in module.parameters(recurse=False):
            # id(), not data_ptr(): every meta tensor reports data_ptr 0.
            if id(param) in seen:
                continue
            seen.add(id(param))
            n = param.numel()
            is_trainable = _in_modules(module_path, only) if only is not None else param.requires_grad
            total += n
            trainable += n if is_trainable else 0
            row = by_type.setdefault(type_name, {"total": 0, "trainable": 0})
            row["total"] += n
            row["trainable"] += n if is_trainable else 0

    return ParamBudget(
        total=total,
        trainable=trainable,
        by_module_type=by_type,
        active_per_token=_active_per_token(model, total),
        embedding=_embedding_parameters(model),
    )


def _embedding_parameters(model: torch.nn.Module) -> int:
    import torch

    params: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            params.update({id(p): p.numel() for p in module.parameters()})
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None:
        # A tied head shares the token table's Parameter, so the dict keeps it once.
        params.update({id(p): p.numel() for p in head.parameters()})
    return sum(params.values())


def _active_per_token(model: torch.nn.Module, total: int) -> int | None:
    """total - (1 - k/E) * routed-expert parameters, or None for a dense model.

    Each token's router picks k of the E routed experts in every MoE layer; every other parameter
    (attention, norms, routers, shared experts, embeddings) touches every token.
    """
    config = getattr(model, "config", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    num_experts = next((getattr(config, k) for k in _NUM_EXPERTS_KEYS if getattr(config, k, None)), None)
    if not top_k or not num_experts:
        return None
    routed = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not _is_routed_experts(name, module):
            continue
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                routed += param.numel()
    if routed == 0:
        return None
    # Exact integer: each expert holds routed / E parameters.
    return total - routed + routed // num_experts * top_k


def _uses_dropout(config: PreTrainedConfig) -> bool:
    return any((getattr(config, key, 0) or 0) > 0 for key in _DROPOUT_KEYS)


def layer_activation_bytes(
    config: PreTrainedConfig,
    *,
    batch_size: int,
    seq_len: int,
    activation_bytes: int = 2,
    fused_attention: bool = False,
) -> int:
    """Bytes one decoder layer keeps for the backward pass (Korthikanti et al. 2022, eq. 1).

    The paper (no tensor/sequence parallelism, 16-bit activations, MLP width 4h) gives
    s*b*h*(34 + 5*a*s/h). Its 34*sbh is 16 stored tensors of size sbh at 2 bytes plus 2 one-byte
    dropout masks; its 5*a*s^2*b is the attention scores and softmax output at 2 bytes plus a
    one-byte dropout mask. With B bytes per activation this reads sbh*(16B + 2) + a*s^2*b*(2B + 1),
    which is the paper's at B=2. Dropout masks are dropped when the config's dropout is zero, and
    the s^2 term when a fused kernel (flash / memory-efficient SDPA) recomputes the scores.
    It is an approximation for SwiGLU MLPs (width != 4h) and grouped-query attention.
    """
    s, b = seq_len, batch_size
    h = config.hidden_size
    a = config.num_attention_heads
    mask = 1 if _uses_dropout(config) else 0
    per_layer = s * b * h * (16 * activation_bytes + 2 * mask)
    if not fused_attention:
        per_layer += a * s * s * b * (2 * activation_bytes + mask)
    return per_layer


def estimate_memory(
    config: PreTrainedConfig,
    budget: ParamBudget,
    *,
    batch_size: int,
    seq_len: int,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optimizer_state_bytes: int = 8,
    activation_checkpointing: bool = False,
    activation_bytes: int | None = None,
    fused_attention: bool = False,
    prefix_tokens: int = 0,
) -> MemoryEstimate:
    """Training memory for one micro-batch: weights, gradients, optimizer state, activations.

    Weights count every parameter; gradients and optimizer state only trainable ones (AdamW keeps
    two fp32 moments, 8 bytes). Activations are `num_hidden_layers` times `layer_activation_bytes`
    (`activation_bytes` defaults to `param_bytes`) plus the logits, b*s*V*4 bytes, since the loss
    is taken in fp32. With activation checkpointing each layer keeps only its input (s*b*h*B) and
    one layer's full activations are live again while it is recomputed in the backward pass.
    `prefix_tokens`: a soft prompt's positions before each sequence (prompt tuning), which every layer
    and the head compute like the sequence's own.
    Not counted: CUDA context, allocator fragmentation, temporary buffers of kernels.
    """
    act_bytes = param_bytes if activation_bytes is None else activation_bytes
    layers = config.num_hidden_layers
    positions = seq_len + prefix_tokens
    one_layer = layer_activation_bytes(
        config,
        batch_size=batch_size,
        seq_len=positions,
        activation_bytes=act_bytes,
        fused_attention=fused_attention,
    )
    logits = batch_size * positions * config.vocab_size * 4
    if activation_checkpointing:
        layer_inputs = layers * positions * batch_size * config.hidden_size * act_bytes
        activations = layer_inputs + one_layer + logits
    else:
        activations = layers * one_layer + logits

    weights = budget.total * param_bytes
    gradients = budget.trainable * grad_bytes
    optimizer = budget.trainable * optimizer_state_bytes
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        total=weights + gradients + optimizer + activations,
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_state_bytes=optimizer_state_bytes,
        activation_bytes=act_bytes,
        batch_size=batch_size,
        seq_len=seq_len,
        activation_checkpointing=activation_checkpointing,
        fused_attention=fused_attention,
        prefix_tokens=prefix_tokens,
    )


def format_bytes(n: int) -> str:
    """Bytes in GiB from 1 GiB up, else MiB: the units GPU memory is sold and reported in."""
    gib = 1024**3
    if n >= gib:
        return f"{n / gib:,.2f} GiB"
    return f"{n / 1024**2:,.1f} MiB"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f}%" if whole else "      -"


def format_budget(budget: ParamBudget, memory: MemoryEstimate | None = None) -> str:
    """A plain-text table of a budget (and memory estimate) for the terminal and for reports."""
    width = max(len(f"{budget.total:,}"), 9)
    lines = ["Parameters"]

    def row(label: str, n: int, pct: str = "") -> None:
        lines.append(f"  {label:<20} {n:>{width},}  {pct}".rstrip())

    row("total", budget.total)
    row("trainable", budget.trainable, _percent(budget.trainable, budget.total))
    row("frozen", budget.frozen, _percent(budget.frozen, budget.total))
    row("embedding", budget.embedding, _percent(budget.embedding, budget.total))
    if budget.active_per_token is not None:
        row(
            "active per token",
            budget.active_per_token,
            _percent(budget.active_per_token, budget.total),
        )

    name_width = max([len(t) for t in budget.by_module_type] + [11])
    lines += ["", f"  {'module type':<{name_width}} {'total':>{width}} {'trainable':>{width}}"]
    rows = sorted(budget.by_module_type.items(), key=lambda kv: -kv[1]["total"])
    for type_name, counts in rows:
        total, trainable = counts["total"], counts["trainable"]
        lines.append(f"  {type_name:<{name_width}} {total:>{width},} {trainable:>{width},}")

    if memory is not None:
        checkpointing = ", activation checkpointing" if memory.activation_checkpointing else ""
        prefix = f" + {memory.prefix_tokens} soft-prompt positions" if memory.prefix_tokens else ""
        lines += [
            "",
            f"Training memory (batch {memory.batch_size} x {memory.seq_len} tokens{prefix}{checkpointing})",
        ]
        parts = [
            ("weights", memory.weights, f"{memory.param_bytes} B/param"),
            ("gradients", memory.gradients, f"{memory.grad_bytes} B/trainable param"),
            (
                "optimizer",
                memory.optimizer,
                f"{memory.optimizer_name}, {memory.optimizer_state_bytes} B/trainable param",
            ),
            ("activations", memory.activations, f"{memory.activation_bytes} B/value + fp32 logits"),
            ("total", memory.total, ""),
        ]
        for label, n, note in parts:
            lines.append(f"  {label:<12} {format_bytes(n):>14}  {note}".rstrip())
    return "\n".join(lines)


@dataclass
class _Subject:
    """What `peaufine params` describes: a named config and the batch shape to cost it at."""

    name: str
    config: Any
    batch: int
    length: int
    recipe: Any


def _params_subject(
    recipe_path: Path | None,
    preset: str | None,
    overrides: list[str],
    batch_size: int | None,
    seq_len: int | None,
) -> _Subject:

    if preset is not None and recipe_path is not None:
        raise ModelError("give a recipe or --preset, not both")
    recipe = load_recipe(recipe_path, overrides)
    name = preset or recipe.model.source
    source = resolve_source(name)
    if source.kind == "preset":
        vocab = None if preset else recipe.model.tokenizer.vocab_size
        config = build_config(name, {} if preset else recipe.model.config, vocab_size=vocab)
    else:
        config = read_model_config(source.model_dir, trust_remote_code=recipe.model.trust_remote_code)
    if preset:
        batch, length = batch_size or 1, seq_len or min(max_positions(config) or 2048, 2048)
    else:
        batch = batch_size or recipe.train.micro_batch_size or recipe.train.batch_size
        length = seq_len or recipe.data.block_size
    return _Subject(name, config, batch, length, recipe)


def describe_budget(
    recipe_path: Path | None,
    preset: str | None,
    overrides: list[str],
    batch_size: int | None,
    seq_len: int | None,
) -> str:
    """`peaufine params`: the budget of a preset, or of a recipe's model, on the meta device."""
    subject = _params_subject(recipe_path, preset, overrides, batch_size, seq_len)
    budget = count_parameters(meta_model(subject.config))
    memory = estimate_memory(subject.config, budget, batch_size=subject.batch, seq_len=subject.length)
    return f"{subject.name} ({subject.config.model_type})\n\n" + format_budget(budget, memory)


def params_adapter(
    recipe_adapter: AdapterBlock,
    kind: str | None = None,
    lora_r: int | None = None,
    lora_targets: list[str] | str | None = None,
    dora: bool = False,
) -> AdapterBlock:
    """The adapter `peaufine params` costs: the recipe's `model.adapter`, its kind replaced by `kind`
    (--adapter) and its LoRA rank, targets and DoRA by --lora, --targets and --dora.

    --lora and --dora mean LoRA (with no --adapter they choose it); a new kind keeps only the recipe's
    settings of that kind (a recipe with LoRA r=16 asked for --adapter ia3 costs PEFT's (IA)3).
    """
    lora_given = lora_r is not None or dora
    chosen = kind or ("lora" if lora_given or lora_targets is not None else recipe_adapter.kind)
    if lora_given and chosen != "lora":
        raise ModelError(f"--lora and --dora set a LoRA adapter, not --adapter {chosen}; drop one")
    if lora_targets is not None and chosen not in ("lora", "ia3"):
        raise ModelError(f"--targets names the layers of a lora or ia3 adapter, not of --adapter {chosen}")
    if chosen not in ADAPTER_KEYS and chosen != "none":
        raise ModelError(
            f"--adapter {chosen}: not an adapter kind; use one of none, {', '.join(ADAPTER_KEYS)}"
        )
    own = ADAPTER_KEYS.get(chosen, ())
    settings = {key: getattr(recipe_adapter, key) for key in own if key in recipe_adapter.model_fields_set}
    if chosen == recipe_adapter.kind:
        settings = {key: getattr(recipe_adapter, key) for key in own}
    if lora_r is not None:
        settings["r"] = lora_r
    if lora_targets is not None:
        settings["target_modules"] = lora_targets
    if dora:
        settings["dora"] = True
    return AdapterBlock(kind=chosen, **settings)


def _adapter_title(adapter: AdapterBlock) -> str:
    """How a budget's header names the adapter."""
    if adapter.kind == "lora":
        targets = adapter.target_modules
        shown = targets if isinstance(targets, str) else ",".join(targets)
        return f"{'DoRA' if adapter.dora else 'LoRA'} r={adapter.r} on {shown}"
    if adapter.kind == "ia3":
        targets = adapter.target_modules
        shown = "PEFT's default layers" if targets == "all-linear" else ",".join(targets)
        return f"(IA)3 on {shown}"
    if adapter.kind == "prompt_tuning":
        return f"a soft prompt of {adapter.num_virtual_tokens} virtual tokens (prompt tuning)"
    width = f"size {adapter.size}" if adapter.size else f"reduction factor {adapter.reduction_factor:g}"
    return f"{adapter.placement} bottleneck adapters ({width})"


def describe_budget_with_adapter(
    recipe_path: Path | None,
    preset: str | None,
    overrides: list[str],
    batch_size: int | None,
    seq_len: int | None,
    kind: str | None = None,
    lora_r: int | None = None,
    lora_targets: list[str] | str | None = None,
    dora: bool = False,
) -> str:
    """`peaufine params --adapter ia3` (or `--lora r=8 --targets q_proj,v_proj`): the budget with an
    adapter on top; its settings come from the recipe's `model.adapter` (or --set) unless given.

    With no adapter (kind none) this is `describe_budget`. Frozen = the base, trainable = the adapter:
    gradients and AdamW state shrink to the adapter's size, while the weights (and activations) stay
    those of the base; a soft prompt also adds its positions to every sequence's activations.
    """
    if kind is not None and any(o.partition("=")[0].strip().startswith("model.adapter.") for o in overrides):
        # --set model.adapter.num_virtual_tokens=20 is a setting of the kind asked for, checked as such
        overrides = [f"model.adapter.kind={kind}", *overrides]
    subject = _params_subject(recipe_path, preset, overrides, batch_size, seq_len)
    adapter = params_adapter(subject.recipe.model.adapter, kind, lora_r, lora_targets, dora)
    if adapter.kind == "none":
        return describe_budget(recipe_path, preset, overrides, batch_size, seq_len)
    budget = adapter_budget(subject.config, adapter)
    memory = estimate_memory(
        subject.config,
        budget,
        batch_size=subject.batch,
        seq_len=subject.length,
        prefix_tokens=adapter.num_virtual_tokens if adapter.kind in PROMPT_LEARNING_KINDS else 0,
    )
    header = (
        f"{subject.name} ({subject.config.model_type}) + {_adapter_title(adapter)}; frozen = the base model"
    )
    return header + "\n\n" + format_budget(budget, memory)


def describe_budget_with_lora(
    recipe_path: Path | None,
    preset: str | None,
    overrides: list[str],
    batch_size: int | None,
    seq_len: int | None,
    lora_r: int | None = None,
    lora_targets: list[str] | str | None = None,
    dora: bool = False,
) -> str:
    """`peaufine params --lora r=8 --targets q_proj,v_proj`: describe_budget_with_adapter for LoRA."""
    return describe_budget_with_adapter(
        recipe_path, preset, overrides, batch_size, seq_len, None, lora_r, lora_targets, dora
    )


# What a budget's module-type table calls the adapter's parameters.
_ADAPTER_ROWS = {
    "lora": "LoRA adapter",
    "ia3": "(IA)3 adapter",
    "prompt_tuning": "soft prompt",
    "bottleneck": "bottleneck adapter",
}


def adapter_budget(config: PreTrainedConfig, adapter: AdapterBlock) -> ParamBudget:
    """Parameters of a model with `adapter` on top, counted on the meta device (no memory, no download).

    apply_adapter itself builds the adapter (PEFT for lora, ia3 and prompt_tuning), so the count is
    its own: r*(in+out) per LoRA layer (+ `out` magnitudes with DoRA), one scale per channel of each
    (IA)3 layer, num_virtual_tokens x hidden size for a soft prompt. Trainable = the adapter, frozen =
    the whole base, total = base + adapter. A soft prompt's start (random or a text's embeddings) does
    not change its size, so it is counted from a random start: no tokenizer needed.
    """

    model = meta_model(config)
    base = count_parameters(model)
    if adapter.kind == "none":
        return base
    if adapter.kind == "prompt_tuning" and adapter.prompt_init == "text":
        adapter = adapter.model_copy(update={"prompt_init": "random", "prompt_init_text": None})
    wrapped_model = apply_adapter(model, adapter)
    wrapped = count_parameters(wrapped_model)
    added = wrapped.total - base.total
    by_type: dict[str, dict[str, int]] = {
        name: {"total": row["total"], "trainable": 0} for name, row in base.by_module_type.items()
    }
    by_type[_ADAPTER_ROWS.get(adapter.kind, f"{adapter.kind} adapter")] = {
        "total": added,
        "trainable": wrapped.trainable,
    }
    return ParamBudget(
        total=wrapped.total,
        trainable=wrapped.trainable,
        by_module_type=by_type,
        active_per_token=_active_with_adapter(wrapped_model, base.active_per_token, added),
        embedding=base.embedding,
    )


def lora_budget(
    config: PreTrainedConfig, r: int, targets: list[str] | str, dora: bool = False
) -> ParamBudget:
    """Parameters of a model with LoRA on top (adapter_budget for kind lora)."""
    return adapter_budget(config, AdapterBlock(kind="lora", r=r, target_modules=targets, dora=dora))


def _active_with_adapter(wrapped: torch.nn.Module, base_active: int | None, added: int) -> int | None:
    """Active parameters per token once an adapter is added to an MoE model (None if dense).

    With "all-linear", PEFT also adapts the fused routed experts, one low-rank pair per expert, so a
    token goes through k/E of those; adapter weights elsewhere (attention, router) see every token.
    """

    if base_active is None:
        return None
    config = peft_base(wrapped).config
    top_k = config.num_experts_per_tok
    num_experts = next(getattr(config, k) for k in _NUM_EXPERTS_KEYS if getattr(config, k, None))
    routed: dict[int, int] = {}
    for name, module in wrapped.named_modules():
        if _is_routed_experts(name, module):
            routed.update({id(p): p.numel() for p in module.parameters() if p.requires_grad})
    routed_adapter = sum(routed.values())
    return base_active + added - routed_adapter + routed_adapter // num_experts * top_k


def lora_trainable_parameters(
    config: PreTrainedConfig, r: int, targets: list[str] | str, dora: bool = False
) -> int:
    """How many parameters LoRA of rank `r` on `targets` trains (`peaufine params --lora r=8`)."""
    return lora_budget(config, r, targets, dora).trainable


def training_budget(model: torch.nn.Module, recipe: Recipe, precision: str) -> dict[str, Any]:
    """What a stage records of the model it trains (budget.json): its parameter counts, counted on the
    model itself with its adapter and freezing, and the training memory estimated for the recipe's
    micro-batch, with a note saying what the estimate assumes."""
    budget = count_parameters(model)
    stage, train = recipe.stage, recipe.train
    sequences = train.micro_batch_size or train.batch_size
    length = recipe.data.block_size if stage == "pretrain" else recipe.data.max_length
    note = f"{sequences} sequences x {length} tokens per micro-batch"
    if stage == "dpo":  # each pair is a chosen and a rejected sequence
        note = f"{sequences} pairs = {2 * sequences} sequences x up to {length} tokens per micro-batch"
        sequences *= 2
    elif stage == "rl":
        rl = recipe.method.rl
        # the rl stage's splits are equal within one rollout: the largest has the ceiling
        sequences = max(1, -(-rl.prompts_per_step * rl.group_size // rl.mini_batches))
        note = f"{sequences} sampled answers x up to {length} tokens per mini-batch; the policy alone"
    elif stage != "pretrain":
        note = f"{sequences} sequences x up to {length} tokens (data.max_length) per micro-batch"
    prefix = prompt_length(model)
    if prefix:
        note += f", each after a soft prompt of {prefix} positions"
    memory = estimate_memory(
        model.config,
        budget,
        batch_size=sequences,
        seq_len=length,
        activation_bytes=2 if precision in ("bf16", "fp16") else 4,
        prefix_tokens=prefix,
    )
    return {"parameters": asdict(budget), "memory": asdict(memory), "note": note}
