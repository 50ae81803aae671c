"""Data: sources, record formats, tokenization, batching, and the synthetic world."""
