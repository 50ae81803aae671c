"""Stages: each turns a recipe into a run directory (pretrain; later sft, reward, dpo, rl)."""
