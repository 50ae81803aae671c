"""The tracker's messages: a path or a value is printed as it is, whatever brackets it holds (Rich would
read `[bold]` or `[/]` in it as markup, drop it or fail); only a heading the caller names is styled."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from peaufine.engine.track import Tracker

NAMES = ["runs/v[/]2", "runs/[bold]x", "data/[link=x]y.txt", "a [red]b[/red] c", "plain/path"]


def tracker(color: bool = False) -> tuple[Tracker, io.StringIO]:
    buffer = io.StringIO()
    system = "standard" if color else None
    console = Console(file=buffer, width=1000, force_terminal=color, color_system=system)
    return Tracker(enabled=True, console=console), buffer


@pytest.mark.parametrize("name", NAMES)
def test_a_message_is_printed_as_it_is(name: str) -> None:
    said, buffer = tracker()
    said.say(f"resumed from {name}")
    said.warn(f"{name} is damaged")
    said.say(f"-> {name}", heading=f"fold 1/2 {name}")
    assert buffer.getvalue().splitlines() == [
        f"resumed from {name}",
        f"warning: {name} is damaged",
        f"fold 1/2 {name} -> {name}",
    ]


def test_only_the_heading_and_the_warning_label_are_styled() -> None:
    said, buffer = tracker(color=True)
    said.say("-> runs/a", heading="fold 1/2")
    said.warn("runs/a is damaged")
    said.say("plain")
    lines = buffer.getvalue().splitlines()
    bold = "\x1b[1m"
    assert lines[0].startswith(bold + "fold 1/2") and lines[0].endswith("-> runs/a")
    assert lines[1] == "\x1b[1;33mwarning:\x1b[0m runs/a is damaged"  # bold yellow, then plain
    assert lines[2] == "plain"  # the control: no style where none was asked for
