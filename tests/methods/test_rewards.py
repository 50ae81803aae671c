"""Tests of reward functions: loading "module:function" specs and built-ins, the error each broken spec or
reward gives (naming the function and sample), and the built-in rewards against the world annotator."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from peaufine.data.world import candidate_objects, generate_world
from peaufine.data.world_preferences import annotator_scores, preference_rankings
from peaufine.errors import RecipeError, TrainingError
from peaufine.methods.rewards import (
    annotator,
    answer_format,
    call_reward_function,
    exact_answer,
    load_reward_function,
)

PROMPTS = ["What is 2 plus 3?", "What is 4 plus 4?", "What is 1 plus 1?", "What is 9 plus 9?"]
COMPLETIONS = ["5", "It is 8.", "3", "18"]
ANSWERS = ["5", "8", "2", "18"]


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module `my_rewards` on sys.path, with good and broken reward functions; returns its name."""
    source = textwrap.dedent(
        """
        import math

        NOT_A_FUNCTION = 3

        def length_penalty(prompts, completions, **kwargs):
            return [-len(c) / 10 for c in completions]

        def uses_column(prompts, completions, answer, **kwargs):
            return [float(c == a) for c, a in zip(completions, answer)]

        def says_abc_at_3(prompts, completions, **kwargs):
            return [1.0, 0.0, 1, "abc"]

        def nan_at_1(prompts, completions, **kwargs):
            return [0.0, math.nan, 1.0, 1.0]

        def one_short(prompts, completions, **kwargs):
            return [1.0] * (len(completions) - 1)

        def a_number(prompts, completions, **kwargs):
            return 1.0

        def raises(prompts, completions, **kwargs):
            raise ZeroDivisionError("division by zero in my reward")
        """
    )
    (tmp_path / "my_rewards.py").write_text(source, encoding="utf-8")
    (tmp_path / "broken_rewards.py").write_text("import not_a_real_package_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    for name in ("my_rewards", "broken_rewards"):
        sys.modules.pop(name, None)


def _call(spec: str, completions: list[str] = COMPLETIONS) -> list[float]:
    return call_reward_function(load_reward_function(spec), spec, PROMPTS, completions, {"answer": ANSWERS})


def test_loads_a_function_from_a_module_and_passes_columns(reward_module: str) -> None:
    assert _call(f"{reward_module}:length_penalty") == pytest.approx([-0.1, -0.8, -0.1, -0.2])
    assert _call(f"{reward_module}:uses_column") == [1.0, 0.0, 0.0, 1.0]
    assert load_reward_function(" peaufine.methods.rewards:exact_answer ") is exact_answer


def test_builtins_by_short_name() -> None:
    assert load_reward_function("exact_answer") is exact_answer
    assert load_reward_function("annotator") is annotator
    assert load_reward_function("answer_format") is answer_format


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exact", r"'exact': expected 'package.module:function' or a built-in \(exact_answer"),
        ("my_rewards.length_penalty", "expected 'package.module:function'"),
        (":length_penalty", "expected 'package.module:function'"),
        ("my_rewards:", "expected 'package.module:function'"),
        (
            "no_such_module_xyz:f",
            "module 'no_such_module_xyz' does not import "
            r"\(ModuleNotFoundError: No module named 'no_such_module_xyz'\)",
        ),
        (
            "broken_rewards:f",
            r"module 'broken_rewards' does not import \(ModuleNotFoundError: "
            "No module named 'not_a_real_package_xyz'",
        ),
        (
            "my_rewards:missing",
            "module 'my_rewards' has no attribute 'missing' "
            r"\(its public callables: a_number, length_penalty, nan_at_1",
        ),
        ("my_rewards:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is not callable \(it is of type int\)"),
    ],
)
def test_bad_specs_name_the_spec_and_what_failed(reward_module: str, spec: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as caught:
        load_reward_function(spec)
    assert f"reward function {spec!r}" in str(caught.value)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            "says_abc_at_3",
            r"returned 'abc' \(str\) for sample 3: prompt 'What is 9 plus 9\?', completion '18'",
        ),
        (
            "nan_at_1",
            r"returned nan \(float\) for sample 1: prompt 'What is 4 plus 4\?', completion 'It is 8.'",
        ),
        ("one_short", "returned 3 values for 4 completions"),
        ("a_number", r"returned 1.0 \(float\); it must return a list of 4 numbers"),
        (
            "raises",
            r"raised ZeroDivisionError: division by zero in my reward on a batch of 4 completions "
            r"\(first prompt 'What is 2 plus 3\?'\)",
        ),
    ],
)
def test_broken_rewards_name_the_function_and_sample(reward_module: str, function: str, message: str) -> None:
    spec = f"{reward_module}:{function}"
    with pytest.raises(TrainingError, match=message) as caught:
        _call(spec)
    assert str(caught.value).startswith(f"reward function {spec!r} ")


