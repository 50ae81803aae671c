"""The model-folder check: a damaged safetensors file is found from its header before any library maps it,
and an intact one always passes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from peaufine.errors import ModelError
from peaufine.models.folders import check_model_folder, safetensors_problem


def weights_file(path: Path) -> bytes:
    import torch
    from safetensors.torch import save_file

    tensors = {
        "embed.weight": torch.arange(24, dtype=torch.float32).reshape(6, 4),
        "norm.weight": torch.ones(4, dtype=torch.bfloat16),
        "step": torch.tensor([3], dtype=torch.int64),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def safetensors_accepts(path: Path) -> bool:
    """The reference: safetensors itself opens the file and reads every tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                handle.get_tensor(name)
    except Exception:
        return False
    return True


def test_an_intact_file_passes_and_every_truncation_is_found(tmp_path):
    path = tmp_path / "model.safetensors"
    data = weights_file(path)
    assert safetensors_problem(path) is None and safetensors_accepts(path)  # the negative control
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        assert safetensors_problem(path) is not None, f"a copy cut at {cut} of {len(data)} bytes passes"


def test_the_check_is_at_least_as_strict_as_safetensors_on_damaged_headers(tmp_path):
    """Random bytes written over the header: whatever the check lets through, safetensors opens."""
    path = tmp_path / "model.safetensors"
    data = weights_file(path)
    header_end = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    found = 0
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(header_end)] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        problem = safetensors_problem(path)
        found += problem is not None
        assert problem is not None or safetensors_accepts(path), bytes(damaged[:header_end])
    assert found > 150  # most damage is found (the rest lands in spaces or digits that still fit)


@pytest.mark.parametrize(
    ("architecture", "labels", "kind", "refused"),
    [
        ("LlamaForCausalLM", None, "causal_lm", False),
        ("GPT2LMHeadModel", None, "causal_lm", False),
        ("LlamaForSequenceClassification", 1, "causal_lm", True),
        ("BertModel", None, "causal_lm", True),
        ("LlamaForSequenceClassification", 1, "reward_model", False),
        ("LlamaForSequenceClassification", 3, "reward_model", True),
        ("LlamaForCausalLM", None, "reward_model", True),
        ("BertModel", None, "any", False),
    ],
)
def test_the_kind_a_command_needs_is_read_from_config_json(tmp_path, architecture, labels, kind, refused):
    import json

    weights_file(tmp_path / "model.safetensors")
    config = {"architectures": [architecture], "model_type": "bert" if "Bert" in architecture else "llama"}
    if labels is not None:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if refused:
        with pytest.raises(ModelError, match="not a"):
            check_model_folder(tmp_path, kind=kind)
    else:
        check_model_folder(tmp_path, kind=kind)


@pytest.mark.parametrize("extra", [1, 8, 64, 4096])
def test_bytes_after_the_last_tensor_are_found_as_safetensors_finds_them(tmp_path, extra):
    """A file longer than its tensors (a bad copy, two files concatenated) is refused by safetensors
    when the model loads ('file not fully covered'): the check must refuse it before that."""
    path = tmp_path / "model.safetensors"
    data = weights_file(path)
    path.write_bytes(data + b"\0" * extra)
    assert not safetensors_accepts(path)  # the reference refuses it
    assert safetensors_problem(path) is not None


def test_a_gap_between_tensors_is_found(tmp_path):
    """Offsets that leave bytes between two tensors (the file's size still matching) are refused."""
    import json

    path = tmp_path / "model.safetensors"
    data = weights_file(path)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    header[first]["data_offsets"] = [o + 4 for o in header[first]["data_offsets"]]  # starts 4 bytes late
    for name, entry in header.items():  # the tensors after it move on too
        if (
            name not in ("__metadata__", first)
            and entry["data_offsets"][0] >= header[first]["data_offsets"][0] - 4
        ):
            entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4 + data[8 + length :])
    assert not safetensors_accepts(path)
    assert safetensors_problem(path) is not None
