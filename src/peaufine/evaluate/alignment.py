"""What alignment did to a policy's answers on the world: exact match and the annotator's score of its
greedy answers to questions, the same rule that ranked the preference data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.data.world import World


def world_answer_quality(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    split: str,
    max_questions: int | None = None,
    samples: int = 4,
) -> dict[str, Any]:
    """Answers to the world's questions of `split`, scored by the annotator's rule (0 off topic,
    1 wrong, 2 right but rambling, 3 concise and right): greedy answers (with exact match and F1),
    and `samples` sampled answers per question at temperature 1, the policy's whole distribution,
    which is what preference training reshapes."""
    from peaufine.data.formats import world_qa_records
    from peaufine.data.tokenize import generation_prompt
    from peaufine.data.world import candidate_objects, qa_pairs
    from peaufine.data.world_preferences import annotator_score
    from peaufine.evaluate.answers import answer_questions
    from peaufine.generate import generate_texts

    pairs = qa_pairs(world, split)[:max_questions]
    conversations = [r.messages for r in world_qa_records(world, split)][:max_questions]
    metrics = answer_questions(model, tokenizer, conversations)

    def score(prediction: str, pair: Any) -> float:
        candidates = candidate_objects(world, world.fact(pair.fact_id).object_type)
        return annotator_score(prediction, pair.answer, candidates)

    scores = [score(sample["prediction"], pair) for sample, pair in zip(metrics.samples, pairs, strict=True)]
    prompts = [generation_prompt(tokenizer, c[:-1]) for c in conversations]
    sampled = generate_texts(
        model,
        tokenizer,
        [p for p in prompts for _ in range(samples)],
        max_new_tokens=24,
        temperature=1.0,
        top_k=0,
    )
    sampled_scores = [score(text, pairs[i // samples]) for i, text in enumerate(sampled)]
    return {
        **metrics.as_dict(),
        "annotator_score": sum(scores) / len(scores) if scores else None,
        "annotator_score_sampled": sum(sampled_scores) / len(sampled_scores) if sampled_scores else None,
    }
