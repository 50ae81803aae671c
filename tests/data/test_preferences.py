"""Tests for peaufine.data.preferences: pairs, rankings and HH dialogues to weighted preference pairs,
format detection, the bad-record policy with file and line, and the split by prompt.

Records are written into tmp_path here; one test reads the shared HH-RLHF test split when it is present.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from pathlib import Path

import pytest

from peaufine.data.preferences import (
    DEFAULT_POLICY,
    PREFERENCE_ANOMALY_KINDS,
    PreferencePair,
    load_preference_pairs,
    prompt_key,
    ranking_pairs,
    resolve_preference_policy,
    split_hh_dialogue,
    split_pairs_by_prompt,
)
from peaufine.errors import DataError
from peaufine.recipe import AnomalyBlock, FieldsBlock

HH_RLHF = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# Two earlier turns, then two answers that start alike: a common-prefix cut would take " Sure, " too.
HH_PROMPT = (
    "\n\nHuman: Can you help me bake bread?\n\nAssistant: Of course. What kind?"
    "\n\nHuman: Sourdough, please.\n\nAssistant:"
)
HH_CHOSEN = " Sure, first feed your starter the night before."
HH_REJECTED = " Sure, just buy some."


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow(list(row.values()))
    return path


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def hh_row(prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


# ---------------------------------------------------------------------------------------------
# Rankings


def test_all_pairs_of_a_ranking_follow_the_ranks_and_share_one_unit_of_weight() -> None:
    responses = ["third", "first", "fourth", "second"]
    ranks = [3.0, 1.0, 4.0, 2.0]
    pairs = ranking_pairs("Q", responses, ranks, expand="all", group="Q")
    assert len(pairs) == 4 * 3 // 2
    by_rank = ["first", "second", "third", "fourth"]
    expected = {(by_rank[i], by_rank[j]) for i, j in itertools.combinations(range(4), 2)}
    assert {(p.chosen, p.rejected) for p in pairs} == expected
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)
    assert all(p.weight == pytest.approx(1 / 6) and not p.tie and p.group == "Q" for p in pairs)


def test_adjacent_pairs_link_neighbours_in_rank_order() -> None:
    pairs = ranking_pairs("Q", ["c", "a", "d", "b", "e"], [3, 1, 4, 2, 5], expand="adjacent", group="Q")
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_without_ranks_the_list_order_is_best_first() -> None:
    pairs = ranking_pairs("Q", ["best", "middle", "worst"], group="Q")
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("best", "middle"),
        ("best", "worst"),
        ("middle", "worst"),
    ]


@pytest.mark.parametrize(("expand", "n_pairs"), [("all", 6), ("adjacent", 3)])
def test_equal_ranks_give_tie_pairs(expand: str, n_pairs: int) -> None:
    pairs = ranking_pairs("Q", ["a", "b", "c", "d"], [1, 2, 2, 3], expand=expand, group="Q")
    assert len(pairs) == n_pairs
    ties = [(p.chosen, p.rejected) for p in pairs if p.tie]
    assert ties == [("b", "c")]
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_ranking_kinds_name_each_pair_better_over_worse() -> None:
    pairs = ranking_pairs(
        "Q", ["wrong", "right", "rambling"], [3, 1, 2], group="Q", kinds=["wrong", "correct", "verbose"]
    )
    assert {(p.chosen, p.rejected): p.kind for p in pairs} == {
        ("right", "rambling"): "correct>verbose",
        ("right", "wrong"): "correct>wrong",
        ("rambling", "wrong"): "verbose>wrong",
    }


@pytest.mark.parametrize(("rankings", "per_ranking"), [("all", [3, 6]), ("adjacent", [2, 3])])
def test_ranking_files_expand_per_prompt_with_unit_weight(
    tmp_path: Path, rankings: str, per_ranking: list[int]
) -> None:
    path = write_jsonl(
        [
            {"prompt": "Name a colour.", "responses": ["Blue", "Bleu", "Blurple"]},
            {"prompt": "Count to two.", "responses": ["1, 2", "2, 1", "one", "no"], "ranks": [1, 2, 2, 4]},
        ],
        tmp_path / "ranked.jsonl",
    )
    pairs, report = load_preference_pairs(path, rankings=rankings, fields=FieldsBlock(system="Be brief."))
    assert report.total() == 0
    groups = list(dict.fromkeys(p.group for p in pairs))
    assert [sum(1 for p in pairs if p.group == g) for g in groups] == per_ranking
    for group in groups:
        assert sum(p.weight for p in pairs if p.group == group) == pytest.approx(1.0)
    assert pairs[0].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
    ]
    assert pairs[0].source == f"{path}, line 1"
    assert pairs[-1].source == f"{path}, line 2"
    assert [(p.chosen, p.rejected) for p in pairs if p.tie] == [("2, 1", "one")]


def test_a_repeated_response_in_a_ranking_is_dropped_and_counted(tmp_path: Path) -> None:
    path = write_jsonl(
        [{"prompt": "Q", "responses": ["good", "ok", "good ", "bad"], "kinds": ["a", "b", "c", "d"]}],
        tmp_path / "ranked.jsonl",
    )
    pairs, report = load_preference_pairs(path)
    # "good " repeats "good": the better-ranked copy stays, three responses remain.
    assert [(p.chosen, p.rejected, p.kind) for p in pairs] == [
        ("good", "ok", "a>b"),
        ("good", "bad", "a>d"),
        ("ok", "bad", "b>d"),
    ]
    assert report.counts["same_response"] == 1
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)
    with pytest.raises(
        DataError, match=r"line 1, field 'responses': response 3 is the same text as response 1"
    ):
        load_preference_pairs(path, policy={"same_response": "error"})


def test_short_ranking_is_an_error_by_default_and_skippable(tmp_path: Path) -> None:
    path = write_jsonl(
        [{"prompt": "Q", "responses": ["a", "b"]}, {"prompt": "R", "responses": ["only"]}],
        tmp_path / "ranked.jsonl",
    )
    with pytest.raises(DataError, match=r"line 2, field 'responses'.*data\.anomalies\.short_ranking: skip"):
        load_preference_pairs(path)
    pairs, report = load_preference_pairs(path, policy={"short_ranking": "skip"})
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b")]
    assert report.counts["short_ranking"] == 1


def test_ranks_of_the_wrong_length_name_the_ranks_field(tmp_path: Path) -> None:
    path = write_jsonl([{"prompt": "Q", "responses": ["a", "b", "c"], "ranks": [1, 2]}], tmp_path / "r.jsonl")
    with pytest.raises(DataError, match=r"line 1, field 'ranks': expected one rank per response \(3\)"):
        load_preference_pairs(path)


# ---------------------------------------------------------------------------------------------
# Anthropic HH dialogues


def test_hh_prompt_ends_at_the_last_assistant_turn_not_at_the_common_prefix() -> None:
    split = split_hh_dialogue(HH_PROMPT + HH_CHOSEN, HH_PROMPT + HH_REJECTED)
    assert split == (HH_PROMPT, HH_CHOSEN, HH_REJECTED)
    prompt, chosen, _ = split
    assert prompt.endswith("\n\nAssistant:") and " Sure," not in prompt
    assert chosen.startswith(" Sure, ")


def test_hh_dialogues_that_differ_before_the_last_turn_do_not_split() -> None:
    other = HH_PROMPT.replace("Sourdough", "Rye")
    assert split_hh_dialogue(HH_PROMPT + HH_CHOSEN, other + HH_REJECTED) is None
    assert split_hh_dialogue("\n\nHuman: hi", "\n\nHuman: hi\n\nAssistant: hello") is None


def test_hh_prompt_mismatch_names_file_and_line_or_is_skipped_and_counted(tmp_path: Path) -> None:
    mismatched = {
        "chosen": HH_PROMPT + HH_CHOSEN,
        "rejected": HH_PROMPT.replace("bread", "cake") + HH_REJECTED,
    }
    rows = [hh_row(HH_PROMPT, HH_CHOSEN, HH_REJECTED), mismatched, hh_row(HH_PROMPT, " Yes.", " No.")]
    path = write_jsonl(rows, tmp_path / "hh.jsonl")
    with pytest.raises(
        DataError, match=r"hh\.jsonl, line 2, field 'chosen': the chosen and rejected dialogues"
    ):
        load_preference_pairs(path, format="hh")
    with pytest.raises(DataError, match=r"data\.anomalies\.prompt_mismatch: skip"):
        load_preference_pairs(path, format="hh")
    pairs, report = load_preference_pairs(path, format="hh", policy={"prompt_mismatch": "skip"})
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (HH_PROMPT, HH_CHOSEN, HH_REJECTED),
        (HH_PROMPT, " Yes.", " No."),
    ]
    assert [p.source for p in pairs] == [f"{path}, line 1", f"{path}, line 3"]
    assert report.counts["prompt_mismatch"] == 1 and report.total() == 1


def test_hh_dialogue_without_an_assistant_turn_is_a_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(
        [hh_row(HH_PROMPT, " a", " b"), {"chosen": HH_PROMPT + " a", "rejected": "\n\nHuman: hello"}],
        tmp_path / "hh.jsonl",
    )
    with pytest.raises(DataError, match=r"line 2, field 'rejected': the dialogue has no \"Assistant:\" turn"):
        load_preference_pairs(path)


@pytest.mark.skipif(not HH_RLHF.is_file(), reason=f"the shared HH-RLHF data is absent ({HH_RLHF})")
def test_real_hh_rlhf_pairs_parse(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl"
    path.write_bytes(gzip.decompress(HH_RLHF.read_bytes()))
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    # Four records have an empty chosen answer, five have two dialogues that part before the last turn.
    policy = {"prompt_mismatch": "skip", "empty_text": "skip"}
    pairs, report = load_preference_pairs(path, format="hh", policy=policy)
    assert len(pairs) + report.total() == n_lines
    assert 0 < report.counts["prompt_mismatch"] <= 10
    assert len(pairs) >= 0.99 * n_lines
    assert all(p.prompt.endswith("Assistant:") for p in pairs)
    assert not any(p.chosen.startswith("\n\nHuman:") or p.rejected.startswith("\n\nHuman:") for p in pairs)
    assert all(p.chosen.strip() != p.rejected.strip() for p in pairs)
    # The split recovers each dialogue exactly.
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert pairs[0].prompt + pairs[0].chosen == first["chosen"]
    assert pairs[0].prompt + pairs[0].rejected == first["rejected"]


# ---------------------------------------------------------------------------------------------
# Pairs, bad records and the policy


def test_string_prompt_becomes_a_user_turn_after_the_system_message(tmp_path: Path) -> None:
    path = write_jsonl(
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "kind": "correct>wrong"}], tmp_path / "p.jsonl"
    )
    (pair,), _ = load_preference_pairs(path, fields=FieldsBlock(system="Answer."))
    assert pair == PreferencePair(
        [{"role": "system", "content": "Answer."}, {"role": "user", "content": "2+2?"}],
        "4",
        "5",
        group="system: Answer.\nuser: 2+2?",
        kind="correct>wrong",
        source=f"{path}, line 1",
    )


def test_conversation_pairs_take_the_prompt_from_the_shared_turns(tmp_path: Path) -> None:
    turns = [*user("Hi"), {"role": "assistant", "content": "Hello"}, *user("Capital of France?")]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Paris"}],
        "rejected": [*turns, {"role": "assistant", "content": "Lyon"}],
    }
    explicit = {"prompt": turns, "chosen": [{"role": "assistant", "content": "Paris"}], "rejected": "Lyon"}
    other = [*user("Hi"), {"role": "assistant", "content": "Hey"}, *user("Capital of France?")]
    mismatched = {"chosen": row["chosen"], "rejected": [*other, {"role": "assistant", "content": "Lyon"}]}
    path = write_jsonl([row, explicit, mismatched], tmp_path / "conversations.jsonl")
    with pytest.raises(DataError, match=r"line 3, field 'rejected': the turns before the response differ"):
        load_preference_pairs(path)
    pairs, report = load_preference_pairs(path, policy={"prompt_mismatch": "skip"})
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(turns, "Paris", "Lyon")] * 2
    assert pairs[0].group == pairs[1].group
    assert report.counts["prompt_mismatch"] == 1


def test_same_response_is_skipped_and_counted_by_default_and_an_error_when_asked(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q1", "chosen": "yes", "rejected": "no"},
        {"prompt": "Q2", "chosen": "same", "rejected": " same\n"},
    ]
    path = write_jsonl(rows, tmp_path / "p.jsonl")
    pairs, report = load_preference_pairs(path)
    assert [p.chosen for p in pairs] == ["yes"]
    assert report.counts["same_response"] == 1 and report.total() == 1
    assert set(report.counts) == set(PREFERENCE_ANOMALY_KINDS)
    with pytest.raises(
        DataError, match=r"line 2, field 'chosen': the chosen and rejected responses are the same"
    ):
        load_preference_pairs(path, policy={"same_response": "error"})


@pytest.mark.parametrize(
    ("row", "kind", "pattern"),
    [
        (
            {"prompt": "Q", "chosen": "  ", "rejected": "no"},
            "empty_text",
            r"field 'chosen': the chosen response",
        ),
        ({"prompt": "Q", "chosen": "yes", "rejected": ""}, "empty_text", r"field 'rejected': the rejected"),
        (
            {"prompt": " \n", "chosen": "yes", "rejected": "no"},
            "empty_text",
            r"field 'prompt': the prompt is",
        ),
        (
            {"prompt": "Q", "chosen": "yes"},
            "missing_field",
            r"field 'rejected': record has no field 'rejected'",
        ),
        (
            {"prompt": "Q", "chosen": 3, "rejected": "no"},
            "missing_field",
            r"field 'chosen': value is a number",
        ),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "missing_field", r"field 'prompt': value is null"),
        (
            {"prompt": [{"role": "bot", "content": "Q"}], "chosen": "a", "rejected": "b"},
            "missing_field",
            r"field 'prompt': turn 1 has the unknown role 'bot'",
        ),
        (
            {"prompt": [*user("Q"), {"role": "assistant", "content": "A"}], "chosen": "a", "rejected": "b"},
            "missing_field",
            r"field 'prompt': the prompt ends with a assistant turn",
        ),
    ],
)
def test_bad_pairs_name_line_and_field_and_can_be_skipped(
    tmp_path: Path, row: dict, kind: str, pattern: str
) -> None:
    good = {"prompt": "fine", "chosen": "a", "rejected": "b"}
    path = write_jsonl([good, row], tmp_path / "p.jsonl")
    with pytest.raises(DataError, match=rf"p\.jsonl, line 2, {pattern}.*data\.anomalies\.{kind}: skip"):
        load_preference_pairs(path, format="pairs")
    pairs, report = load_preference_pairs(path, format="pairs", policy={kind: "skip"})
    assert len(pairs) == 1 and report.counts[kind] == 1 and report.total() == 1


def test_nothing_usable_left_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl([{"prompt": "Q", "chosen": "a", "rejected": "a"}], tmp_path / "p.jsonl")
    with pytest.raises(DataError, match=r"no records in .*p\.jsonl after skipping same_response=1"):
        load_preference_pairs(path)


def test_policy_takes_the_whole_recipe_block_and_rejects_unknown_kinds() -> None:
    everything = AnomalyBlock(too_long="truncate", unknown_role="skip", prompt_mismatch="skip").model_dump()
    resolved = resolve_preference_policy(everything)
    assert set(resolved) == set(PREFERENCE_ANOMALY_KINDS)
    assert resolved == {**DEFAULT_POLICY, "prompt_mismatch": "skip"}
    assert resolve_preference_policy(None)["same_response"] == "skip"
    assert {k for k, v in DEFAULT_POLICY.items() if v != "error"} == {"same_response"}
    with pytest.raises(DataError, match="unknown anomaly kind 'typo'"):
        resolve_preference_policy({"typo": "skip"})
    with pytest.raises(DataError, match=r"data\.anomalies\.empty_text is 'ignore'"):
        resolve_preference_policy({"empty_text": "ignore"})


# ---------------------------------------------------------------------------------------------
# Format detection and file kinds

FORMAT_ROWS = {
    "pairs": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
    "ranking": [{"prompt": "2+2?", "responses": ["4", "four", "5"]}],
    "hh": [hh_row(HH_PROMPT, HH_CHOSEN, HH_REJECTED)],
    "conversations": [
        {
            "chosen": [*user("2+2?"), {"role": "assistant", "content": "4"}],
            "rejected": [*user("2+2?"), {"role": "assistant", "content": "5"}],
        }
    ],
}


@pytest.mark.parametrize(
    ("name", "explicit", "n_pairs"),
    [("pairs", "pairs", 1), ("ranking", "ranking", 3), ("hh", "hh", 1), ("conversations", "pairs", 1)],
)
def test_auto_detects_each_format(tmp_path: Path, name: str, explicit: str, n_pairs: int) -> None:
    path = write_jsonl(FORMAT_ROWS[name], tmp_path / f"{name}.jsonl")
    pairs, _ = load_preference_pairs(path)
    assert len(pairs) == n_pairs
    assert pairs == load_preference_pairs(path, format=explicit)[0]
    assert pairs[0].prompt == (HH_PROMPT if name == "hh" else user("2+2?"))
    if name != "hh":
        assert pairs[0].chosen == "4"


def test_auto_detection_failure_lists_the_keys_found(tmp_path: Path) -> None:
    path = write_jsonl([{"question": "Q", "good": "a", "bad": "b"}], tmp_path / "p.jsonl")
    with pytest.raises(
        DataError, match=r"line 1: cannot tell the preference format from the keys 'question'"
    ):
        load_preference_pairs(path)
    # A plain string pair without a prompt is neither HH nor a conversation.
    path = write_jsonl([{"chosen": "a", "rejected": "b"}], tmp_path / "q.jsonl")
    with pytest.raises(DataError, match="cannot tell the preference format"):
        load_preference_pairs(path)


def test_csv_pairs_read_like_json_lines(tmp_path: Path) -> None:
    rows = [
        {"question": 'Quote "this", please', "good": "this,\nthat", "bad": "no"},
        {"question": "Naïve?", "good": "Yes", "bad": "Non"},
    ]
    fields = FieldsBlock(prompt="question", chosen="good", rejected="bad")
    from_csv, _ = load_preference_pairs(write_csv(rows, tmp_path / "p.csv"), fields=fields)
    from_jsonl, _ = load_preference_pairs(write_jsonl(rows, tmp_path / "p.jsonl"), fields=fields)
    assert [(p.prompt, p.chosen, p.rejected) for p in from_csv] == [
        (user('Quote "this", please'), "this,\nthat", "no"),
        (user("Naïve?"), "Yes", "Non"),
    ]
    assert [(p.prompt, p.chosen, p.rejected) for p in from_jsonl] == [
        (p.prompt, p.chosen, p.rejected) for p in from_csv
    ]
    # The second CSV record starts on line 4: the first one's answer spans two lines.
    assert from_csv[1].source == f"{tmp_path / 'p.csv'}, line 4"


def test_unknown_format_or_expansion_is_a_recipe_error(tmp_path: Path) -> None:
    path = write_jsonl(FORMAT_ROWS["pairs"], tmp_path / "p.jsonl")
    with pytest.raises(DataError, match=r"data\.format 'messages' is not a preference format"):
        load_preference_pairs(path, format="messages")
    with pytest.raises(DataError, match=r"data\.rankings is 'best'"):
        load_preference_pairs(path, rankings="best")


# ---------------------------------------------------------------------------------------------
# Prompt keys and the split


def test_prompt_key_is_raw_text_or_role_lines() -> None:
    assert prompt_key(HH_PROMPT) == HH_PROMPT
    messages = [{"role": "system", "content": "S"}, *user("Q")]
    assert prompt_key(messages) == "system: S\nuser: Q"
    assert prompt_key(user("Q")) != prompt_key(user("Q2"))


def many_prompt_pairs() -> list[PreferencePair]:
    pairs = []
    for g in range(30):
        prompt = user(f"question {g}")
        pairs += ranking_pairs(prompt, ["a", "b", "c"][: 2 + g % 2], group=prompt_key(prompt), source=str(g))
    return pairs


def test_split_by_prompt_keeps_each_prompt_on_one_side_and_covers_all() -> None:
    pairs = many_prompt_pairs()
    train, validation = split_pairs_by_prompt(pairs, 0.2, seed=7)
    train_groups, validation_groups = {p.group for p in train}, {p.group for p in validation}
    assert not train_groups & validation_groups
    assert len(validation_groups) == 6
    assert len(train) + len(validation) == len(pairs)
    # Each side keeps the pairs' order; together they are all the pairs, each once.
    assert sorted(map(pairs.index, train)) == list(map(pairs.index, train))
    assert sorted(map(id, train + validation)) == sorted(map(id, pairs))


def test_split_by_prompt_is_deterministic_per_seed_and_uses_the_prompt_when_no_group() -> None:
    pairs = many_prompt_pairs()
    first = split_pairs_by_prompt(pairs, 0.2, seed=7)
    assert split_pairs_by_prompt(pairs, 0.2, seed=7) == first
    assert split_pairs_by_prompt(pairs, 0.2, seed=8)[1] != first[1]
    ungrouped = [PreferencePair(p.prompt, p.chosen, p.rejected, weight=p.weight) for p in pairs]
    assert [(p.prompt, p.chosen) for p in split_pairs_by_prompt(ungrouped, 0.2, seed=7)[1]] == [
        (p.prompt, p.chosen) for p in first[1]
    ]
    assert split_pairs_by_prompt(pairs, 0.0, seed=7) == (pairs, [])


def test_split_by_prompt_refuses_a_bad_fraction_or_a_single_prompt() -> None:
    pairs = many_prompt_pairs()
    with pytest.raises(DataError, match=r"data\.validation_fraction is 1\.0"):
        split_pairs_by_prompt(pairs, 1.0, seed=0)
    one_prompt = [p for p in pairs if p.group == pairs[-1].group]
    assert len(one_prompt) > 1
    with pytest.raises(DataError, match="1 distinct prompt"):
        split_pairs_by_prompt(one_prompt, 0.1, seed=0)
