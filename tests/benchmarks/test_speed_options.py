"""The speed-options benchmark's quick mode end to end: every configuration ran in its own process, the
table and the RESULT line agree, and options that must not change results did not. Timings are printed,
never asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "speed_options.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_quick_mode_prints_a_table_that_parses_and_matches_the_result_line():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    lines = done.stdout.splitlines()
    results = [line for line in lines if line.startswith("RESULT ")]
    assert len(results) == 1
    result = json.loads(results[0].removeprefix("RESULT "))
    assert result["quick"] is True and result["threads"] == 1 and result["device"] == "cpu"

    header = next(i for i, line in enumerate(lines) if line.startswith("| configuration |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    assert columns[:3] == ["configuration", "tokens/s", "× baseline"]
    rows = {}
    for line in lines[header + 2 :]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(columns)
        rows[cells[0]] = dict(zip(columns, cells, strict=True))
    assert (
        list(rows)
        == list(result["configurations"])
        == [
            "pretrain-64k:baseline",
            "pretrain-64k:chunked-ce",
            "sft-lora:baseline",
        ]
    )
    for name, row in rows.items():
        measured = result["configurations"][name]
        assert float(row["tokens/s"].replace(",", "")) == round(measured["tokens_per_s"]) > 0
        assert re.fullmatch(r"[\d,]+", row["peak RSS MB"])
    assert rows["pretrain-64k:baseline"]["× baseline"] == "1.00"
    # the chunked loss trains the same model the same way: the step losses agree to rounding
    assert result["configurations"]["pretrain-64k:chunked-ce"]["loss_gap"] < 1e-5


def test_an_unknown_configuration_is_refused():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "pretrain:turbo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2 and "unknown configuration 'pretrain:turbo'" in done.stderr
