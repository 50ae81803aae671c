"""Preference data for reward modelling and DPO: pairs, rankings and Anthropic HH dialogues read from
local files, normalised to weighted (prompt, chosen, rejected) pairs, and split by prompt."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.anomalies import Anomaly, AnomalyPolicy, AnomalyReport, Where, anomaly_policy
from peaufine.data.folds import check_validation_fraction, fold_split, held_out
from peaufine.data.read import json_type, read_records, record_paths
from peaufine.data.records import ROLES, default_fields, missing_field, raise_no_records, string_field
from peaufine.errors import DataError

if TYPE_CHECKING:
    from peaufine.recipe import FieldsBlock

PREFERENCE_ANOMALY_KINDS = (
    "not_utf8",
    "bad_json",
    "missing_field",
    "empty_text",
    "same_response",
    "short_ranking",
    "prompt_mismatch",
)
# A pair of two identical responses teaches nothing, and real data holds a few: skipped unless asked.
DEFAULT_POLICY = {kind: "skip" if kind == "same_response" else "error" for kind in PREFERENCE_ANOMALY_KINDS}
PREFERENCE_FORMATS = ("auto", "pairs", "ranking", "hh")
RANKING_EXPANSIONS = ("all", "adjacent")
HH_ASSISTANT = "\n\nAssistant:"
# data.anomalies keys that belong to the other loaders (chat records, tokenization), accepted and ignored.
_OTHER_POLICY_KEYS = ("too_long", "unknown_role", "empty_assistant")
# Optional per-record fields with no data.fields entry: a pair's type, or one type per ranked response.
_KIND_FIELD = "kind"
_KINDS_FIELD = "kinds"

# preference records name their fields under data.fields too, with their own names
_HINTS = {
    "missing_field": "fix the record or name its fields under data.fields (e.g. data.fields.chosen), "
    "or set data.anomalies.missing_field: skip",
}

Prompt = str | list[dict[str, str]]


@dataclass
class PreferencePair:
    """One judgement: `chosen` is preferred to `rejected` as the answer to `prompt` (or ties with it).

    The prompt is raw text (HH dialogues, which end with "Assistant:") or chat messages ending with a
    user turn; the responses are the answer texts alone. `weight` is 1 for a plain pair and shares 1
    among the pairs of one ranking; `weight_without_ties` is its share when a stage drops the tied
    pairs (dpo), so that the pairs it keeps of a ranking still weigh 1 (None: the same as `weight`).
    `group` is the prompt's key, the unit of the validation split.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    weight: float = 1.0
    tie: bool = False
    group: str = ""
    kind: str = ""
    source: str = ""
    weight_without_ties: float | None = None

    def kept_weight(self, skip_ties: bool) -> float:
        """Its weight in a stage that drops tied pairs (`skip_ties`) or keeps them."""
        if skip_ties and self.weight_without_ties is not None:
            return self.weight_without_ties
        return self.weight


# ---------------------------------------------------------------------------------------------
# Loading


def load_preference_pairs(
    source: str | Path | Iterable[str | Path],
    *,
    format: str = "auto",
    fields: FieldsBlock | None = None,
    rankings: str = "all",
    policy: dict[str, str] | None = None,
) -> tuple[list[PreferencePair], AnomalyReport]:
    """Every preference pair in `source` (files, folders, saved datasets), in file order.

    `format: auto` decides from the first record's keys, once for all files. A string prompt of a
    pairs or ranking file becomes one user turn (after `fields.system`, when set), so a chat model
    sees it through its template; HH dialogues stay raw text. Rankings expand to pairs by `rankings`
    (see `ranking_pairs`). Bad records raise one DataError naming file, line and field, unless
    `policy` says to skip that kind; skipped records are counted in the returned AnomalyReport.
    """
    fields = default_fields(fields)
    resolved = _policy(policy)
    if format not in PREFERENCE_FORMATS:
        raise DataError(
            f"data.format {format!r} is not a preference format",
            hint=f"use one of: {', '.join(PREFERENCE_FORMATS)}",
        )
    if rankings not in RANKING_EXPANSIONS:
        raise DataError(f"data.rankings is {rankings!r}", hint=f"use one of: {', '.join(RANKING_EXPANSIONS)}")
    report = resolved.report()
    chosen_format = None if format == "auto" else format
    paths = record_paths(source)
    pairs: list[PreferencePair] = []
    for item in read_records(paths):
        if isinstance(item, Anomaly):
            resolved.handle(item, report)
            continue
        where, raw = item
        if chosen_format is None:
            chosen_format = _detect_format(raw, fields, where)
        if chosen_format == "ranking":
            found, anomalies = _ranking_record(raw, fields, rankings, where)
        else:
            pair = (
                _hh_record(raw, fields, where) if chosen_format == "hh" else _pair_record(raw, fields, where)
            )
            found, anomalies = ([], [pair]) if isinstance(pair, Anomaly) else ([pair], [])
        for anomaly in anomalies:
            resolved.handle(anomaly, report)
        pairs.extend(found)
    if not pairs:
        raise_no_records(paths, report)
    return pairs, report


