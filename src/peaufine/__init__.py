"""peaufine: one engine to pretrain, fine-tune and align language models, and to say whether it helped."""

# Importing the package is cheap: heavy libraries (torch, transformers) load inside the functions
# that use them.

__version__ = "0.1.0"
