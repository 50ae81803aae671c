"""Evaluation: perplexity, task metrics, fact recall, overfitting, forgetting and transfer."""
