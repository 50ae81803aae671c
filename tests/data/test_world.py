"""Tests of the synthetic world: determinism, the probe/training phrasing separation, typed facts,
Q&A splits, world.json round trips, and the independence of the random streams."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from peaufine.data.world import (
    GENERATOR_VERSION,
    WORLD_FILENAME,
    Fact,
    World,
    cloze_probes,
    cloze_template_indices,
    generate_world,
    load_world,
    pretraining_documents,
    qa_pairs,
    render_fact,
    save_world,
    templates_for,
    training_template_indices,
)
from peaufine.data.world_templates import RELATIONS
from peaufine.errors import DataError

# Enough documents (~8 sentences each) for several passes over the 188 x 5 training renderings.
N_DOCUMENTS = 500


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(seed=0)


@pytest.fixture(scope="module")
def documents(world: World) -> list[str]:
    return pretraining_documents(world, N_DOCUMENTS)


def _sentences(documents: list[str]) -> list[str]:
    return [s for doc in documents for s in re.split(r"(?<=\.) ", doc)]


def _contains_words(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words (so "Lo Bell" is not found in "Milo Bell")."""
    return re.search(r"(?<![\w+])" + re.escape(phrase) + r"(?![\w+])", text) is not None


def _all_renderings(world: World) -> dict[str, tuple[str, int]]:
    renderings: dict[str, tuple[str, int]] = {}
    for fact in world.facts:
        for index in range(len(templates_for(fact.relation))):
            text = render_fact(fact, index)
            assert text not in renderings, f"{text!r} renders two (fact, template) pairs"
            renderings[text] = (fact.id, index)
    return renderings


def test_same_seed_same_world_and_documents_different_seed_different() -> None:
    assert generate_world(3) == generate_world(3)
    assert pretraining_documents(generate_world(3), 20) == pretraining_documents(generate_world(3), 20)
    a, b = generate_world(3), generate_world(4)
    assert a.entities["country"] != b.entities["country"]
    assert {f.object for f in a.facts} != {f.object for f in b.facts}
    assert a.probe_template != b.probe_template or a.facts != b.facts
    assert pretraining_documents(a, 5) != pretraining_documents(b, 5)
    assert pretraining_documents(a, 5) != pretraining_documents(a, 5, stream="validation")


def test_world_sizes_match_the_training_budget(world: World) -> None:
    counts = Counter(f.relation for f in world.facts)
    assert set(counts) == set(RELATIONS)
    assert 170 <= len(world.facts) <= 220
    assert counts["sum"] >= 30
    smoke = generate_world(seed=0, size="smoke")
    assert 30 <= len(smoke.facts) <= 50
    assert set(Counter(f.relation for f in smoke.facts)) == set(RELATIONS)
    with pytest.raises(ValueError, match="size"):
        generate_world(0, size="huge")


def test_every_document_sentence_is_a_training_rendering_never_the_fact_probe(
    world: World, documents: list[str]
) -> None:
    renderings = _all_renderings(world)
    seen: dict[str, set[int]] = defaultdict(set)
    for sentence in _sentences(documents):
        fact_id, index = renderings[sentence]
        assert index != world.probe_template[fact_id], f"probe phrasing trained: {sentence!r}"
        seen[fact_id].add(index)
    for fact in world.facts:
        assert seen[fact.id] == set(training_template_indices(world, fact)), fact.id
        assert len(seen[fact.id]) >= 2


def test_probe_text_never_occurs_in_documents_but_its_template_does(
    world: World, documents: list[str]
) -> None:
    probes = {p.fact_id: p for p in cloze_probes(world)}
    sentences = set(_sentences(documents))
    text = "\n".join(documents)
    for fact in world.facts:
        probe = probes[fact.id]
        assert render_fact(fact, world.probe_template[fact.id]) not in sentences
        # Stronger than the sentence check: the completed prompt never occurs anywhere, so no other
        # phrasing of the fact (or a neighbouring sentence) quietly contains it.
        assert not _contains_words(text, f"{probe.prompt} {probe.answer}"), fact.id
        others = [
            g
            for g in world.facts
            if g.relation == fact.relation and render_fact(g, world.probe_template[fact.id]) in sentences
        ]
        assert others, f"probe template of {fact.id} is never seen in training"


