"""What the compare tests share: a tiny study on the synthetic world (a 2-layer model pretrained for 8
steps into OUT/base, then 4 steps of each arm), written from a literal with arms and keys to change."""

from __future__ import annotations

import textwrap
from pathlib import Path

BASE = """\
base:
  stage: pretrain
  model:
    source: llama-tiny
    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
             num_key_value_heads: 2}
    tokenizer: {kind: bpe, vocab_size: 320}
  data:
    source: world
    world: {seed: 0, size: smoke, documents: 40, faq_documents: 10}
    block_size: 32
  train: {device: cpu, precision: fp32, max_steps: 8, warmup_steps: 1, batch_size: 8, lr: 1.0e-2,
          log_every: 4}
  eval: {every: 8, samples: 0}
task:
  stage: sft
  data: {source: world, validation_fraction: 0.1, max_length: 48}
  train: {device: cpu, precision: fp32, log_every: 2}
  eval: {every: 2, answers: 6, forgetting: {max_blocks: 4}}
budget: {steps: 4, batch_size: 4}
"""

ARMS = """\
arms:
  - {name: full, strategy: full}
  - {name: freeze, strategy: freeze}
  - {name: lora, strategy: lora}
  - {name: dora, strategy: dora}
  - {name: few, strategy: few_shot, k: 2}
  - {name: scratch, strategy: scratch}
"""


def write_study(folder: Path, extra: str = "", arms: str = ARMS, base: str = BASE) -> Path:
    """study.yaml in `folder`: the tiny world study, its arms, and `extra` top-level keys."""
    path = Path(folder) / "study.yaml"
    path.write_text(base + textwrap.dedent(arms) + textwrap.dedent(extra), encoding="utf-8")
    return path
