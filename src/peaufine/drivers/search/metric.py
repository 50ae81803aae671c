"""What a search optimises (`--metric`): one metric name, or arithmetic over metric names, parsed and
evaluated on a run's metrics; and whether it is minimised or maximised."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from peaufine.errors import RecipeError

DIRECTIONS = ("minimize", "maximize")

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|`(?P<quoted>[^`]+)`|(?P<op>[-+*/()]))"
)

Node = tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise RecipeError(
                f"--metric {text!r}: cannot read {text[position:].strip()!r}; write metric names, "
                "numbers, + - * / and parentheses (a name with other characters goes in `backquotes`)"
            )
        position = match.end()
        if match["number"] is not None:
            tokens.append(("number", float(match["number"])))
        elif match["op"] is not None:
            tokens.append(("op", match["op"]))
        else:
            tokens.append(("name", match["name"] or match["quoted"]))
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := ('+'|'-') factor | number | name | '(' expr ')'"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, what: str) -> RecipeError:
        return RecipeError(f"--metric {self.text!r}: {what}")

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise self.fail("the expression ends too early")
        self.at += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("empty; name a metric, e.g. val_loss")
        node = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = (self.take()[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = (self.take()[1], node, self.factor())
        return node

    def factor(self) -> Node:
        kind, value = self.take()
        if kind == "number":
            return ("number", value)
        if kind == "name":
            return ("name", value)
        if value in "+-":
            operand = self.factor()
            return ("neg", operand) if value == "-" else operand
        if value == "(":
            node = self.expr()
            if self.take() != ("op", ")"):
                raise self.fail("a '(' is not closed")
            return node
        raise self.fail(f"unexpected {value!r}")


def _names(node: Node) -> list[str]:
    if node[0] == "name":
        return [node[1]]
    return [name for child in node[1:] if isinstance(child, tuple) for name in _names(child)]


@dataclass(frozen=True)
class MetricExpression:
    """What a search optimises: one metric a run reports, or arithmetic over several."""

    text: str
    tree: Node
    names: tuple[str, ...]

    @property
    def is_name(self) -> bool:
        return self.tree[0] == "name"

    def value(self, metrics: dict[str, float], where: str = "the run") -> float:
        missing = [name for name in self.names if name not in metrics]
        if missing:
            name = missing[0]
            close = difflib.get_close_matches(name, list(metrics), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            listing = ", ".join(sorted(metrics)[:40])
            raise RecipeError(
                f"--metric {self.text!r}: {where} reports no '{name}'. {hint}It reports: {listing}"
            )
        return _evaluate(self.tree, metrics)


def _evaluate(node: Node, metrics: dict[str, float]) -> float:
    kind = node[0]
    if kind == "number":
        return node[1]
    if kind == "name":
        return float(metrics[node[1]])
    if kind == "neg":
        return -_evaluate(node[1], metrics)
    left, right = _evaluate(node[1], metrics), _evaluate(node[2], metrics)
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return left / right if right != 0 else math.nan  # a non-finite objective fails the trial


def parse_metric(text: str) -> MetricExpression:
    tree = _Parser(text).parse()
    return MetricExpression(text=text.strip(), tree=tree, names=tuple(dict.fromkeys(_names(tree))))


_MAXIMISED = ("accuracy", "exact_match", "reward", "f1", "recall", "precision", "pass_rate", "win_rate")
_MINIMISED = ("perplexity", "forgetting")


def metric_direction(metric: MetricExpression, direction: str | None = None) -> str:
    """An explicit direction wins; a loss is minimised, an accuracy / exact match / reward / F1 /
    recall maximised; an expression is minimised (write it so that lower is better)."""
    if direction is not None:
        if direction not in DIRECTIONS:
            raise RecipeError(f"--direction {direction!r}: use minimize or maximize")
        return direction
    if not metric.is_name:
        return "minimize"
    name = metric.names[0].lower()
    if "loss" in name:
        return "minimize"
    if any(word in name for word in _MAXIMISED):
        return "maximize"
    if any(word in name for word in _MINIMISED):
        return "minimize"
    raise RecipeError(
        f"--metric {metric.text!r}: cannot tell whether higher or lower is better; "
        "pass --direction minimize or --direction maximize"
    )
