"""The report pages as headless Chromium shows them: the browser check sees script errors and broken
images, and the smoke sft run's page loads with every image and no console error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from page_checks import image_sources, make_tiny_run, report_stage_runs

from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A hand-made sft run that stopped early at step 60 after overfitting from step 30."""
    return make_tiny_run(tmp_path)


@pytest.fixture(scope="module")
def stage_reports(smoke_demo, tmp_path_factory) -> dict[str, Path]:
    """Each smoke stage run, copied without weights and checkpoints (the report reads neither), reported."""
    return report_stage_runs(smoke_demo, tmp_path_factory)


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def require_chromium() -> None:
    from peaufine.report.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("chromium not installed: apt-get install chromium (Debian) to run the browser checks")


@pytest.mark.slow
def test_the_browser_check_sees_script_errors_and_broken_images(tiny_run, tmp_path):
    from peaufine.report.browser import check_in_browser

    require_chromium()
    broken_page = tmp_path / "broken.html"
    broken_page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png">'
        "<script>window.addEventListener('load', function () { deliberateMistake(); });</script>"
        "</body></html>",
        encoding="utf-8",
    )
    check = check_in_browser(broken_page)
    assert check.images_loaded is None  # a page without the report's load script
    assert any("deliberateMistake is not defined" in line for line in check.console_errors), check

    page = write_report(tiny_run)
    (tiny_run / "report-lr.png").unlink()
    check = check_in_browser(page)
    assert (check.images_loaded, check.images_broken, check.console_errors) == (1, 1, [])


@pytest.mark.slow
def test_the_sft_report_loads_in_a_browser_with_every_image_and_no_console_error(stage_reports, tmp_path):
    from peaufine.report.browser import check_in_browser, screenshot_report

    require_chromium()
    page = stage_reports["sft"] / REPORT_NAME
    check = check_in_browser(page)
    assert check.images_broken == 0
    assert check.images_loaded == len(image_sources(page.read_text(encoding="utf-8"))) > 0
    assert check.console_errors == []
    shot = tmp_path / "sft.png"
    screenshot_report(page, shot)
    assert png_size(shot) == (1280, 6000)
    assert shot.stat().st_size > 50_000  # a blank page of this size compresses to a few kB
