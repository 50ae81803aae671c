"""The command line: fast help, one clear error per bad input (file, line, key), nothing half-written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peaufine import cli


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["peaufine", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_recipe(tmp_path: Path, source: str, **data: object) -> Path:
    extra = "".join(f"\n  {k}: {v}" for k, v in data.items())
    path = tmp_path / "recipe.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        model:
          source: llama-tiny
          config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                    num_attention_heads: 2, num_key_value_heads: 2}}
          tokenizer: {{kind: char}}
        data:
          source: {source}
          block_size: 16{extra}
        train: {{max_steps: 3, batch_size: 2, device: cpu, log_every: 1}}
        eval: {{every: 3, samples: 0}}
        """),
        encoding="utf-8",
    )
    return path


def expect_error(args, capsys, monkeypatch, *needles: str) -> str:
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err
    flat = " ".join(err.split())
    for needle in needles:
        assert needle in flat, f"{needle!r} not in {flat!r}"
    return flat


def test_help_answers_without_importing_torch():
    code = (
        "import sys; from peaufine import cli; "
        "sys.argv=['peaufine','--help']\n"
        "try:\n    cli.main()\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert 'transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout


@pytest.mark.parametrize(
    "command", ["pretrain", "generate", "params", "demo", "reward", "dpo", "rl", "score", "compare"]
)
def test_every_subcommand_has_help(command):
    done = subprocess.run(
        [sys.executable, "-m", "peaufine.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_recipe_typo_names_the_key_and_the_closest(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1.0e-3\n  warmup_step: 10\n", encoding="utf-8")
    expect_error(
        ["pretrain", str(recipe), "--out", str(tmp_path / "run")],
        capsys,
        monkeypatch,
        "train.warmup_step",
        "did you mean 'train.warmup_steps'",
    )
    assert not (tmp_path / "run").exists()


def test_set_override_typo_and_bad_value(tmp_path, capsys, monkeypatch):
    expect_error(
        ["pretrain", "--set", "train.lrr=3e-4", "--out", str(tmp_path / "r")],
        capsys,
        monkeypatch,
        "train.lrr",
        "train.lr",
    )
    expect_error(
        ["pretrain", "--set", "train.schedule=cosin", "--out", str(tmp_path / "r")],
        capsys,
        monkeypatch,
        "train.schedule",
        "'cosine'",
    )


BAD_CORPORA = {
    "empty corpus": ("empty.txt", b"", ["empty.txt"]),
    "not UTF-8": (
        "latin1.txt",
        "fine line\n\nna\u00efve caf\u00e9\n".encode("latin-1"),
        ["latin1.txt", "line 3", "data.anomalies.not_utf8"],
    ),
    "broken JSONL line": (
        "docs.jsonl",
        b'{"text": "one"}\n{"text": "two"}\n{"text": "thr\n{"text": "four"}\n',
        ["docs.jsonl", "line 3", "data.anomalies.bad_json"],
    ),
    "record without the text field": (
        "docs.jsonl",
        b'{"text": "one two three"}\n{"body": "no text here"}\n',
        ["docs.jsonl", "line 2", "field 'text'", "'body'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CORPORA))
def test_bad_corpora_fail_with_file_and_line_and_leave_nothing(case, tmp_path, capsys, monkeypatch):
    name, content, needles = BAD_CORPORA[case]
    corpus = tmp_path / name
    corpus.write_bytes(content)
    out = tmp_path / "run"
    expect_error(
        ["pretrain", str(tiny_recipe(tmp_path, str(corpus))), "--out", str(out)],
        capsys,
        monkeypatch,
        *needles,
    )
    assert not out.exists()
    assert not list(tmp_path.glob(".run.staging*"))


def test_skipping_is_allowed_per_anomaly_kind_and_counted(tmp_path, capsys, monkeypatch):
    import json

    corpus = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document number {i} " * 5}) for i in range(30)]
    lines[4] = '{"text": "broken'
    lines[9] = json.dumps({"body": "no text"})
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_cli(
        [
            "pretrain",
            str(tiny_recipe(tmp_path, str(corpus))),
            "--out",
            str(out),
            "--set",
            "data.anomalies.bad_json=skip",
            "--set",
            "data.anomalies.missing_field=skip",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["anomalies"]["bad_json"] == 1
    assert evaluation["anomalies"]["missing_field"] == 1


def test_block_size_beyond_the_models_positions(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc def ghi\n\njkl mno pqr\n" * 20, encoding="utf-8")
    recipe = tiny_recipe(tmp_path, str(corpus))
    out = tmp_path / "run"
    expect_error(
        ["pretrain", str(recipe), "--out", str(out), "--set", "data.block_size=4096"],
        capsys,
        monkeypatch,
        "data.block_size (4096)",
        "maximum positions (256)",
    )
    assert not out.exists()


def test_an_output_dir_holding_another_run_is_refused(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox\n\njumps over the lazy dog\n" * 30, encoding="utf-8")
    recipe = tiny_recipe(tmp_path, str(corpus))
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    first_model = (out / "model" / "model.safetensors").read_bytes()
    expect_error(
        ["pretrain", str(recipe), "--out", str(out), "--set", "train.lr=5e-4"],
        capsys,
        monkeypatch,
        "already holds a run",
        "--overwrite",
    )
    assert (out / "model" / "model.safetensors").read_bytes() == first_model
    expect_error(
        ["pretrain", str(recipe), "--out", str(out), "--set", "train.lr=5e-4", "--resume"],
        capsys,
        monkeypatch,
        "different recipe",
    )
    code, _, err = run_cli(
        ["pretrain", str(recipe), "--out", str(out), "--set", "train.lr=5e-4", "--overwrite"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "lr: 0.0005" in (out / "recipe.yaml").read_text()


def test_a_folder_that_is_not_a_run_is_never_deleted(tmp_path, capsys, monkeypatch):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete", encoding="utf-8")
    expect_error(["pretrain", "--out", str(out), "--overwrite"], capsys, monkeypatch, "holds no peaufine run")
    assert (out / "thesis.tex").exists()


@pytest.mark.parametrize(
    ("preset", "numbers"),
    [
        ("llama-2-7b", ["6,738,415,616"]),
        ("gpt2", ["124,439,808"]),
        ("mixtral-8x7b", ["46,702,792,704", "12,879,925,248"]),
    ],
)
def test_params_of_named_shapes(preset, numbers, capsys, monkeypatch):
    code, out, err = run_cli(["params", "--preset", preset], capsys, monkeypatch)
    assert code == 0, err
    for number in numbers:
        assert number in out
    assert "Training memory" in out


def test_params_unknown_preset_suggests(capsys, monkeypatch):
    expect_error(["params", "--preset", "llama-2-7"], capsys, monkeypatch, "llama-2-7b")


def test_params_with_lora_on_a_named_shape(capsys, monkeypatch):
    code, out, err = run_cli(
        ["params", "--preset", "llama-2-7b", "--lora", "r=8", "--targets", "q_proj,v_proj"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    flat = " ".join(out.split())
    assert "trainable 4,194,304" in flat
    assert "frozen 6,738,415,616" in flat


@pytest.mark.parametrize("command", ["pretrain", "sft", "dpo"])
def test_a_warmup_as_long_as_the_run_exits_2_and_creates_nothing(tmp_path, capsys, monkeypatch, command):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_steps: 50\n  warmup_steps: 50\n", encoding="utf-8")
    out = tmp_path / "run"
    expect_error(
        [command, str(recipe), "--out", str(out)],
        capsys,
        monkeypatch,
        "train.warmup_steps (50)",
        "train.max_steps (50)",
    )
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
