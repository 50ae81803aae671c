"""Models: presets and building, tokenizers, adapters, and parameter/memory accounting."""