def resolve_preference_policy(policy: dict[str, str] | None) -> dict[str, str]:
    """The action (error or skip) for each preference anomaly kind; `recipe.data.anomalies` can be passed
    whole, its keys for the other loaders are ignored."""
    return dict(_policy(policy).actions)


def _policy(policy: dict[str, str] | None) -> AnomalyPolicy:
    return anomaly_policy(policy, DEFAULT_POLICY, ignored=_OTHER_POLICY_KEYS, hints=_HINTS)


def ranking_pairs(
    prompt: Prompt,
    responses: list[str],
    ranks: list[float] | None = None,
    *,
    expand: str = "all",
    group: str,
    source: str = "",
    kinds: list[str] | None = None,
) -> list[PreferencePair]:
    """The pairs a ranking of responses implies, each weighted 1 / (pairs of this ranking), or, in a
    stage that drops tied pairs, 1 / (untied pairs of this ranking): its kept pairs weigh 1 either way.

    `ranks` (lower is better, equal is a tie) default to the list order, best first. `expand: all`
    gives every pair, K(K-1)/2 of them, tied pairs included with `tie` set; `adjacent` gives the K-1
    pairs of neighbours in rank order. Sharing one unit of weight per ranking keeps a prompt with
    many responses from outweighing one with two. Tied responses keep their list order, so the
    earlier one is `chosen`. `kinds` (one per response) name each pair's type "better>worse".
    """
    if expand not in RANKING_EXPANSIONS:
        raise ValueError(f"expand must be one of {RANKING_EXPANSIONS}, not {expand!r}")
    k = len(responses)
    ranks = list(range(k)) if ranks is None else list(ranks)
    if len(ranks) != k or (kinds is not None and len(kinds) != k):
        raise ValueError("ranks and kinds need one entry per response")
    order = sorted(range(k), key=lambda i: ranks[i])
    if expand == "all":
        index_pairs = [(order[a], order[b]) for a in range(k) for b in range(a + 1, k)]
    else:
        index_pairs = [(order[a], order[a + 1]) for a in range(k - 1)]
    untied = sum(ranks[i] != ranks[j] for i, j in index_pairs)
    return [
        PreferencePair(
            prompt,
            responses[i],
            responses[j],
            weight=1.0 / len(index_pairs),
            tie=ranks[i] == ranks[j],
            group=group,
            kind=f"{kinds[i]}>{kinds[j]}" if kinds is not None else "",
            source=source,
            weight_without_ties=0.0 if ranks[i] == ranks[j] else 1.0 / untied,
        )
        for i, j in index_pairs
    ]


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen response, rejected response) of an Anthropic HH pair of whole dialogues.

    The prompt runs up to and including the last "\\n\\nAssistant:", so it ends with "Assistant:"
    and each response keeps its leading space. Cutting at the longest common prefix instead would
    swallow the start of two responses that begin alike (" Sure, ..."). None when either dialogue has
    no assistant turn, or the two differ before their last one.
    """
    cut_chosen, cut_rejected = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_chosen < 0 or cut_rejected < 0:
        return None
    end_chosen, end_rejected = cut_chosen + len(HH_ASSISTANT), cut_rejected + len(HH_ASSISTANT)
    prompt = chosen[:end_chosen]
    if rejected[:end_rejected] != prompt:
        return None
    return prompt, chosen[end_chosen:], rejected[end_rejected:]


def prompt_key(prompt: Prompt) -> str:
    """A prompt as plain text: raw text as it is, chat messages as "role: content" lines. It is the key
    that groups a prompt's pairs, and what a model without a chat template (an encoder) reads."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{turn['role']}: {turn['content']}" for turn in prompt)


