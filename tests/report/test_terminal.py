"""The terminal tables: the validation loss printed is that of the weights the run saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from peaufine.report.terminal import pretrain_summary
from peaufine.results import PretrainResults


def printed(results: PretrainResults) -> str:
    console = Console(width=200, record=True)
    console.print(pretrain_summary(results, Path("run")))
    return console.export_text()


@pytest.mark.parametrize("restored", [False, True])
def test_the_pretrain_table_says_whose_validation_loss_it_prints(restored):
    results = PretrainResults(
        steps=60,
        tokens_seen=1000,
        train_seconds=1.0,
        final_train_loss=0.7,
        val_loss=1.61 if restored else 1.9,
        val_perplexity=5.0,
        best_step=30,
        restored_best=restored,
    )
    text = printed(results)
    assert ("validation loss (best weights, step 30, restored)" in text) == restored
    assert ("1.6100" if restored else "1.9000") in text
