"""Headless Chromium helpers for the report tests: dump the DOM after scripts ran, take a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium() -> str:
    """Path of the Chromium binary; fails the test (not skips) when it is missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert exe, "headless Chromium is needed for the report tests: run `make browser` (apt-get install chromium)"
    return exe


def dump_dom(html: Path, profile: Path, budget_ms: int = 10000) -> str:
    """The DOM of ``html`` after its load handlers ran (virtual time budget)."""
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           "--dump-dom", html.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def screenshot(html: Path, png: Path, profile: Path, width: int = 1280, height: int = 4000) -> Path:
    """A PNG screenshot of the page (full width, ``height`` pixels tall)."""
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
           f"--screenshot={png}", "--virtual-time-budget=10000", html.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and png.exists(), res.stderr[-2000:]
    return png


def images_loaded(dom: str) -> tuple[int, int]:
    """(loaded, total) image counts that the report's inline script wrote on <body>."""
    m_ok = re.search(r'data-images-loaded="(\d+)"', dom)
    m_all = re.search(r'data-images-total="(\d+)"', dom)
    assert m_ok and m_all, "the report's image-count script did not run"
    return int(m_ok.group(1)), int(m_all.group(1))