def split_pairs_by_prompt(
    pairs: list[PreferencePair], validation_fraction: float, seed: int, fold: tuple[int, int] | None = None
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split by prompt into (train, validation), the same way for the same seed.

    All pairs of one prompt (its `group`, or its key when the group is unset) go to one side, so no
    prompt is trained on and validated on. The fraction counts prompts, not pairs; the draw is the one
    `split_records` uses (PCG64's raw stream), over prompts in order of first appearance, and each side
    keeps the pair order. With `fold` = (k, i), the validation side is fold i of a k-fold split of
    the prompts instead (cross-validation).
    """
    keys = [pair.group or prompt_key(pair.prompt) for pair in pairs]
    if fold is not None:
        return fold_split(pairs, keys, fold, seed)

    check_validation_fraction(validation_fraction)
    if validation_fraction == 0.0:
        return list(pairs), []
    groups = list(dict.fromkeys(keys))
    n = len(groups)
    if n < 2:
        raise DataError(
            f"cannot hold out validation prompts: the pairs have {n} distinct prompt{'' if n == 1 else 's'}",
            hint="add pairs for other prompts, or set data.validation_fraction: 0",
        )
    held_out_groups = {groups[i] for i in held_out(n, validation_fraction, seed)}
    train = [pair for pair, key in zip(pairs, keys, strict=True) if key not in held_out_groups]
    validation = [pair for pair, key in zip(pairs, keys, strict=True) if key in held_out_groups]
    return train, validation


def _detect_format(raw: dict[str, Any], fields: FieldsBlock, where: Where) -> str:
    keys = set(raw)
    if fields.responses in keys:
        return "ranking"
    if {fields.chosen, fields.rejected} <= keys:
        if fields.prompt in keys:
            return "pairs"
        chosen = raw[fields.chosen]
        if isinstance(chosen, str) and HH_ASSISTANT in chosen:
            return "hh"
        if isinstance(chosen, list):
            return "pairs"
    present = ", ".join(repr(str(k)) for k in raw) or "none"
    raise DataError(
        f"cannot tell the preference format from the keys {present}: expected {fields.responses!r} "
        f"(a ranking), or {fields.prompt!r}, {fields.chosen!r} and {fields.rejected!r} (pairs), or "
        f"{fields.chosen!r} and {fields.rejected!r} holding whole Human/Assistant dialogues (hh) "
        "or conversations",
        path=where.path,
        line=where.line,
        hint="set data.format, or map your field names under data.fields (e.g. data.fields.chosen: better)",
    )


# ---------------------------------------------------------------------------------------------
# Normalising one record


def _pair_record(raw: dict[str, Any], fields: FieldsBlock, where: Where) -> PreferencePair | Anomaly:
    for name in (fields.chosen, fields.rejected):
        if name not in raw:
            return missing_field(raw, name, where)
    if fields.prompt in raw:
        prompt = _prompt_value(raw[fields.prompt], fields.prompt, where)
    elif isinstance(raw[fields.chosen], list):
        # No prompt field: the conversations hold it, as the turns before their last (answer) turn.
        turns = _turns(raw[fields.chosen], fields.chosen, where)
        prompt = turns if isinstance(turns, Anomaly) else _prompt_turns(turns[:-1], fields.chosen, where)
    else:
        return missing_field(raw, fields.prompt, where)
    if isinstance(prompt, Anomaly):
        return prompt
    responses = []
    for name in (fields.chosen, fields.rejected):
        response = _response_value(raw[name], name, prompt, where)
        if isinstance(response, Anomaly):
            return response
        responses.append(response)
    kind = raw.get(_KIND_FIELD)
    if kind is not None and not isinstance(kind, str):
        return where.anomaly("missing_field", f"value is {json_type(kind)}, not a string", _KIND_FIELD)
    names = (fields.chosen, fields.rejected)
    return _checked_pair(_with_system(prompt, fields), *responses, names, where, kind or "")


def _hh_record(raw: dict[str, Any], fields: FieldsBlock, where: Where) -> PreferencePair | Anomaly:
    names = (fields.chosen, fields.rejected)
    dialogues = []
    for name in names:
        dialogue = string_field(raw, name, where)
        if isinstance(dialogue, Anomaly):
            return dialogue
        if HH_ASSISTANT not in dialogue:
            message = (
                'the dialogue has no "Assistant:" turn (expected "\\n\\nHuman: ... \\n\\nAssistant: ...")'
            )
            return where.anomaly("missing_field", message, name)
        dialogues.append(dialogue)
    split = split_hh_dialogue(*dialogues)
    if split is None:
        message = "the chosen and rejected dialogues differ before their last assistant turn"
        return where.anomaly("prompt_mismatch", message, fields.chosen)
    prompt, chosen, rejected = split
    return _checked_pair(prompt, chosen, rejected, names, where)


def _ranking_record(
    raw: dict[str, Any], fields: FieldsBlock, expand: str, where: Where
) -> tuple[list[PreferencePair], list[Anomaly]]:
    """A ranking's pairs, and its anomalies: one that rejects the record, or one same_response per
    duplicate response dropped. A response repeated within a ranking is dropped (its best-ranked copy
    stays), so the rest of the ranking still yields its pairs."""
    if fields.prompt not in raw:
        return [], [missing_field(raw, fields.prompt, where)]
    prompt = _prompt_value(raw[fields.prompt], fields.prompt, where)
    if isinstance(prompt, Anomaly):
        return [], [prompt]
    responses = _string_list(raw, fields.responses, where)
    if isinstance(responses, Anomaly):
        return [], [responses]
    k = len(responses)
    if k < 2:
        message = f"the ranking has {k} response{'' if k == 1 else 's'}; a pair needs two"
        return [], [where.anomaly("short_ranking", message, fields.responses)]
    for number, response in enumerate(responses, start=1):
        if not response.strip():
            return [], [where.anomaly("empty_text", f"response {number} is empty", fields.responses)]
    ranks = _ranks(raw, fields.ranks, k, where)
    if isinstance(ranks, Anomaly):
        return [], [ranks]
    kinds = None
    if raw.get(_KINDS_FIELD) is not None:
        kinds = _string_list(raw, _KINDS_FIELD, where)
        if isinstance(kinds, Anomaly):
            return [], [kinds]
        if len(kinds) != k:
            message = f"{len(kinds)} kinds for {k} responses: give one kind per response"
            return [], [where.anomaly("missing_field", message, _KINDS_FIELD)]

    first_copy: dict[str, int] = {}
    duplicates: list[Anomaly] = []
    for i in sorted(range(k), key=lambda i: ranks[i] if ranks is not None else i):
        text = responses[i].strip()
        if text in first_copy:
            message = f"response {i + 1} is the same text as response {first_copy[text] + 1}"
            duplicates.append(where.anomaly("same_response", message, fields.responses))
        else:
            first_copy[text] = i
    keep = sorted(first_copy.values())
    prompt = _with_system(prompt, fields)
    pairs = ranking_pairs(
        prompt,
        [responses[i] for i in keep],
        None if ranks is None else [ranks[i] for i in keep],
        expand=expand,
        group=prompt_key(prompt),
        source=str(where),
        kinds=None if kinds is None else [kinds[i] for i in keep],
    )
    return pairs, duplicates


def _checked_pair(
    prompt: Prompt,
    chosen: str,
    rejected: str,
    names: tuple[str, str],
    where: Where,
    kind: str = "",
) -> PreferencePair | Anomaly:
    for text, side, name in zip((chosen, rejected), ("chosen", "rejected"), names, strict=True):
        if not text.strip():
            return where.anomaly("empty_text", f"the {side} response is empty", name)
    if chosen.strip() == rejected.strip():
        message = "the chosen and rejected responses are the same text"
        return where.anomaly("same_response", message, names[0])
    return PreferencePair(prompt, chosen, rejected, group=prompt_key(prompt), kind=kind, source=str(where))


def _prompt_value(value: object, name: str, where: Where) -> list[dict[str, str]] | Anomaly:
    """A prompt field as chat turns: a string is one user turn, a list must end with the user's turn."""
    if isinstance(value, str):
        if not value.strip():
            return where.anomaly("empty_text", "the prompt is empty", name)
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        turns = _turns(value, name, where)
        return turns if isinstance(turns, Anomaly) else _prompt_turns(turns, name, where)
    message = f"value is {json_type(value)}, not a string or a list of {{role, content}} turns"
    return where.anomaly("missing_field", message, name)


def _prompt_turns(turns: list[dict[str, str]], name: str, where: Where) -> list[dict[str, str]] | Anomaly:
    if not turns:
        return where.anomaly("missing_field", "no prompt: there are no turns before the response", name)
    if turns[-1]["role"] != "user":
        message = f"the prompt ends with a {turns[-1]['role']} turn; it must end with the user's turn"
        return where.anomaly("missing_field", message, name)
    if not turns[-1]["content"].strip():
        return where.anomaly("empty_text", "the prompt's last user turn is empty", name)
    return turns


def _response_value(value: object, name: str, prompt: list[dict[str, str]], where: Where) -> str | Anomaly:
    """A response: a string, or a conversation whose last turn is the assistant's answer; turns before
    it, if any, must be the prompt's."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        message = f"value is {json_type(value)}, not a string or a list of {{role, content}} turns"
        return where.anomaly("missing_field", message, name)
    turns = _turns(value, name, where)
    if isinstance(turns, Anomaly):
        return turns
    if turns[-1]["role"] != "assistant":
        message = f"the last turn is a {turns[-1]['role']} turn, not the assistant's response"
        return where.anomaly("missing_field", message, name)
    if len(turns) > 1 and turns[:-1] != prompt:
        return where.anomaly("prompt_mismatch", "the turns before the response differ from the prompt", name)
    return turns[-1]["content"]


def _turns(value: object, name: str, where: Where) -> list[dict[str, str]] | Anomaly:
    # An unknown role is a malformed field here: the unknown_role policy belongs to the chat loader.
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else json_type(value)
        return where.anomaly("missing_field", f"expected a list of {{role, content}} turns, got {got}", name)
    turns = []
    for number, turn in enumerate(value, start=1):
        if not isinstance(turn, dict) or "role" not in turn:
            return where.anomaly("missing_field", f"turn {number} is not a {{role, content}} object", name)
        role, content = turn["role"], turn.get("content")
        if role not in ROLES:
            message = f"turn {number} has the unknown role {role!r} (known roles: {', '.join(ROLES)})"
            return where.anomaly("missing_field", message, name)
        if not isinstance(content, str):
            return where.anomaly(
                "missing_field", f"turn {number}: content is {json_type(content)}, not a string", name
            )
        turns.append({"role": role, "content": content})
    return turns


def _string_list(raw: dict[str, Any], name: str, where: Where) -> list[str] | Anomaly:
    if raw.get(name) is None:
        return missing_field(raw, name, where)
    value = raw[name]
    if not isinstance(value, list):
        return where.anomaly("missing_field", f"value is {json_type(value)}, not a list of strings", name)
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            return where.anomaly("missing_field", f"item {number} is {json_type(item)}, not a string", name)
    return value


def _ranks(raw: dict[str, Any], name: str, k: int, where: Where) -> list[float] | Anomaly | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)} ranks" if isinstance(value, list) else json_type(value)
        return where.anomaly("missing_field", f"expected one rank per response ({k}), got {got}", name)
    for number, rank in enumerate(value, start=1):
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank):
            return where.anomaly("missing_field", f"rank {number} is {rank!r}, not a finite number", name)
    return [float(rank) for rank in value]


def _with_system(prompt: list[dict[str, str]], fields: FieldsBlock) -> list[dict[str, str]]:
    if fields.system and prompt[0]["role"] != "system":
        return [{"role": "system", "content": fields.system}, *prompt]
    return prompt
