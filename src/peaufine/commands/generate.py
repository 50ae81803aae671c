"""`peaufine generate`: text from a model peaufine trained or any local Hugging Face causal LM, greedy or
sampled, optionally through its chat template."""

from __future__ import annotations

from pathlib import Path

from peaufine.errors import DataError, ModelError
from peaufine.models.build import load_pretrained, resolve_source
from peaufine.models.generate import generate_texts
from peaufine.models.tokenizer import load_tokenizer


def generate_from(source: Path, prompts: list[str], **sampling: object) -> list[str]:
    """The continuation of each prompt by the model at `source` (a run or model folder); `sampling`
    goes to models.generate.generate_texts (max_new_tokens, temperature, top_k, top_p, seed, ...)."""
    resolved = resolve_source(str(source), "generate")
    if resolved.model_dir is None:
        raise ModelError(f"{source}: generate needs a trained model (a run or model folder), not a preset")
    tokenizer = load_tokenizer(str(resolved.model_dir))
    if not sampling.get("chat"):  # a chat template always adds its own tokens around the prompt
        for number, prompt in enumerate(prompts, start=1):
            # as generate_texts encodes it: a tokenizer's BOS is not added, so it cannot stand in
            if not tokenizer(prompt, add_special_tokens=False)["input_ids"]:
                raise DataError(
                    f"--prompt {number} ({prompt!r}) encodes to no tokens, and a model needs at least one "
                    "to continue from; give some text, or --chat to wrap it in the chat template"
                )
    model = load_pretrained(resolved.model_dir, key="generate")
    return generate_texts(model, tokenizer, prompts, **sampling)
