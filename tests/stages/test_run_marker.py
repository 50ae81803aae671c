"""The run marker: a folder is a peaufine run by its .peaufine-run.json alone, which says how the run
stands; --overwrite and --resume act on marked runs only, and --overwrite never deletes a stranger's file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from conftest import llama_tiny_block
from peaufine.errors import RunDirError
from peaufine.recipe import validate_recipe

pytestmark = pytest.mark.slow

MARKER = ".peaufine-run.json"
FIELDS = {"schema", "run_id", "stage", "status", "pid", "host", "started", "heartbeat", "detail", "entries"}


def recipe(max_steps: int = 3):
    return validate_recipe(
        {
            "stage": "pretrain",
            "model": llama_tiny_block(16, {"kind": "char"}),
            "data": {
                "source": "world",
                "world": {"seed": 0, "size": "smoke", "documents": 20, "faq_documents": 4},
                "block_size": 16,
                "validation_fraction": 0.2,
            },
            "train": {"device": "cpu", "max_steps": max_steps, "batch_size": 4, "checkpoint_every": 2},
            "eval": {"every": max_steps, "samples": 0},
        }
    )


def marker(out: Path) -> dict:
    return json.loads((out / MARKER).read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> tuple[Path, list[dict | None]]:
    """A finished run, and its marker as it was after each step."""
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("marked") / "run"
    seen: list[dict | None] = []
    run_pretrain(
        recipe(), out, hooks=[lambda step: seen.append(marker(out) if (out / MARKER).exists() else None)]
    )
    return out, seen


@pytest.fixture
def finished(marked) -> Path:
    return marked[0]


def test_a_finished_run_is_marked_finished_with_the_documented_fields(marked):
    from peaufine.rundir import RunMarker

    finished, seen = marked
    # while it trained: running, by this process
    assert [m and m["status"] for m in seen] == ["running"] * 3
    assert {(m["pid"], m["host"]) for m in seen} == {(os.getpid(), socket.gethostname())}
    found = marker(finished)
    assert set(found) == FIELDS
    assert found["schema"] == 1 and found["stage"] == "pretrain" and found["status"] == "finished"
    assert found["detail"] is None
    assert found["heartbeat"] >= found["started"]  # ISO 8601, UTC: they sort as times do
    # every top-level entry of the run is one peaufine wrote
    assert set(found["entries"]) == {p.name for p in finished.iterdir()}
    assert RunMarker.read(finished).status == "finished"


@pytest.mark.parametrize(
    ("stop", "status"),
    [("error", "failed"), ("ctrl-c", "interrupted"), ("sigterm", "interrupted")],
)
def test_a_run_that_stops_is_marked_with_why(tmp_path, stop, status):
    from peaufine.stages.pretrain import run_pretrain

    def stop_at_step_one(step: int) -> None:
        if stop == "error":
            raise RuntimeError("boom")
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)

    def not_caught(signum, frame):
        raise AssertionError("the run let SIGTERM through to the handler it found")

    expected = {"error": RuntimeError, "ctrl-c": KeyboardInterrupt, "sigterm": SystemExit}[stop]
    # the test's own handler keeps a SIGTERM that the run does not catch from stopping pytest
    original = signal.signal(signal.SIGTERM, not_caught)
    try:
        with pytest.raises(expected):
            run_pretrain(recipe(), tmp_path / "run", hooks=[stop_at_step_one])
        assert signal.getsignal(signal.SIGTERM) is not_caught  # the run's own handler is gone with it
    finally:
        signal.signal(signal.SIGTERM, original)
    found = marker(tmp_path / "run")
    assert found["status"] == status
    if stop == "error":
        assert "boom" in found["detail"]


def older_run(folder: Path, finished: Path) -> None:
    """A run as peaufine made them before the marker: the same files, no marker."""
    shutil.copytree(finished, folder)
    (folder / MARKER).unlink(missing_ok=True)


@pytest.mark.parametrize("flag", ["overwrite", "resume"])
@pytest.mark.parametrize("kind", ["only-a-recipe", "older-run"])
def test_a_folder_without_the_marker_is_neither_replaced_nor_resumed(tmp_path, finished, flag, kind):
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    if kind == "only-a-recipe":
        out.mkdir()
        (out / "recipe.yaml").write_text(recipe().to_yaml(), encoding="utf-8")
        (out / "notes.txt").write_text("mine", encoding="utf-8")
    else:
        older_run(out, finished)
    before = snapshot(out)
    with pytest.raises(RunDirError) as refused:
        run_pretrain(recipe(), out, **{flag: True})
    message = str(refused.value)
    assert MARKER in message and str(out) in message
    assert "older peaufine" in message  # how to proceed with a run made before the marker
    assert snapshot(out) == before


def test_overwrite_refuses_a_run_holding_files_peaufine_did_not_write_naming_them(tmp_path, finished):
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "plots").mkdir()
    before = snapshot(out)
    with pytest.raises(RunDirError) as refused:
        run_pretrain(recipe(), out, overwrite=True)
    assert "notes.txt" in str(refused.value) and "plots" in str(refused.value)
    assert snapshot(out) == before
    # the control: without them, the run is replaced by a new one
    (out / "notes.txt").unlink()
    (out / "plots").rmdir()
    old_id = marker(out)["run_id"]
    run_pretrain(recipe(), out, overwrite=True)
    assert marker(out)["status"] == "finished" and marker(out)["run_id"] != old_id


@pytest.mark.parametrize("flag", ["overwrite", "resume"])
def test_a_run_still_running_in_another_process_is_left_alone(tmp_path, finished, flag):
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    found = marker(out)
    found.update(status="running", pid=os.getppid())  # a live process on this host
    (out / MARKER).write_text(json.dumps(found), encoding="utf-8")
    before = snapshot(out)
    with pytest.raises(RunDirError) as refused:
        run_pretrain(recipe(), out, **{flag: True})
    assert f"pid {os.getppid()}" in str(refused.value)
    assert snapshot(out) == before


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize("start", ["fresh", "resume"])
def test_the_next_start_of_a_run_removes_the_staging_of_dead_processes_only(tmp_path, finished, start):
    """A kill during preparation leaves .NAME.staging-HOST-PID beside the run, a kill while writing a
    checkpoint leaves checkpoints/.tmp-step-N-HOST-PID: the next start of that run removes those of
    dead processes of this host, and leaves a live process's, another host's and another run's."""
    from peaufine.stages.pretrain import run_pretrain

    host, dead, live = socket.gethostname(), dead_pid(), os.getppid()
    out = tmp_path / "out"
    if start == "resume":
        shutil.copytree(finished, out)
    kept, removed = [], []
    for pid, goes in ((dead, True), (live, False)):
        (removed if goes else kept).append(tmp_path / f".out.staging-{host}-{pid}")
        if start == "resume":
            (removed if goes else kept).append(out / "checkpoints" / f".tmp-step-00000002-{host}-{pid}")
    kept += [tmp_path / f".other.staging-{host}-{dead}", tmp_path / f".out.staging-elsewhere-{dead}"]
    for folder in kept + removed:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    run_pretrain(recipe(), out, resume=start == "resume")
    assert [p for p in removed if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_a_resume_removes_the_partial_writes_of_dead_processes_in_the_run_folder(tmp_path, finished):
    """A kill while the final model, eval.json or a plot was written leaves .model.tmp-PID (a full
    model), .eval.json.tmp-PID or .loss.tmp-PID.png in the run: a resume on the run's host removes those
    of dead processes and leaves a live one's."""
    from peaufine.stages.pretrain import run_pretrain

    dead, live = dead_pid(), os.getppid()
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    removed = [out / f".model.tmp-{dead}", out / f".eval.json.tmp-{dead}", out / f".loss.tmp-{dead}.png"]
    kept = [out / f".eval.json.tmp-{live}"]
    removed[0].mkdir()
    (removed[0] / "model.safetensors").write_bytes(b"partial")
    for path in [*removed[1:], *kept]:
        path.write_bytes(b"partial")
    run_pretrain(recipe(), out, resume=True)
    assert [p for p in removed if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_resume_on_a_finished_run_redoes_its_ending_to_the_same_eval_json(tmp_path, finished):
    """--resume on a finished run trains no step and redoes the final evaluation, model and report from
    the final checkpoint: eval.json is the one it had (timing aside), not one with null losses."""
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = (out / "metrics.jsonl").read_text(encoding="utf-8")
    run_pretrain(recipe(), out, resume=True)
    after = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert before["final_train_loss"] is not None and before["val_loss"] is not None
    assert {k: v for k, v in after.items() if k != "train_seconds"} == {
        k: v for k, v in before.items() if k != "train_seconds"
    }
    assert (out / "metrics.jsonl").read_text(encoding="utf-8") == rows
    assert marker(out)["status"] == "finished"


def test_a_file_the_user_put_in_a_running_run_stays_the_users(tmp_path, finished):
    """The end of a run lists the names peaufine wrote; a user's note put there while it ran is not one
    of them, so --overwrite refuses it instead of deleting it."""
    from peaufine.rundir import mark_run
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "notes.md").write_text("mine", encoding="utf-8")
    mark_run(out, "finished", list_entries=True)  # what the run's ending does
    assert "notes.md" not in marker(out)["entries"]
    before = snapshot(out)
    with pytest.raises(RunDirError, match=r"notes\.md"):
        run_pretrain(recipe(), out, overwrite=True)
    assert snapshot(out) == before


def test_a_killed_run_with_its_tracking_outputs_can_be_overwritten(tmp_path, finished):
    """tensorboard/ and mlflow.db are written by the run after its marker: a run killed while it
    trained (its marker still 'running', its process gone) holds them and is still a run to replace."""
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    found = marker(out)
    found.update(status="running", pid=2**22 + 12345, entries=[MARKER, "recipe.yaml"])  # a dead pid
    (out / MARKER).write_text(json.dumps(found), encoding="utf-8")
    (out / "tensorboard").mkdir()
    (out / "mlflow.db").write_bytes(b"")
    run_pretrain(recipe(), out, overwrite=True)
    assert marker(out)["status"] == "finished" and not (out / "mlflow.db").exists()


def test_the_runs_own_error_survives_a_marker_that_cannot_be_read(tmp_path):
    """The error that stopped a run is what the user must see: a marker that cannot be read or written
    then (a damaged file, a full disk) is warned about, not raised in its place."""
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path / "run"

    def garble_marker_then_fail(step: int) -> None:
        (out / MARKER).write_text("{not json", encoding="utf-8")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_pretrain(recipe(), out, hooks=[garble_marker_then_fail])
