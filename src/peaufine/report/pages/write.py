"""Which report a folder gets (from the marker file it holds) and writing it: <folder>/report.html,
atomically, with the PNG plots it shows next to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peaufine.atomic import write_text_atomic
from peaufine.errors import RunDirError
from peaufine.report.pages.compare import compare_page
from peaufine.report.pages.crossval import cv_page
from peaufine.report.pages.pipeline import pipeline_page
from peaufine.report.pages.run import run_page
from peaufine.report.pages.search import search_page
from peaufine.report.toolkit import REPORT_NAME
from peaufine.rundir import RECIPE

# The file that makes a folder each kind of report; the first found wins: a pipeline folder holds stage
# runs and a search folder trial runs, and a folder could hold a stray recipe.yaml beside its own marker.
MARKERS = (
    ("compare.json", "compare"),
    ("pipeline.json", "pipeline"),
    ("study.json", "search"),
    ("cv.json", "cv"),
    (RECIPE, "run"),
)


def report_kind(directory: Path) -> str:
    """ "compare", "pipeline", "search", "cv" or "run", from the marker file the folder holds (MARKERS)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunDirError(f"{directory} is not a folder; give the output folder of a run to report on")
    for marker, kind in MARKERS:
        if (directory / marker).is_file():
            return kind
    names = ", ".join(marker for marker, _ in MARKERS)
    raise RunDirError(
        f"{directory} holds nothing peaufine can report on (none of {names}); give the folder of a "
        "stage run, a search, a cross-validation, a pipeline or a comparison"
    )


def write_report(directory: Path) -> Path:
    """Write <directory>/report.html (atomically: temp file + os.replace) and the PNG plots it shows,
    next to it; return the html path."""

    directory = Path(directory)
    pages: dict[str, Callable[[Path], str]] = {
        "compare": compare_page,
        "pipeline": pipeline_page,
        "search": search_page,
        "cv": cv_page,
        "run": run_page,
    }
    page = pages[report_kind(directory)](directory)
    path = directory / REPORT_NAME
    write_text_atomic(path, page)
    return path