def test_no_phrasing_of_a_fact_contains_another_phrasings_cloze(world: World) -> None:
    for fact in world.facts:
        templates = templates_for(fact.relation)
        for cloze in cloze_template_indices(fact.relation):
            completed = render_fact(fact, cloze)[: -len(".")]
            for index in range(len(templates)):
                if index != cloze:
                    assert not _contains_words(render_fact(fact, index), completed), (
                        fact.id,
                        cloze,
                        index,
                    )


def test_probes_complete_their_template_and_are_balanced(world: World) -> None:
    probes = cloze_probes(world)
    assert [p.fact_id for p in probes] == [f.id for f in world.facts]
    for probe, fact in zip(probes, world.facts, strict=True):
        assert probe.prompt == probe.prompt.rstrip() and probe.answer == fact.object
        assert f"{probe.prompt} {probe.answer}." == render_fact(fact, world.probe_template[fact.id])
    for relation in RELATIONS:
        templates = templates_for(relation)
        assert len(templates) >= 5
        cloze = cloze_template_indices(relation)
        assert len(cloze) >= 2
        used = Counter(world.probe_template[f.id] for f in world.facts if f.relation == relation)
        assert set(used) <= set(cloze)
        assert len(used) == min(len(cloze), sum(used.values()))
        assert max(used.values()) - min(used.values()) <= 1, (relation, used)


def test_probe_prompts_name_their_relation(world: World) -> None:
    # A prompt shared by two relations (e.g. "X is a" for job and birthplace) could not be probed.
    prompt_shapes: dict[str, str] = {}
    for relation in RELATIONS:
        for index in cloze_template_indices(relation):
            shape = templates_for(relation)[index][: -len("{o}.")].strip()
            assert prompt_shapes.setdefault(shape, relation) == relation, shape


def test_names_are_unique_words_and_objects_are_typed(world: World) -> None:
    names = [name for kind in world.entities for name in world.entities[kind]]
    assert len({n.lower() for n in names}) == len(names)
    words = [w.lower() for n in names for w in n.split()]
    assert len(set(words)) == len(words), "a name word is shared by two entities"
    assert all(re.fullmatch(r"[A-Za-z]+", w) for w in words)
    template_words = {
        w.lower() for r in RELATIONS for t in templates_for(r) for w in re.findall(r"[A-Za-z]+", t)
    }
    assert not template_words & (set(words) - set(world.entities["job"]))
    relation_types = {
        "capital": ("country", "city"),
        "language": ("country", "language"),
        "river": ("country", "river"),
        "birthplace": ("person", "city"),
        "job": ("person", "job"),
        "habitat": ("animal", "country"),
    }
    for fact in world.facts:
        assert fact.id == f"{fact.relation}:{fact.subject}"
        if fact.relation == "sum":
            a, b = (int(x) for x in fact.subject.split("+"))
            assert 1 <= a <= 9 and 1 <= b <= 9
            assert fact.object == str(a + b) and fact.object_type == "number"
        else:
            subject_type, object_type = relation_types[fact.relation]
            assert fact.subject in world.entities[subject_type]
            assert fact.object_type == object_type
            assert fact.object in world.entities[object_type]
    assert len({f.id for f in world.facts}) == len(world.facts)
    capitals = [f.object for f in world.facts if f.relation == "capital"]
    assert len(set(capitals)) == len(capitals), "two countries share a capital"
    sums = {frozenset(f.subject.split("+")) for f in world.facts if f.relation == "sum"}
    assert len(sums) == Counter(f.relation for f in world.facts)["sum"], "a+b and b+a both there"


def test_qa_splits_are_disjoint_complete_and_stratified(world: World) -> None:
    train, heldout = world.splits["qa_train"], world.splits["qa_heldout"]
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(f.id for f in world.facts)
    assert 0.15 <= len(heldout) / len(world.facts) <= 0.25
    for relation in RELATIONS:
        n = sum(f.relation == relation for f in world.facts)
        n_heldout = sum(fid.startswith(f"{relation}:") for fid in heldout)
        assert abs(n_heldout - 0.2 * n) <= 1, relation
        assert n_heldout >= 1
    assert generate_world(world.seed + 1).splits["qa_heldout"] != heldout