def test_numeric_kinds_are_accepted_and_counted_bad_ones_reported() -> None:
    values = [True, np.float32(0.5), np.int64(2), torch.tensor(0.25)]
    assert call_reward_function(lambda **_: values, "mixed", PROMPTS, COMPLETIONS, {}) == [
        1.0,
        0.5,
        2.0,
        0.25,
    ]
    assert call_reward_function(lambda **_: np.array([1, 0, 1, 0]), "array", PROMPTS, COMPLETIONS, {}) == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    assert call_reward_function(lambda **_: torch.ones(4), "tensor", PROMPTS, COMPLETIONS, {}) == [1.0] * 4
    bad = [math.inf, None, torch.tensor([1.0, 2.0]), 1j]
    with pytest.raises(TrainingError, match=r"returned inf \(float\) for sample 0 \(and 3 more samples\)"):
        call_reward_function(lambda **_: bad, "bad", PROMPTS, COMPLETIONS, {})
    with pytest.raises(TrainingError, match=r"returned 'five' \(str\); it must return a list"):
        call_reward_function(lambda **_: "five", "text", PROMPTS, COMPLETIONS, {})


def test_long_prompts_are_cut_in_messages() -> None:
    prompts = ["x" * 1000, *PROMPTS[1:]]
    with pytest.raises(TrainingError) as caught:
        call_reward_function(lambda **_: [None, 1, 1, 1], "cut", prompts, COMPLETIONS, {})
    assert "xxx..." in str(caught.value)
    assert len(str(caught.value)) < 500


def test_exact_answer_normalises_case_spacing_and_trailing_punctuation() -> None:
    completions = ["Kelburg", " kelburg. ", "KELBURG!", "Kelburg is the answer", "Kel burg", "15"]
    answers = ["Kelburg"] * 5 + ["5"]
    assert exact_answer(PROMPTS, completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_answer_format_wants_one_short_line() -> None:
    completions = [
        "Kelburg",
        "It is Kelburg.\n",
        "one two three four five six",
        "one two three four five six seven",
        "Kelburg\nTresk",
        "",
        "   ",
    ]
    assert answer_format([""] * len(completions), completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_annotator_reward_is_the_annotators_score_over_three() -> None:
    world = generate_world(seed=0, size="smoke")
    rankings = preference_rankings(world, "qa_train")
    prompts = [r.question for r in rankings for _ in r.responses]
    completions = [response for r in rankings for response in r.responses]
    answers = [r.answer for r in rankings for _ in r.responses]
    candidates = [
        candidate_objects(world, world.fact(r.fact_id).object_type) for r in rankings for _ in r.responses
    ]
    rewards = call_reward_function(
        load_reward_function("annotator"),
        "annotator",
        prompts,
        completions,
        {"answer": answers, "candidates": candidates},
    )
    assert rewards == [1.0, 2 / 3, 1 / 3, 0.0] * len(rankings)
    expected = annotator_scores(world, list(zip(prompts, answers, strict=True)), completions)
    assert rewards == [score / 3 for score in expected]


def test_a_suite_sums_its_weighted_sources_and_keeps_each_ones_scores() -> None:
    from types import SimpleNamespace

    from peaufine.methods.rewards import RewardSuite

    suite = RewardSuite(
        [
            SimpleNamespace(source="exact_answer", weight=2.0),
            SimpleNamespace(source="answer_format", weight=0.5),
        ]
    )
    prompts = [[{"role": "user", "content": "What is 2 plus 3?"}]] * 2
    totals, per_source = suite.score(
        prompts, ["5", "it is six, or maybe seven or eight today"], {"answer": ["5", "5"]}
    )
    assert per_source == {"exact_answer": [1.0, 0.0], "answer_format": [1.0, 0.0]}
    assert totals == [2.5, 0.0]
