"""Reward functions for RL: loading a recipe's "module:function" (or a built-in by short name), calling it
with TRL's convention and checking what it returns, and the built-in rewards for the synthetic world."""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from peaufine.data.world_preferences import MAX_ANNOTATOR_SCORE, annotator_score, normalize_response
from peaufine.errors import RecipeError, TrainingError
from peaufine.methods.reward import RewardScorer
from peaufine.models.build import looks_like_path

RewardFunction = Callable[..., Sequence[float]]
MAX_ANSWER_WORDS = 6
# Prompts and completions quoted in an error message are cut to this many characters.
_QUOTE_CHARS = 160


def exact_answer(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_
) -> list[float]:
    """1.0 where the completion, normalised (case, spacing, trailing punctuation), is the answer."""
    return [
        float(normalize_response(completion) == normalize_response(gold))
        for completion, gold in zip(completions, answer, strict=True)
    ]


def answer_format(prompts: Sequence[str], completions: Sequence[str], **_) -> list[float]:
    """1.0 where the completion is a short answer: one line of 1 to MAX_ANSWER_WORDS words."""
    return [
        float("\n" not in completion.strip() and 1 <= len(completion.split()) <= MAX_ANSWER_WORDS)
        for completion in completions
    ]


def annotator(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[str],
    candidates: Sequence[Sequence[str]],
    **_,
) -> list[float]:
    """The world annotator's score of each completion, scaled to [0, 1]; `candidates` holds each
    sample's objects of the answer's type (its distractors)."""
    return [
        annotator_score(completion, gold, type_candidates) / MAX_ANNOTATOR_SCORE
        for completion, gold, type_candidates in zip(completions, answer, candidates, strict=True)
    ]


BUILTIN_REWARDS: dict[str, RewardFunction] = {
    "exact_answer": exact_answer,
    "annotator": annotator,
    "answer_format": answer_format,
}


def load_reward_function(spec: str) -> RewardFunction:
    """The function a recipe names: a built-in short name, or "package.module:function".

    RecipeError names the spec and what failed: its form, the import (with the exception), the
    attribute, or that the attribute is not callable.
    """
    spec = spec.strip()
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute or ":" in attribute:
        raise RecipeError(
            f"reward function {spec!r}: expected 'package.module:function' or a built-in "
            f"({', '.join(BUILTIN_REWARDS)})"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RecipeError(
            f"reward function {spec!r}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {exc}); install it or put its folder on PYTHONPATH"
        ) from exc
    if not hasattr(module, attribute):
        defined = sorted(
            name for name, value in vars(module).items() if callable(value) and not name.startswith("_")
        )
        raise RecipeError(
            f"reward function {spec!r}: module {module_name!r} has no attribute {attribute!r} "
            f"(its public callables: {', '.join(defined) or 'none'})"
        )
    function = getattr(module, attribute)
    if not callable(function):
        raise RecipeError(
            f"reward function {spec!r}: {attribute!r} is not callable "
            f"(it is of type {type(function).__name__})"
        )
    return function


def call_reward_function(
    fn: RewardFunction,
    name: str,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
) -> list[float]:
    """`fn(prompts=..., completions=..., **columns)`, checked: one finite number per completion.

    A broken reward surfaces mid-run, on real samples, so the error is a TrainingError (the run stops
    and keeps its last checkpoint) naming the function `name`, the offending sample's index, prompt
    and completion, and what came back; an exception inside `fn` becomes one naming the exception.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    for column, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"column {column!r} has {len(values)} values for {len(completions)} completions")
    where = f"reward function {name!r}"
    try:
        returned = fn(prompts=prompts, completions=completions, **columns)
    except Exception as exc:
        raise TrainingError(
            f"{where} raised {type(exc).__name__}: {exc} on a batch of {len(completions)} completions "
            f"(first prompt {_quote(prompts[0]) if prompts else 'none'})"
        ) from exc
    if isinstance(returned, (str, bytes, dict)) or not _is_iterable(returned):
        raise TrainingError(
            f"{where} returned {_quote(returned)} ({type(returned).__name__}); "
            f"it must return a list of {len(completions)} numbers, one per completion"
        )
    values = list(returned)
    if len(values) != len(completions):
        raise TrainingError(
            f"{where} returned {len(values)} values for {len(completions)} completions; "
            "it must return one number per completion, in order"
        )
    rewards = [_as_finite_number(value) for value in values]
    bad = [i for i, reward in enumerate(rewards) if reward is None]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more samples)" if len(bad) > 1 else ""
        raise TrainingError(
            f"{where} returned {_quote(values[i])} ({type(values[i]).__name__}) for sample {i}{more}: "
            f"prompt {_quote(prompts[i])}, completion {_quote(completions[i])}; "
            "a reward must be a finite number"
        )
    return rewards  # type: ignore[return-value]


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _as_finite_number(value: Any) -> float | None:
    """`value` as a float if it is one finite real (bool, int, float, numpy scalar, 0-d tensor)."""
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


__all__ = [
    "BUILTIN_REWARDS",
    "MAX_ANSWER_WORDS",
    "RewardFunction",
    "annotator",
    "answer_format",
    "call_reward_function",
    "exact_answer",
    "load_reward_function",
]


def last_user_turn(prompt: str | list[dict[str, str]]) -> str:
    """What a reward function sees of a prompt: its last user turn (or the raw text)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


class RewardSuite:
    """The weighted sum of a recipe's reward sources (method.rl.rewards): reward-model folders and
    Python functions, with each source's scores kept for the log."""

    def __init__(self, sources: Sequence[Any], device: Any = "cpu") -> None:
        """`sources`: items with `.source` (a folder or a function spec) and `.weight`."""
        from pathlib import Path

        self.sources: list[tuple[str, float, Any]] = []
        for item in sources:
            folder = Path(item.source).expanduser()
            if looks_like_path(item.source):
                scorer = RewardScorer.load(folder, device=str(device))
                self.sources.append(("reward_model:" + folder.resolve().name, item.weight, scorer))
            else:
                self.sources.append((item.source, item.weight, load_reward_function(item.source)))

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], columns: dict[str, list[Any]]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Per completion: the total reward, and each source's scores (name -> list). Reward models
        read the prompt as given (chat messages through their own template); functions get its text."""

        per_source: dict[str, list[float]] = {}
        texts = [last_user_turn(p) for p in prompts]
        for name, _, scorer in self.sources:
            if isinstance(scorer, RewardScorer):
                per_source[name] = scorer.score(list(prompts), list(completions))
            else:
                per_source[name] = call_reward_function(scorer, name, texts, list(completions), columns)
        totals = [
            sum(weight * per_source[name][i] for name, weight, _ in self.sources)
            for i in range(len(completions))
        ]
        return totals, per_source