def test_qa_pairs_ask_about_their_fact(world: World) -> None:
    by_id = {f.id: f for f in world.facts}
    pairs = qa_pairs(world, "qa_train") + qa_pairs(world, "qa_heldout")
    assert sorted(p.fact_id for p in pairs) == sorted(by_id)
    phrasings = Counter()
    for pair in pairs:
        fact = by_id[pair.fact_id]
        assert pair.answer == fact.object
        assert pair.question.endswith("?")
        if fact.relation == "sum":
            a, b = fact.subject.split("+")
            assert _contains_words(pair.question, a) and _contains_words(pair.question, b)
        else:
            assert fact.subject in pair.question
        phrasings[(fact.relation, re.sub(re.escape(fact.subject), "X", pair.question))] += 1
    assert len(phrasings) > 2 * len(RELATIONS), "questions should vary in phrasing"
    with pytest.raises(KeyError):
        qa_pairs(world, "nonexistent")


def test_products_draw_from_independent_streams() -> None:
    world = generate_world(seed=7)
    before = copy.deepcopy(world)
    qa_before = qa_pairs(world, "qa_train")
    many = pretraining_documents(world, 300)
    assert world == before
    assert qa_pairs(world, "qa_train") == qa_before
    assert qa_pairs(generate_world(seed=7), "qa_train") == qa_before
    # Asking for more documents extends the stream; it does not reshuffle the first ones.
    assert pretraining_documents(world, 40) == many[:40]
    for doc in many[:50]:
        assert 6 <= len(re.split(r"(?<=\.) ", doc)) <= 10


def test_save_load_round_trip(tmp_path: Path) -> None:
    world = generate_world(seed=5, size="smoke")
    save_world(world, tmp_path / "run")
    assert load_world(tmp_path / "run") == world
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [WORLD_FILENAME]
    saved = json.loads((tmp_path / "run" / WORLD_FILENAME).read_text())
    assert saved["version"] == GENERATOR_VERSION and saved["seed"] == 5


def test_load_rejects_missing_corrupt_and_stale_files(tmp_path: Path) -> None:
    path = tmp_path / WORLD_FILENAME
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_world(tmp_path)
    path.write_text('{"seed": 0, "version": ')
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_world(tmp_path)
    save_world(generate_world(0, "smoke"), tmp_path)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "version": "world-0"}))
    with pytest.raises(DataError, match="world-0"):
        load_world(tmp_path)
    del raw["facts"]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_world(tmp_path)
    raw = json.loads(json.dumps({**raw, "facts": [], "probe_template": {}}))
    raw["splits"]["qa_train"] = ["capital:Nowhere"]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="unknown facts"):
        load_world(tmp_path)


def test_render_fact_fills_sum_operands() -> None:
    fact = Fact(id="sum:7+5", relation="sum", subject="7+5", object="12", object_type="number")
    rendered = {render_fact(fact, i) for i in range(len(templates_for("sum")))}
    assert "7 plus 5 is 12." in rendered
    assert "Adding 5 to 7 gives 12." in rendered
    assert "7 + 5 = 12." in rendered


def test_faq_pages_ask_only_about_the_fine_tuning_split(world: World) -> None:
    from peaufine.data.world import faq_documents, question_texts

    pages = faq_documents(world, 300)
    assert pages == faq_documents(world, 300)
    text = "\n".join(pages)
    for fact_id in world.splits["qa_heldout"]:
        for question in question_texts(world.fact(fact_id)):
            assert f"Q: {question} A:" not in text, f"held-out fact asked: {fact_id}"
    for fact_id in world.splits["qa_train"]:
        fact = world.fact(fact_id)
        asked = [q for q in question_texts(fact) if f"Q: {q} A: {fact.object}." in text]
        assert len(asked) >= 2, fact_id  # several phrasings of each question, answered right
