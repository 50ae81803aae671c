"""What a model folder must hold before anything loads it: a config.json transformers reads, whole
safetensors weights (checked from their header, never a pickle), and the kind of model a command needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peaufine.errors import ModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


ModelKind = Literal["causal_lm", "reward_model", "any"]

# Suffixes of transformers' class names for causal LMs (LlamaForCausalLM, GPT2LMHeadModel, ...): what
# `architectures` in a config.json says about the weights beside it.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# bytes per element of each safetensors dtype, to check a header's offsets against its shapes
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
SUB_BYTE_DTYPES = {"F4", "F6_E2M3", "F6_E3M2"}  # packed: no whole bytes per element to check


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with the safetensors file `path`, or None; reads its header only.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and [begin, end) byte offsets, then the data: a truncated copy, a damaged header or offsets
    that disagree with the shapes are found here in microseconds, before any library maps the file.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, too short for a safetensors header (truncated)"
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            return f"its header claims {length} bytes but the file has {size} (truncated or not safetensors)"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in entry["data_offsets"])
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            dtype = entry["dtype"]
            width = SAFETENSORS_DTYPE_BYTES.get(dtype)
        except (TypeError, KeyError, ValueError):
            return f"its header entry for {name!r} is malformed"
        if width is None and dtype not in SUB_BYTE_DTYPES:
            return f"its header gives {name!r} the unknown dtype {dtype!r}"
        if not 0 <= begin <= stop or (width is not None and stop - begin != count * width):
            return f"its header entry for {name!r} has offsets that do not fit its shape"
        spans.append((begin, stop, name))
    end = max((stop for _, stop, _ in spans), default=0)
    if 8 + length + end > size:
        return f"its tensors need {8 + length + end} bytes but the file has {size} (truncated)"
    if 8 + length + end < size:
        return f"its tensors end at byte {8 + length + end} but the file has {size} (bytes after them)"
    # safetensors reads only files whose tensors follow one another with no gap and no overlap
    position = 0
    for begin, stop, name in sorted(spans):
        if begin != position:
            return f"its header leaves a gap or an overlap before {name!r} (at {begin}, not {position})"
        position = stop
    return None


def _weight_files(directory: Path, key: str) -> list[Path]:
    """The safetensors files of a model folder (a sharded model's from its index), each present."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{key}: {index} is not a valid safetensors index ({exc})") from None
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise ModelError(f"{key}: {directory} misses the weight shard {missing[0]} named by {index.name}")
        return [directory / name for name in shards]
    files = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith("adapter_model"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{key}: {directory} holds pickle weights only ({', '.join(pickles)}); peaufine never loads "
            "a pickle (unpickling can run any code): convert the checkpoint to safetensors with "
            "transformers' save_pretrained(folder, safe_serialization=True)"
        )
    raise ModelError(
        f"{key}: {directory} has no weights (no .safetensors file beside config.json); save the model "
        "with transformers' save_pretrained"
    )


# A model whose adapter cannot be folded into its weights (bottleneck adapters, soft prompts) is saved as
# base/ (a plain transformers folder) + adapter/ + README.md, with this file naming the parts and no
# top-level config.json, so plain transformers cannot load the bare base in the adapted model's place.
ADAPTED_MODEL = "adapted_model.json"


def adapted_parts(directory: Path) -> tuple[Path, Path, str] | None:
    """(base folder, adapter folder, adapter kind) of an adapted-model folder, or None for any other
    folder; a damaged adapted_model.json is a ModelError naming it."""
    marker = Path(directory) / ADAPTED_MODEL
    if not marker.is_file():
        return None
    try:
        spec = json.loads(marker.read_text(encoding="utf-8"))
        base, adapter, kind = spec["base"], spec["adapter"], spec["adapter_kind"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{marker} is damaged ({exc}); train the run again or restore the file") from None
    if not all(isinstance(x, str) and x and "/" not in x and ".." not in x for x in (base, adapter)):
        raise ModelError(f"{marker}: base and adapter must name sub-folders of {directory}")
    return Path(directory) / base, Path(directory) / adapter, str(kind)


def is_model_folder(directory: Path) -> bool:
    """A folder that holds a model: a Hugging Face one (config.json) or an adapted one."""
    return (Path(directory) / "config.json").is_file() or (Path(directory) / ADAPTED_MODEL).is_file()


def _check_adapter_folder(adapter: Path, key: str) -> None:
    """The adapter half of an adapted model: its config and whole safetensors weights."""
    configs = [adapter / name for name in ("adapter_config.json", "bottleneck_config.json")]
    if not any(path.is_file() for path in configs):
        raise ModelError(
            f"{key}: {adapter} holds no adapter_config.json or bottleneck_config.json; the adapted model "
            "is incomplete: train the run again"
        )
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{key}: {adapter} holds no adapter_model.safetensors; train the run again")
    problem = safetensors_problem(weights)
    if problem:
        raise ModelError(f"{key}: {weights} is damaged: {problem}; train the run again")


def check_model_folder(
    directory: Path, *, key: str = "model.source", kind: ModelKind = "any", trust_remote_code: bool = False
) -> None:
    """Refuse a model folder that cannot be loaded as `kind`, with a message naming it, before any run
    folder exists: config.json must be a JSON object of a model type transformers knows, the
    safetensors weights whole (header and size), and the architecture in config.json the kind the
    command needs (a causal LM, or a reward model: a sequence classifier with one output)."""
    directory = Path(directory)
    parts = adapted_parts(directory)
    if parts is not None:
        base, adapter, _ = parts
        check_model_folder(base, key=key, kind=kind, trust_remote_code=trust_remote_code)
        _check_adapter_folder(adapter, key)
        return
    config_file = directory / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{key}: {directory} holds no config.json; give a Hugging Face model folder"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{key}: {config_file} is not valid JSON ({exc}); re-save the model") from None
    if not isinstance(config, dict):
        raise ModelError(f"{key}: {config_file} is not a JSON object; re-save the model")
    read_model_config(directory, key=key, trust_remote_code=trust_remote_code)
    for weights in _weight_files(directory, key):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelError(f"{key}: {weights} is damaged: {problem}; copy or save the model again")
    architectures = [str(a) for a in config.get("architectures") or []]
    named = ", ".join(architectures)
    if (
        kind == "causal_lm"
        and architectures
        and not any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures)
    ):
        raise ModelError(
            f"{key}: {directory} holds a {named}, not a causal language model: its weights have no "
            "language-model head; give a causal LM folder (a pretrain, sft, dpo or rl run's)"
        )
    if kind == "reward_model":
        labels = config.get("id2label")
        outputs = len(labels) if isinstance(labels, dict) else config.get("num_labels", 2)
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or outputs != 1:
            what = named or "model with no architectures in its config.json"
            raise ModelError(
                f"{key}: {directory} holds a {what} with {outputs} output(s), not a reward model (a "
                "sequence classifier with one output, such as a reward run's); its score head would "
                "be untrained: train one with `peaufine reward`"
            )


def read_model_config(
    directory: Path, *, key: str = "model.source", trust_remote_code: bool = False, **overrides: Any
) -> PretrainedConfig:
    """The transformers config of the model folder `directory` (with `overrides`), or a ModelError
    naming it: a config.json that is not JSON, or names a model type this transformers lacks."""
    from transformers import AutoConfig

    parts = adapted_parts(directory)
    if parts is not None:
        directory = parts[0]
    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code, **overrides)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{key}: cannot read the config in {directory}: {first_line}") from None
