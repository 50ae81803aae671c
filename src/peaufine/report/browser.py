"""A report page as a reader's browser sees it: headless Chromium loads it, says how many images loaded
or broke and what reached the console, and takes a screenshot; for tests and for report-checking scripts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peaufine.errors import PeaufineError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60
# Chromium writes each console message to its log as `...:INFO:CONSOLE:<line>] "<message>", source: ...`
# (older versions: `CONSOLE(<line>)]`). The log does not keep the console level in new headless mode:
# console.log and an uncaught exception both read INFO.
_CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)$")


@dataclass(frozen=True)
class BrowserCheck:
    """What the page's load script found (None where it did not run) and every console message.

    The report page writes nothing to the console, so any message is an error of the page.
    """

    images_loaded: int | None
    images_broken: int | None
    console_errors: list[str]


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _run_chromium(html: Path, *args: str) -> tuple[str, str]:
    """Run headless Chromium on `html` with `args`; its stdout and stderr.

    Chromium gets its own throwaway profile, its own process group (killed as a whole at the
    timeout: the renderer and GPU processes would outlive the browser) and 5 s of virtual time, so
    the page's load event and scripts have run before it dumps or shoots the page.
    """
    chromium = find_chromium()
    if chromium is None:
        raise PeaufineError(
            "chromium not found on PATH; install it (apt-get install chromium) to check pages"
        )
    with tempfile.TemporaryDirectory(prefix="peaufine-chromium-", ignore_cleanup_errors=True) as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",  # containers and root users have no user namespaces for the sandbox
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            f"--user-data-dir={profile}",
            *args,
            Path(html).resolve().as_uri(),
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise PeaufineError(f"chromium did not finish with {html} within {TIMEOUT_S} s") from None
    if process.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-5:])
        raise PeaufineError(f"chromium failed on {html} (exit {process.returncode}):\n{tail}")
    return stdout, stderr


def console_messages(log: str) -> list[str]:
    """The console messages in a Chromium stderr log, one line each."""
    return [match.group(1) for line in log.splitlines() if (match := _CONSOLE_LINE.search(line))]


def _body_count(dom: str, attribute: str) -> int | None:
    body = re.search(r"<body\b[^>]*>", dom)
    found = re.search(rf'\b{attribute}="(\d+)"', body.group(0)) if body else None
    return int(found.group(1)) if found else None


def check_in_browser(html: Path) -> BrowserCheck:
    """Load `html` in headless Chromium: its images (from the page's data-images-* attributes on
    <body>, set by its load script) and its console messages."""
    dom, log = _run_chromium(html, "--dump-dom")
    return BrowserCheck(
        images_loaded=_body_count(dom, "data-images-loaded"),
        images_broken=_body_count(dom, "data-images-broken"),
        console_errors=console_messages(log),
    )


def screenshot_report(html: Path, png: Path, width: int = 1280, height: int = 6000) -> None:
    """A PNG of the page as a `width` x `height` window shows it (the page's top `height` pixels)."""
    png = Path(png).resolve()
    _run_chromium(html, "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png}")
    if not png.is_file():
        raise PeaufineError(f"chromium wrote no screenshot of {html} to {png}")
