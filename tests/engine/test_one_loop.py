"""engine/fit.py is the only training loop: no other module runs the loop's updates, steps an optimiser
or a schedule, clears gradients, moves the loop's state, writes metric rows or saves checkpoints.
Checked on the source (AST).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import peaufine

SRC = Path(peaufine.__file__).parent
LOOP = "engine/fit.py"
# the checkpoint store fills in the RNG states of the state it saves
ALLOWED = {LOOP: {"all"}, "engine/checkpoint.py": {"state"}}
STEPPED = re.compile(r"optim|sched|scaler", re.IGNORECASE)


def terminal_name(node: ast.AST) -> str:
    """`b` for `a.b`, `a` for `a`, '' for anything else (a call, a subscript)."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def moves_loop_state(target: ast.AST) -> bool:
    """`x.state.step = ...` (any chain through `.state.`) or `state.step = ...` (an alias of it)."""
    if not isinstance(target, ast.Attribute):
        return False
    owner = target.value
    if isinstance(owner, ast.Name):
        return owner.id == "state"
    while isinstance(owner, ast.Attribute):
        if owner.attr == "state":
            return True
        owner = owner.value
    return False


def assigned(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    flat: list[ast.AST] = []
    while targets:
        target = targets.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            targets.extend(target.elts)
        else:
            flat.append(target)
    return flat


def loop_work(source: str) -> list[tuple[int, str, str]]:
    """(line, rule, code) of every piece of the loop's own work in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for target in assigned(node):
            if moves_loop_state(target):
                found.append((node.lineno, "state", ast.unparse(target)))
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, terminal_name(node.func.value)
        rule = None
        if method in ("gradients_on", "apply_update"):
            rule = "update"
        elif method == "step" and STEPPED.search(receiver):
            rule = "step"
        elif method == "zero_grad":
            rule = "zero_grad"
        elif method == "write" and receiver == "metrics":
            rule = "metrics"
        elif method == "checkpoint" and receiver != "checkpoint":  # not torch.utils.checkpoint's
            rule = "checkpoint"
        elif method in ("save", "save_best") and "store" in receiver.lower():
            rule = "store"
        if rule is not None:
            found.append((node.lineno, rule, ast.unparse(node.func)))
    return sorted(found)


def test_only_the_engine_loop_does_the_loops_work():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        allowed = ALLOWED.get(module, set())
        if "all" in allowed:
            continue
        for line, rule, code in loop_work(path.read_text(encoding="utf-8")):
            if rule not in allowed:
                offenders.append(f"src/peaufine/{module}:{line}: {code} ({rule})")
    assert not offenders, "the loop's work outside engine/fit.py:\n" + "\n".join(offenders)


def test_the_loop_itself_does_all_of_it():
    # the allow-list points at the real loop: if fit.py stopped doing this work, the rules went stale
    rules = {rule for _, rule, _ in loop_work((SRC / LOOP).read_text(encoding="utf-8"))}
    assert rules == {"update", "step", "zero_grad", "metrics", "checkpoint", "store", "state"}


def test_the_checker_flags_a_second_loop():
    second_loop = textwrap.dedent("""
        def train(loop, batch, optimizer):
            loop.gradients_on([batch])
            optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad(set_to_none=True)
            loop.state.step += 1
            loop.state.examples_seen, other = 8, None
            state = loop.state
            state.tokens_seen = 0
            loop.metrics.write({"step": 1})
            loop.checkpoint()
            loop.store.save(None, None, None, None)
    """)
    found = [(rule, code) for _, rule, code in loop_work(second_loop)]
    assert found == [
        ("update", "loop.gradients_on"),
        ("step", "optimizer.step"),
        ("step", "loop.scheduler.step"),
        ("zero_grad", "loop.optimizer.zero_grad"),
        ("state", "loop.state.step"),
        ("state", "loop.state.examples_seen"),
        ("state", "state.tokens_seen"),
        ("metrics", "loop.metrics.write"),
        ("checkpoint", "loop.checkpoint"),
        ("store", "loop.store.save"),
    ]


def test_the_checker_leaves_look_alikes_alone():
    look_alikes = textwrap.dedent("""
        ax.step(xs, ys, where="post")
        torch.utils.checkpoint.checkpoint(block, hidden)
        step = loop.state.step
        handle.write(json.dumps(row))
        tokenizer.save_pretrained(folder)
        self.state = TrainerState()
    """)
    assert loop_work(look_alikes) == []
