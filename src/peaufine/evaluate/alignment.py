"""What alignment did to a policy's answers on the world: exact match and the annotator's score of its
answers to questions, by the same rule that ranked the preference data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from peaufine.data.tokenize import generation_prompt
from peaufine.data.world import qa_pairs
from peaufine.data.world_preferences import annotator_scores
from peaufine.evaluate.answers import answer_questions
from peaufine.models.generate import generate_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.data.world import World


def answer_quality(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    questions_answers: Sequence[tuple[str, str]],
    samples: int = 4,
) -> dict[str, Any]:
    """Answers to world questions scored by the annotator's rule (0 off topic, 1 wrong, 2 right but
    rambling, 3 concise and right): greedy answers (with exact match and F1), and `samples` sampled
    answers per question at temperature 1, the policy's whole distribution, which is what preference
    training reshapes."""

    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in questions_answers
    ]
    metrics = answer_questions(model, tokenizer, conversations)
    greedy = annotator_scores(world, questions_answers, [s["prediction"] for s in metrics.samples])
    prompts = [generation_prompt(tokenizer, c[:-1]) for c in conversations]
    sampled = generate_texts(
        model,
        tokenizer,
        [p for p in prompts for _ in range(samples)],
        max_new_tokens=24,
        temperature=1.0,
        top_k=0,
    )
    repeated = [qa for qa in questions_answers for _ in range(samples)]
    sampled_scores = annotator_scores(world, repeated, sampled)
    return {
        **metrics.as_dict(),
        "annotator_score": sum(greedy) / len(greedy) if greedy else None,
        "annotator_score_sampled": sum(sampled_scores) / len(sampled_scores) if sampled_scores else None,
    }


def world_answer_quality(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    split: str,
    max_questions: int | None = None,
    samples: int = 4,
) -> dict[str, Any]:
    """`answer_quality` on the world's questions of `split` (one phrasing per fact)."""

    pairs = qa_pairs(world, split)[:max_questions]
    return answer_quality(model, tokenizer, world, [(p.question, p.answer) for p in pairs], samples)
