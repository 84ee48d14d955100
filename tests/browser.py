"""Helpers for real-browser tests: a fresh `streamlit run` on localhost and Debian's chromium.

Screenshots go to ``artifacts/screenshots/`` (git ignores it) so a person can look at them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_process(*, env: dict | None = None, log_name: str = "streamlit-server", timeout: float = 90.0):
    """`streamlit run` on a free localhost port, as the README starts it, with ``env`` added (for example
    another GLASSBOX_CACHE); yields (base URL, process) so a test can also kill it; stops it afterwards."""
    port = free_port()
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SHOTS.parent / f"{log_name}.log", "w")
    env = {**os.environ, "GLASSBOX_DEVICE": "cpu", "MALLOC_ARENA_MAX": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start (exit code {process.poll()}); see {log.name}")
            time.sleep(0.3)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@contextlib.contextmanager
def streamlit_server(timeout: float = 90.0):
    """Start the app on a free localhost port; yield its base URL; stop it afterwards."""
    with app_process(timeout=timeout) as (url, _process):
        yield url


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 950):
    if not Path(CHROMIUM).exists():
        if os.environ.get("GLASSBOX_SKIP_BROWSER") == "1":
            pytest.skip("GLASSBOX_SKIP_BROWSER=1 and no chromium")
        raise RuntimeError("Browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def wait_for_app(page, text: str | None = None) -> None:
    """Wait until Streamlit has finished running the script (and ``text`` is visible)."""
    page.wait_for_selector('[data-testid="stApp"]')
    if text:
        page.get_by_text(text, exact=False).first.wait_for(state="visible")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
    page.wait_for_timeout(500)


def screenshot(page, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to fit it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                           "'[data-testid=\"stMain\"], [data-testid=\"stSidebarContent\"]'), e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 40, 6000))})
    page.wait_for_timeout(400)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


def click_and_wait(page, button: str, result_text: str, timeout_ms: int = 120_000) -> None:
    """Press a button (by its exact name), wait until ``result_text`` shows and the app is idle."""
    page.get_by_role("button", name=button, exact=True).click()
    page.get_by_text(result_text).first.wait_for(timeout=timeout_ms)
    wait_for_app(page)


def reload_mid_run(page, result_text: str, idle_text: str, *, stop_label: str = "Cancel",
                   timeout_ms: int = 180_000) -> bool:
    """Reload the tab while its job runs: the page must find the job by the settings in its link
    and show the result by itself, without any click. Returns whether the job was still running
    when the tab was reloaded (the job row's ``stop_label`` button was on screen)."""
    try:
        page.get_by_role("button", name=stop_label, exact=True).first.wait_for(timeout=30_000)
    except Exception:
        screenshot(page, "reload-mid-run-no-job-row")
        raise
    page.wait_for_timeout(1000)
    running = page.get_by_role("button", name=stop_label, exact=True).count() > 0
    url = page.url
    page.reload()
    assert page.url == url  # the settings travel in the link
    page.wait_for_selector('[data-testid="stApp"]')
    page.get_by_text(result_text).first.wait_for(timeout=timeout_ms)
    wait_for_app(page)
    assert not page.get_by_text(idle_text).count(), f"the reloaded page asks to start again: {idle_text}"
    return running
