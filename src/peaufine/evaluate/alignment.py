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
) -> dict[str, Any]:
    """Greedy answers to the world's questions of `split`: exact match, F1 and mean annotator score
    (0 off topic, 1 wrong, 2 right but rambling, 3 concise and right)."""
    from peaufine.data.formats import world_qa_records
    from peaufine.data.world import candidate_objects, qa_pairs
    from peaufine.data.world_preferences import annotator_score
    from peaufine.evaluate.answers import answer_questions

    pairs = qa_pairs(world, split)[:max_questions]
    conversations = [r.messages for r in world_qa_records(world, split)][:max_questions]
    metrics = answer_questions(model, tokenizer, conversations)
    scores = [
        annotator_score(
            sample["prediction"],
            pair.answer,
            candidate_objects(world, world.fact(pair.fact_id).object_type),
        )
        for sample, pair in zip(metrics.samples, pairs, strict=True)
    ]
    return {
        **metrics.as_dict(),
        "annotator_score": sum(scores) / len(scores) if scores else None,
    }
