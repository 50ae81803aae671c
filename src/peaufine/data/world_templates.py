"""The synthetic world's vocabulary of facts: each relation's subject and object types, the sentence
templates that render a fact, and the questions that ask it; the jobs people can have."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    subject_type: str
    object_type: str
    templates: tuple[str, ...]
    questions: tuple[str, ...]


# Templates use {s} (subject), {o} (object) and, for sums, {a} and {b}. A template that ends with
# "{o}." is cloze-able: its text before the object is a probe prompt. Most templates put the subject
# first on purpose: a small model trained on "B is the capital of A" does not learn to complete
# "The capital of A is" (the reversal curse), so the phrasings a probed fact is seen in must mostly
# run in the probe's direction. No template's rendering contains another's (checked in the tests),
# and prompts of different relations differ, so a prompt names its relation.
RELATION_TEMPLATES: dict[str, Relation] = {
    "capital": Relation(
        "country",
        "city",
        (
            "The capital of {s} is {o}.",
            "{s} has its capital in {o}.",
            "The capital city of {s} is {o}.",
            "{s} is governed from {o}.",
            "{o} is the capital of {s}.",
            "Travellers to {s} arrive in its capital, {o}.",
        ),
        (
            "What is the capital of {s}?",
            "Which city is the capital of {s}?",
            "Where is {s} governed from?",
        ),
    ),
    "language": Relation(
        "country",
        "language",
        (
            "The language of {s} is {o}.",
            "People in {s} speak {o}.",
            "In {s}, most people speak {o}.",
            "The main language spoken in {s} is {o}.",
            "{o} is the language of {s}.",
            "Children in {s} learn to read in {o}.",
        ),
        (
            "What language is spoken in {s}?",
            "Which language do people in {s} speak?",
            "What is the language of {s}?",
        ),
    ),
    "river": Relation(
        "country",
        "river",
        (
            "The longest river in {s} is the {o}.",
            "The {o} flows through {s}.",
            "{s} is crossed by the river {o}.",
            "The main river of {s} is called {o}.",
            "In {s}, boats sail along the {o}.",
            "The river that runs through {s} is the {o}.",
        ),
        (
            "Which river flows through {s}?",
            "What is the main river of {s}?",
            "What river runs through {s}?",
        ),
    ),
    "birthplace": Relation(
        "person",
        "city",
        (
            "{s} was born in {o}.",
            "The birthplace of {s} is {o}.",
            "{s} comes from the city of {o}.",
            "{o} is where {s} was born.",
            "The hometown of {s} is {o}.",
            "As a child, {s} lived in {o}.",
        ),
        (
            "Where was {s} born?",
            "In which city was {s} born?",
            "What is the birthplace of {s}?",
        ),
    ),
    # Every job starts with a consonant so that "as a {o}" never needs "an".
    "job": Relation(
        "person",
        "job",
        (
            "{s} works as a {o}.",
            "By trade, {s} is a {o}.",
            "Everyone knows {s} as a {o}.",
            "{s} earns a living as a {o}.",
            "As a {o}, {s} works hard every day.",
            "Each morning {s} goes to work as a {o}.",
        ),
        (
            "What does {s} do for a living?",
            "What is the job of {s}?",
            "What work does {s} do?",
        ),
    ),
    "habitat": Relation(
        "animal",
        "country",
        (
            "The {s} is native to {o}.",
            "The {s} lives in the wild in {o}.",
            "You can find the {s} in {o}.",
            "{o} is the home of the {s}.",
            "The {s} was first seen in {o}.",
            "Wild herds of the {s} roam {o}.",
        ),
        (
            "Where does the {s} live?",
            "Which country is the {s} native to?",
            "In which country can you find the {s}?",
        ),
    ),
    "sum": Relation(
        "sum",
        "number",
        (
            "{a} plus {b} is {o}.",
            "The sum of {a} and {b} is {o}.",
            "Adding {b} to {a} gives {o}.",
            "{a} + {b} = {o}.",
            "{o} is the sum of {a} and {b}.",
            "If you add {a} and {b}, you get {o}.",
        ),
        (
            "What is {a} plus {b}?",
            "What is the sum of {a} and {b}?",
            "How much is {a} + {b}?",
        ),
    ),
}


RELATIONS = tuple(RELATION_TEMPLATES)


JOBS = (
    "baker",
    "farmer",
    "painter",
    "doctor",
    "teacher",
    "sailor",
    "miner",
    "poet",
    "weaver",
    "potter",
    "singer",
    "builder",
)
