"""The synthetic world: its facts (fictional places, people, animals, small sums) and what is rendered
from them (pretraining documents, cloze probes, Q&A splits), kept in a run's world/ folder."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peaufine.data.world_templates import JOBS, RELATION_TEMPLATES, RELATIONS, Relation
from peaufine.errors import DataError

if TYPE_CHECKING:
    from peaufine.models.build import ModelSource

GENERATOR_VERSION = "world-1"
WORLD_FILENAME = "world.json"
SIZES = ("default", "smoke")

# Products of the world that draw random numbers. Each has its own stream so that adding a product
# (or drawing more from one) never shifts what another produces.
_WORLD_PRODUCTS = ("names", "relations", "probes", "splits", "qa")
HELDOUT_FRACTION = 0.2
SENTENCES_PER_DOCUMENT = (6, 10)


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple; sums use the canonical subject "7+5"."""

    id: str
    relation: str
    subject: str
    object: str
    object_type: str


@dataclass
class World:
    """Everything generated from one seed: facts, entities, probe assignment and Q&A splits."""

    seed: int
    version: str
    size: str
    facts: list[Fact]
    entities: dict[str, list[str]]
    probe_template: dict[str, int]
    splits: dict[str, list[str]]

    def fact(self, fact_id: str) -> Fact:
        """The fact with this id; KeyError names it if the world has none."""
        for fact in self.facts:
            if fact.id == fact_id:
                return fact
        raise KeyError(fact_id)


@dataclass(frozen=True)
class Probe:
    """A cloze prompt (no trailing space) whose greedy completion should be `answer`."""

    prompt: str
    answer: str
    fact_id: str


@dataclass(frozen=True)
class QAPair:
    """A question about one fact and its exact-match answer (the fact's object)."""

    question: str
    answer: str
    fact_id: str


@dataclass(frozen=True)
class _Shape:
    countries: int
    people: int
    animals: int
    sums: int


