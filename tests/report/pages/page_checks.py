"""What the report page tests share: reading a page's tables, images and links back, writing the files a
hand-made run folder holds, and the two run folders they report on (a hand-made sft run, the smoke runs)."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)


def link_targets(page: str) -> list[str]:
    return re.findall(r'<a[^>]*\bhref="([^"#][^"]*)"', page)


def assert_images_relative_and_present(page: str, directory: Path) -> None:
    sources = image_sources(page)
    assert sources, "the page shows no image"
    for source in sources + link_targets(page):
        assert not source.startswith(("/", "file:", "http:", "https:")), source
        assert ":" not in source, source
    for source in sources:
        assert (directory / html.unescape(source)).is_file(), source


def table_rows(page: str, caption: str) -> list[list[str]]:
    """The body rows of the table with this caption, each as its cells' text."""
    start = page.index(f"<caption>{html.escape(caption)}</caption>")
    body = page[start : page.index("</table>", start)]
    body = body[body.index("<tbody>") :]
    rows = re.findall(r"<tr>(.*?)</tr>", body)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in rows
    ]


def key_values(page: str, caption: str) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(page, caption)}


def write_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (30, 120, 200)).save(path)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


BUDGET = "Parameters of the model as the stage trained it (its adapter and freezing applied)"
INJECTED = "<script>alert('injected')</script>"

TINY_RECIPE = """stage: sft
model:
  source: /somewhere/base
train:
  max_steps: 100
  lr: 0.001
  min_lr: 0.0001
  schedule: cosine
  warmup_steps: 10
"""


def make_tiny_run(tmp_path: Path) -> Path:
    """A hand-made sft run that stopped early at step 60 after overfitting from step 30."""
    run = tmp_path / "sft"
    run.mkdir()
    (run / "recipe.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    rows = []
    for step, train, val in [
        (10, 2.0, 2.2),
        (20, 1.5, 1.8),
        (30, 1.2, 1.61),
        (40, 1.0, 1.7),
        (50, 0.8, 1.8),
        (60, 0.7, 1.9),
    ]:
        rows.append({"step": step, "lr": 0.001 * min(1.0, step / 10), "train_loss": train, "val_loss": val})
    write_jsonl(run / "metrics.jsonl", rows)
    write_json(
        run / "env.json",
        {"device": "cpu", "precision": "fp32", "world_size": 1, "threads": 3, "packages": {"torch": "9.9.9"}},
    )
    write_json(run / "prepared.json", {"examples": {"train": {"examples": 17, "truncated": 2}}})
    sample = {"question": "What is 2 & 3?", "answer": "5", "prediction": INJECTED}
    write_json(
        run / "eval.json",
        {
            "stage": "sft",
            "steps": 60,
            "overfitting": {
                "best_step": 30,
                "best_val_loss": 1.61,
                "onset_step": 30,
                "final_step": 60,
                "overfit": True,
                "final_val_loss": 1.9,
                "final_train_loss": 0.7,
                "generalisation_gap": 1.2,
                "restored_best": True,
                "verdict": "overfitting from step 30: validation loss rose from 1.6100 to 1.9000",
            },
            "forgetting": {
                "source": "general.txt",
                "loss_before": 0.5125808,
                "loss_after": 0.6431,
                "relative_change": 0.2547,
                "threshold": 0.1,
                "forgot": True,
                "verdict": "FORGETTING: general loss 0.5126 -> 0.6431 (+25.5%)",
            },
            "transfer": {
                "task_val_loss": {"fine_tuned": 1.61, "base_zero_shot": 4.25},
                "verdict": "fine-tuning improved on the base model zero-shot (4.2500)",
            },
            "answers": {
                "validation": {
                    "before": {"exact_match": 0.0, "f1": 0.1, "n": 1, "samples": [sample]},
                    "after": {
                        "exact_match": 1.0,
                        "f1": 1.0,
                        "n": 1,
                        "samples": [{**sample, "prediction": "5"}],
                    },
                }
            },
        },
    )
    return run


def table_rows_without_caption(page: str, index: int) -> list[list[str]]:
    body = re.findall(r"<table[^>]*>(.*?)</table>", page)[index]
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", body)
    ]


def report_stage_runs(smoke_demo, tmp_path_factory) -> dict[str, Path]:
    """Each smoke stage run, copied without weights and checkpoints (the report reads neither), reported."""
    out = tmp_path_factory.mktemp("reports")
    skip = shutil.ignore_patterns("checkpoints", "data", "world", "adapter", "*.safetensors")
    runs = {}
    for stage in ("pretrain", "sft", "reward", "dpo", "grpo"):
        runs[stage] = out / stage
        shutil.copytree(smoke_demo.out / stage, runs[stage], ignore=skip)
        write_report(runs[stage])
    return runs


def read_page(run: Path) -> str:
    return (run / REPORT_NAME).read_text(encoding="utf-8")
