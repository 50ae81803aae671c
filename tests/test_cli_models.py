"""Every command that takes a model, given a missing, empty, damaged or wrong-kind model folder: one
message naming the folder, exit 2, no traceback, and nothing created on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_cli import run_cli

# the model folders a new user hands over by mistake, and a word each message must contain
BAD_FOLDERS = {
    "missing": "no such folder",
    "a file": "is a file",
    "empty": "holds neither config.json",
    "config not JSON": "config.json",
    "truncated weights": "truncated",
    "corrupt header": "header",
    "pickle only": "pickle",
    "no weights": "no weights",
    "unknown model type": "no-such-architecture",
    "no tokenizer": "tokenizer",
}


def tiny_models(root: Path) -> None:
    """A causal LM and a reward model (one-label sequence classifier), each with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from peaufine.models.tokenizer import train_char

    tokenizer = train_char(["abcdefghijklmnopqrstuvwxyz ?.!"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")


def bad_folder(root: Path, case: str, kind: str = "lm") -> Path:
    """A model folder damaged as `case` says, made from the good one of `kind` ("lm" or "rm")."""
    path = root / f"{kind}-{case.replace(' ', '-')}"
    if path.exists() or case == "missing":
        return path
    if case == "a file":
        path.write_text("not a folder", encoding="utf-8")
        return path
    if case == "empty":
        path.mkdir()
        return path
    shutil.copytree(root / kind, path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    if case == "config not JSON":
        (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ', encoding="utf-8")
    elif case == "truncated weights":
        weights.write_bytes(data[: len(data) - 100])
    elif case == "corrupt header":
        header = bytearray(data)
        header[12:40] = b"\xff" * 28
        weights.write_bytes(bytes(header))
    elif case == "pickle only":
        weights.unlink()
        (path / "pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    elif case == "no weights":
        weights.unlink()
    elif case == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (path / name).unlink(missing_ok=True)
    elif case == "unknown model type":
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        (path / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_models(root)
    data = root / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("a quick brown fox jumps over the lazy dog\n\n" * 40, encoding="utf-8")
    rows = {
        "sft.jsonl": [{"prompt": f"ab {i}", "completion": "de f"} for i in range(20)],
        "pairs.jsonl": [{"prompt": f"ab {i}", "chosen": "de f", "rejected": "gh i"} for i in range(20)],
        "labels.jsonl": [{"text": f"a b {i}", "label": i % 2} for i in range(20)],
        "prompts.jsonl": [{"prompt": f"ab {i}"} for i in range(20)],
        "scored.jsonl": [{"prompt": "ab c", "response": "de f"}] * 4,
    }
    for name, records in rows.items():
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lora_adapter(root)
    return root


STAGE_DATA = {
    "pretrain": "corpus.txt",
    "sft": "sft.jsonl",
    "classify": "labels.jsonl",
    "reward": "pairs.jsonl",
    "dpo": "pairs.jsonl",
    "rl": "prompts.jsonl",
}


def stage_recipe(root: Path, stage: str, model: Path, out: Path, reward_model: Path | None = None) -> Path:
    """A tiny recipe of `stage` starting from `model` (rl: scored by `reward_model` when given)."""
    recipe = {
        "stage": stage,
        "model": {"source": str(model), "tokenizer": {"kind": "source"}},
        "data": {"source": str(root / "data" / STAGE_DATA[stage]), "max_length": 32, "block_size": 16},
        "train": {"max_steps": 2, "batch_size": 2, "device": "cpu", "warmup_steps": 0},
        "eval": {"every": 2, "samples": 0},
    }
    if stage == "rl":
        reward = str(reward_model) if reward_model else "peaufine.methods.rewards:answer_format"
        recipe["method"] = {"rl": {"rewards": [{"source": reward}], "prompts_per_step": 2, "group_size": 2}}
    path = out.with_name(f"recipe-{stage}.yaml")
    path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    return path


def command_line(root: Path, command: str, model: Path, out: Path) -> list[str]:
    """The arguments that run `command` on `model`, writing (if anything) to `out`."""
    data = root / "data"
    if command in STAGE_DATA:
        return [command, str(stage_recipe(root, command, model, out)), "--out", str(out)]
    if command == "rl reward source":
        recipe = stage_recipe(root, "rl", root / "lm", out, reward_model=model)
        return ["rl", str(recipe), "--out", str(out)]
    return {
        "generate": ["generate", str(model), "-p", "ab"],
        "eval": ["eval", str(model), "--data", str(data / "sft.jsonl"), "--out", str(out)],
        "score": ["score", str(model), str(data / "scored.jsonl"), "--out", str(out)],
        "merge": ["merge", str(model), str(root / "lora"), "--out", str(out)],
    }[command]


# what each command needs: a causal LM, a reward model, or any model body (classify and reward train
# a new head on an encoder or a decoder alike, so they have no wrong kind)
WANTS = {
    "pretrain": "lm",
    "sft": "lm",
    "dpo": "lm",
    "rl": "lm",
    "generate": "lm",
    "eval": "lm",
    "merge": "lm",
    "classify": "any",
    "reward": "any",
    "score": "rm",
    "rl reward source": "rm",
}


def listing(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob("*"))


def expect_refusal(
    root: Path, tmp_path: Path, command: str, model: Path, needle: str, capsys, monkeypatch
) -> None:
    """`command` on `model` exits 2 with one message naming the folder, and creates nothing."""
    out = tmp_path / "out"
    args = command_line(root, command, model, out)
    before = listing(root, tmp_path)
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 2, f"exit {code}: {stdout[-300:]} {err[-1500:]}"
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    squashed = "".join(err.split())  # the terminal wraps long paths anywhere
    assert model.name in squashed and needle.replace(" ", "") in squashed, err
    assert listing(root, tmp_path) == before, "something was created or removed"


@pytest.mark.parametrize("command", list(WANTS))
@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_damaged_model_folder_is_refused_before_anything_is_made(
    root, tmp_path, command, case, capsys, monkeypatch
):
    model = bad_folder(root, case, "rm" if WANTS[command] == "rm" else "lm")
    expect_refusal(root, tmp_path, command, model, BAD_FOLDERS[case], capsys, monkeypatch)


@pytest.mark.parametrize("command", [c for c, want in WANTS.items() if want != "any"])
def test_a_model_of_the_wrong_kind_is_refused(root, tmp_path, command, capsys, monkeypatch):
    wrong = root / ("lm" if WANTS[command] == "rm" else "rm")
    needle = "not a reward model" if WANTS[command] == "rm" else "not a causal language model"
    expect_refusal(root, tmp_path, command, wrong, needle, capsys, monkeypatch)


def test_merge_says_a_file_is_a_file(root, tmp_path, capsys, monkeypatch):
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"an adapter file, not its folder")
    out = tmp_path / "merged"
    code, _, err = run_cli(["merge", str(root / "lm"), str(adapter), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert "is a file" in " ".join(err.split()) and not out.exists()


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "a file",
        "empty",
        "config not JSON",
        "unknown model type",
    ],
)
def test_params_of_a_damaged_model_folder_is_one_message(root, tmp_path, case, capsys, monkeypatch):
    """`peaufine params` reads a model folder's config only (its weights may be anything)."""
    model = bad_folder(root, case)
    code, _, err = run_cli(["params", "--set", f"model.source={model}"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert model.name in "".join(err.split()), err


@pytest.mark.parametrize("name", ["run[bold]", "[red]model", "v[/]2", "lm[link=x]"])
def test_a_message_names_a_folder_with_brackets_as_it_is(tmp_path, name, capsys, monkeypatch):
    model = tmp_path / name
    code, _, err = run_cli(["generate", str(model), "-p", "ab"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    assert name in "".join(err.split()), err


def lora_adapter(root: Path) -> Path:
    """A LoRA adapter of the tiny causal LM, saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = root / "lora"
    if not folder.exists():
        model = AutoModelForCausalLM.from_pretrained(root / "lm")
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


DAMAGED_ADAPTERS = {
    "truncated weights": "truncated",
    "corrupt header": "header",
    "config not JSON": "adapter_config.json",
}


@pytest.mark.parametrize("case", list(DAMAGED_ADAPTERS))
def test_merge_refuses_a_damaged_adapter_with_one_message(root, tmp_path, case, capsys, monkeypatch):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapter(root), adapter)
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    if case == "truncated weights":
        weights.write_bytes(data[:-50])
    elif case == "corrupt header":
        weights.write_bytes(data[:12] + b"\xff" * 20 + data[32:])
    else:
        (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", ', encoding="utf-8")
    out = tmp_path / "merged"
    code, _, err = run_cli(["merge", str(root / "lm"), str(adapter), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    squashed = "".join(err.split())
    assert "adapter" in squashed and DAMAGED_ADAPTERS[case].replace(" ", "") in squashed, err
    assert not out.exists()


def test_merge_of_an_intact_adapter_writes_the_merged_model(root, tmp_path, capsys, monkeypatch):
    """The negative control of the damaged adapters."""
    out = tmp_path / "merged"
    code, _, err = run_cli(
        ["merge", str(root / "lm"), str(lora_adapter(root)), "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("prompts", [[""], ["ab", ""]])
def test_generate_refuses_a_prompt_with_no_tokens_naming_it(root, prompts, capsys, monkeypatch):
    args = ["generate", str(root / "lm")]
    for prompt in prompts:
        args += ["-p", prompt]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert f"--prompt {len(prompts)}" in " ".join(err.split()), err


@pytest.mark.parametrize("driver", ["folds", "search"])
@pytest.mark.parametrize("case", ["truncated weights", "wrong kind"])
def test_drivers_refuse_a_damaged_model_before_making_their_folder(
    root, tmp_path, driver, case, capsys, monkeypatch
):
    model = root / "rm" if case == "wrong kind" else bad_folder(root, case)
    recipe = stage_recipe(root, "sft", model, tmp_path / "out")
    out = tmp_path / "out"
    if driver == "folds":
        args = ["sft", str(recipe), "--out", str(out), "--folds", "2"]
    else:
        space = tmp_path / "space.yaml"
        space.write_text("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n", encoding="utf-8")
        args = ["search", str(recipe), "--space", str(space), "--out", str(out), "--trials", "1"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert model.name in "".join(err.split()), err
    assert not out.exists()


def test_a_pipeline_refuses_a_damaged_model_in_its_first_stage_before_making_its_folder(
    root, tmp_path, capsys, monkeypatch
):
    model = bad_folder(root, "truncated weights")
    recipe = stage_recipe(root, "sft", model, tmp_path / "out")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(json.dumps({"name": "p", "stages": [{"name": "sft", "recipe": str(recipe)}]}))
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(pipeline), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert model.name in "".join(err.split()), err
    assert not out.exists()


def test_generate_refuses_an_empty_prompt_with_a_tokenizer_that_adds_bos(root, tmp_path, capsys, monkeypatch):
    """Generation encodes prompts without special tokens: a tokenizer that adds BOS (Llama's) must not
    let an empty prompt through the check as [BOS] and then fail in the model."""
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from peaufine.models.tokenizer import load_tokenizer

    folder = tmp_path / "bos-lm"
    shutil.copytree(root / "lm", folder)
    fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = load_tokenizer(str(folder)).eos_token  # a special token of the vocabulary, put first
    fast.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, fast.token_to_id(bos))]
    )
    fast.save(str(folder / "tokenizer.json"))
    assert load_tokenizer(str(folder))("")["input_ids"]  # the precondition: it adds a token to ""
    code, _, err = run_cli(["generate", str(folder), "-p", ""], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-1500:]
    assert "--prompt 1" in " ".join(err.split()), err