# Default: 24*3 + 30*2 + 16 + 40 = 188 facts, few enough for a ~1M-parameter model to memorise
# in ~2,000 steps of 16 x 64 tokens. Smoke: 6*3 + 6*2 + 4 + 8 = 42 facts, for seconds-long tests.
_SHAPES = {
    "default": _Shape(countries=24, people=30, animals=16, sums=40),
    "smoke": _Shape(countries=6, people=6, animals=4, sums=8),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
# Stems end in a vowel and suffixes start with a consonant, so names never stack vowels ("Fiic").
# A suffix per entity type gives each type a recognisable shape (countries end in -ia, -mark, ...),
# which helps a tiny model keep types apart without making any particular fact guessable.
_NAME_SUFFIXES = {
    "country": ("ria", "mark", "land", "dor", "vania"),
    "city": ("sk", "ton", "burg", "mont", "ford"),
    "language": ("nic", "rish", "nese", "lan"),
    "river": ("wa", "ro", "nel", "rine", "va"),
    "first": ("na", "ra", "lo", "rin", "len", "ric"),
    "last": ("son", "ner", "well", "ley", "by"),
    "animal": ("vet", "rox", "ling", "bak", "mur"),
}


def generate_world(seed: int = 0, size: str = "default") -> World:
    """Build the world for `seed`: same seed, same world; `size` is "default" or "smoke"."""
    if size not in _SHAPES:
        raise ValueError(f"unknown world size {size!r}; expected one of {', '.join(SIZES)}")
    shape = _SHAPES[size]
    entities = _generate_entities(random.Random(f"{seed}:names"), shape)
    facts = _assign_relations(random.Random(f"{seed}:relations"), entities, shape)
    probe_template = _assign_probe_templates(random.Random(f"{seed}:probes"), facts)
    splits = _split_for_qa(random.Random(f"{seed}:splits"), facts)
    return World(
        seed=seed,
        version=GENERATOR_VERSION,
        size=size,
        facts=facts,
        entities=entities,
        probe_template=probe_template,
        splits=splits,
    )


def templates_for(relation: str) -> list[str]:
    """The sentence templates of `relation`, in the order probe-template indices refer to."""
    return list(_relation(relation).templates)


def cloze_template_indices(relation: str) -> list[int]:
    """Indices of the templates that end with the object, so their prefix can serve as a probe."""
    return [i for i, t in enumerate(_relation(relation).templates) if _is_cloze(t)]


def training_template_indices(world: World, fact: Fact) -> list[int]:
    """Templates a fact may be rendered with in pretraining: all but its own probe template."""
    probe = world.probe_template[fact.id]
    return [i for i in range(len(_relation(fact.relation).templates)) if i != probe]


def render_fact(fact: Fact, template_index: int) -> str:
    """One sentence stating `fact` with template `template_index` of its relation."""
    template = _relation(fact.relation).templates[template_index]
    return template.format(**_slots(fact))


def cloze_probes(world: World) -> list[Probe]:
    """One probe per fact, in its probe template: a phrasing never used for it in training."""
    probes = []
    for fact in world.facts:
        template = _relation(fact.relation).templates[world.probe_template[fact.id]]
        prompt = template[: -len("{o}.")].format(**_slots(fact)).rstrip()
        probes.append(Probe(prompt=prompt, answer=fact.object, fact_id=fact.id))
    return probes


def pretraining_documents(world: World, n_documents: int, stream: str = "pretrain") -> list[str]:
    """`n_documents` documents of 6-10 fact sentences each, deterministic for (world, stream).

    Sentences are dealt from a shuffled deck of every (fact, non-probe template) pair, reshuffled
    when empty, so each fact is seen in all its training phrasings about equally often rather than
    by luck. The first k documents do not depend on `n_documents`.
    """
    if n_documents < 0:
        raise ValueError(f"n_documents must be >= 0, got {n_documents}")
    if stream in _WORLD_PRODUCTS:
        raise ValueError(f"stream {stream!r} is the world's own random stream; pick another name")
    rng = random.Random(f"{world.seed}:{stream}")
    pairs = [(fact, i) for fact in world.facts for i in training_template_indices(world, fact)]
    deck: list[tuple[Fact, int]] = []
    documents = []
    for _ in range(n_documents):
        sentences = []
        for _ in range(rng.randint(*SENTENCES_PER_DOCUMENT)):
            if not deck:
                deck = list(pairs)
                rng.shuffle(deck)
            fact, template_index = deck.pop()
            sentences.append(render_fact(fact, template_index))
        documents.append(" ".join(sentences))
    return documents


def question_texts(fact: Fact) -> list[str]:
    """Every question phrasing of its relation, asked about `fact`."""
    return [q.format(**_slots(fact)) for q in _relation(fact.relation).questions]


def faq_documents(world: World, n_documents: int, split: str = "qa_train", stream: str = "faq") -> list[str]:
    """`n_documents` question-and-answer pages ("Q: ... A: ...") about the facts of `split` only.

    The web text a real model pretrains on holds questions answered in plain text; this is that, for
    the facts fine-tuning will ask about. Facts outside `split` (the held-out ones) are never asked
    here, so answering them after fine-tuning takes the knowledge of the fact sentences. Every
    question phrasing of a relation is used, dealt from a reshuffled deck like the fact sentences.
    """
    if n_documents < 0:
        raise ValueError(f"n_documents must be >= 0, got {n_documents}")
    if stream in _WORLD_PRODUCTS:
        raise ValueError(f"stream {stream!r} is the world's own random stream; pick another name")
    if split not in world.splits:
        raise KeyError(f"unknown split {split!r}; the world has {', '.join(world.splits)}")
    rng = random.Random(f"{world.seed}:{stream}")
    asked = [world.fact(fact_id) for fact_id in world.splits[split]]
    pairs = [(fact, question) for fact in asked for question in question_texts(fact)]
    deck: list[tuple[Fact, str]] = []
    documents = []
    for _ in range(n_documents):
        lines = []
        for _ in range(rng.randint(*SENTENCES_PER_DOCUMENT)):
            if not deck:
                deck = list(pairs)
                rng.shuffle(deck)
            fact, question = deck.pop()
            lines.append(f"Q: {question} A: {fact.object}.")
        documents.append(" ".join(lines))
    return documents


def qa_pairs(world: World, split: str) -> list[QAPair]:
    """Questions about the facts of `split`, one per fact, each phrasing chosen once per world.

    The phrasing is drawn for every fact in world order whatever the split, so a fact's question is
    the same in every split and call.
    """
    if split not in world.splits:
        raise KeyError(f"unknown split {split!r}; the world has {', '.join(world.splits)}")
    rng = random.Random(f"{world.seed}:qa")
    questions = {}
    for fact in world.facts:
        relation = _relation(fact.relation)
        question = rng.choice(relation.questions).format(**_slots(fact))
        questions[fact.id] = QAPair(question=question, answer=fact.object, fact_id=fact.id)
    return [questions[fact_id] for fact_id in world.splits[split]]


def candidate_objects(world: World, object_type: str) -> list[str]:
    """Every value an object of this type can take, for distractors: entities, or sums 2..18."""
    if object_type == "number":
        return [str(n) for n in range(2, 19)]
    return list(world.entities[object_type])


def vocabulary(world: World) -> set[str]:
    """The words (letters or digits) of every fact sentence, question and probe in the world."""
    words: set[str] = set()
    for fact in world.facts:
        relation = _relation(fact.relation)
        slots = _slots(fact)
        for text in relation.templates + relation.questions:
            words.update(re.findall(r"[A-Za-z]+|[0-9]+", text.format(**slots)))
    return words


def save_world(world: World, directory: Path) -> None:
    """Write `directory`/world.json atomically, so a crash never leaves half a world behind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": world.seed,
        "version": world.version,
        "size": world.size,
        "facts": [asdict(fact) for fact in world.facts],
        "entities": world.entities,
        "probe_template": world.probe_template,
        "splits": world.splits,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=".world-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp_name, directory / WORLD_FILENAME)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_world(directory: Path) -> World:
    """Read `directory`/world.json; DataError names the file if it is missing, corrupt or stale."""
    path = Path(directory) / WORLD_FILENAME
    regenerate = "regenerate it with generate_world() and save_world()"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("world file not found", path=path, hint=regenerate) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"world file cannot be read ({exc})", path=path, hint=regenerate) from None
    if not isinstance(raw, dict):
        raise DataError("world file does not hold a JSON object", path=path, hint=regenerate)
    version = raw.get("version")
    if version != GENERATOR_VERSION:
        raise DataError(
            f"world was made by generator {version!r}, this is {GENERATOR_VERSION!r}",
            path=path,
            field="version",
            hint=regenerate,
        )
    try:
        world = World(
            seed=int(raw["seed"]),
            version=version,
            size=str(raw["size"]),
            facts=[Fact(**fact) for fact in raw["facts"]],
            entities={str(k): [str(v) for v in vs] for k, vs in raw["entities"].items()},
            probe_template={str(k): int(v) for k, v in raw["probe_template"].items()},
            splits={str(k): [str(v) for v in vs] for k, vs in raw["splits"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"world file is malformed ({type(exc).__name__}: {exc})", path=path, hint=regenerate
        ) from None
    _check_loaded(world, path, regenerate)
    return world


# --- generation ---------------------------------------------------------------------------------


def _relation(relation: str) -> Relation:
    try:
        return RELATION_TEMPLATES[relation]
    except KeyError:
        raise KeyError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}") from None


def _is_cloze(template: str) -> bool:
    return template.endswith("{o}.")


def _slots(fact: Fact) -> dict[str, str]:
    if fact.relation == "sum":
        a, b = fact.subject.split("+")
        return {"a": a, "b": b, "o": fact.object}
    return {"s": fact.subject, "o": fact.object}


def _reserved_words() -> set[str]:
    """Words of templates, questions and jobs: a name equal to one would blur facts and text."""
    words = set(JOBS)
    for relation in RELATION_TEMPLATES.values():
        for text in relation.templates + relation.questions:
            words.update(w.lower() for w in re.findall(r"[A-Za-z]+", text))
    return words


def _make_name(rng: random.Random, kind: str, used: set[str]) -> str:
    """A fresh pronounceable word of 1-2 syllables plus the kind's suffix, unused in the world."""
    suffixes = _NAME_SUFFIXES[kind]
    while True:
        syllables = rng.choice((1, 2))
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        name = stem + rng.choice(suffixes)
        if name not in used and 4 <= len(name) <= 10:
            used.add(name)
            return name


def _generate_entities(rng: random.Random, shape: _Shape) -> dict[str, list[str]]:
    used = _reserved_words()

    def names(kind: str, count: int) -> list[str]:
        return [_make_name(rng, kind, used).capitalize() for _ in range(count)]

    people = [
        f"{first} {last}"
        for first, last in zip(names("first", shape.people), names("last", shape.people), strict=True)
    ]
    return {
        "country": names("country", shape.countries),
        "city": names("city", shape.countries),
        "language": names("language", shape.countries),
        "river": names("river", shape.countries),
        "person": people,
        "job": list(JOBS),
        # Animals are common nouns ("the morvet"), so they stay lower case.
        "animal": [name.lower() for name in names("animal", shape.animals)],
    }


def _assign_relations(rng: random.Random, entities: dict[str, list[str]], shape: _Shape) -> list[Fact]:
    def fact(relation: str, subject: str, obj: str) -> Fact:
        return Fact(
            id=f"{relation}:{subject}",
            relation=relation,
            subject=subject,
            object=obj,
            object_type=RELATION_TEMPLATES[relation].object_type,
        )

    countries = entities["country"]
    facts: list[Fact] = []
    # Capitals, languages and rivers are one per country, each used once: a bijection.
    for relation, pool in (("capital", "city"), ("language", "language"), ("river", "river")):
        values = rng.sample(entities[pool], len(countries))
        facts += [fact(relation, c, v) for c, v in zip(countries, values, strict=True)]
    for person in entities["person"]:
        facts.append(fact("birthplace", person, rng.choice(entities["city"])))
    for person in entities["person"]:
        facts.append(fact("job", person, rng.choice(entities["job"])))
    for animal in entities["animal"]:
        facts.append(fact("habitat", animal, rng.choice(countries)))
    # Unordered pairs only: with both 3+4 and 4+3 a probe could be answered from its twin.
    pairs = [(a, b) for a in range(1, 10) for b in range(a, 10)]
    for a, b in rng.sample(pairs, shape.sums):
        if rng.random() < 0.5:
            a, b = b, a
        facts.append(fact("sum", f"{a}+{b}", str(a + b)))
    return facts


def _assign_probe_templates(rng: random.Random, facts: list[Fact]) -> dict[str, int]:
    """Deal each relation's cloze templates round-robin over its shuffled facts.

    Round-robin keeps the probe templates equally used, and with two or more of them every probe
    template is still a training phrasing of the relation's other facts.
    """
    assignment: dict[str, int] = {}
    for relation in RELATIONS:
        members = [f.id for f in facts if f.relation == relation]
        rng.shuffle(members)
        cloze = cloze_template_indices(relation)
        rng.shuffle(cloze)
        for position, fact_id in enumerate(members):
            assignment[fact_id] = cloze[position % len(cloze)]
    return {f.id: assignment[f.id] for f in facts}


def _split_for_qa(rng: random.Random, facts: list[Fact]) -> dict[str, list[str]]:
    """Hold out ~20% of each relation's facts from fine-tuning questions (at least one if >= 2)."""
    heldout: set[str] = set()
    for relation in RELATIONS:
        members = [f.id for f in facts if f.relation == relation]
        rng.shuffle(members)
        n_heldout = round(len(members) * HELDOUT_FRACTION)
        if len(members) >= 2:
            n_heldout = max(1, n_heldout)
        heldout.update(members[:n_heldout])
    return {
        "qa_train": [f.id for f in facts if f.id not in heldout],
        "qa_heldout": [f.id for f in facts if f.id in heldout],
    }


def _check_loaded(world: World, path: Path, hint: str) -> None:
    """Reject a world file whose parts disagree, before a later stage trips over it."""
    ids = {fact.id for fact in world.facts}
    for fact in world.facts:
        if fact.relation not in RELATION_TEMPLATES:
            raise DataError(
                f"fact {fact.id!r} has unknown relation {fact.relation!r}",
                path=path,
                field="facts",
                hint=hint,
            )
        index = world.probe_template.get(fact.id)
        if index is None or index not in cloze_template_indices(fact.relation):
            raise DataError(
                f"fact {fact.id!r} has no valid probe template",
                path=path,
                field="probe_template",
                hint=hint,
            )
    for name, members in world.splits.items():
        unknown = set(members) - ids
        if unknown:
            raise DataError(
                f"split {name!r} names unknown facts {sorted(unknown)[:3]}",
                path=path,
                field="splits",
                hint=hint,
            )
    for kind, names in world.entities.items():
        if any(not re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", n) for n in names):
            raise DataError(
                f"entities of type {kind!r} are not plain words",
                path=path,
                field="entities",
                hint=hint,
            )


__all__ = [
    "GENERATOR_VERSION",
    "WORLD_FILENAME",
    "Fact",
    "Probe",
    "QAPair",
    "World",
    "candidate_objects",
    "cloze_probes",
    "cloze_template_indices",
    "faq_documents",
    "generate_world",
    "load_world",
    "pretraining_documents",
    "qa_pairs",
    "question_texts",
    "render_fact",
    "save_world",
    "templates_for",
    "training_template_indices",
    "vocabulary",
]


def source_world(source: ModelSource) -> World | None:
    """The synthetic world a run was trained on (its world/ folder), if model.source is such a run."""
    if source.kind != "run_dir" or not (source.path / "world").is_dir():
        return None

    return load_world(source.path / "world")


def copy_world(source: ModelSource, staging: Path) -> None:
    """Carry the world/ folder down the pipeline, so every later stage can find its world."""
    if source.kind == "run_dir" and (source.path / "world").is_dir():
        shutil.copytree(source.path / "world", staging / "world")
