"""Two app processes sharing one GLASSBOX_CACHE (issue 16): a run started through one is listed by
the other, shown there as training in another server process (Resume refused with a sentence),
and resumable there once it stops. Real `streamlit run` processes on localhost, real Chromium; the
first user goes through nginx with the README's own config when nginx is installed."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from engine import models
from engine.patterns import runs
from tests.browser import ROOT, SHOTS, chromium_page, free_port, screenshot, wait_for_app
from tests.test_restarts import app_server, resume_to, start_run_in_page, wait_until

pytestmark = pytest.mark.browser
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextlib.contextmanager
def readme_proxy(url_a: str, url_b: str, folder: Path):
    """nginx in front of both servers with the README's config block (ports and address swapped in);
    yields its URL, or None where nginx is not installed (the test then talks to server A directly)."""
    if NGINX is None:
        yield None
        return
    block = re.search(r"```nginx\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    port = free_port()
    block = block.replace("listen 80;", f"listen 127.0.0.1:{port};")
    block = block.replace("server 127.0.0.1:8501;", f"server {url_a.removeprefix('http://')};")
    block = block.replace("server 127.0.0.1:8502;", f"server {url_b.removeprefix('http://')};")
    assert str(port) in block and url_a.rsplit(":", 1)[1] in block and url_b.rsplit(":", 1)[1] in block
    folder.mkdir(parents=True, exist_ok=True)
    temp = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(f"pid {folder / 'nginx.pid'};\nerror_log {SHOTS.parent / 'nginx-error.log'};\n"
                                       f"events {{}}\nhttp {{\naccess_log {folder / 'access.log'};\n{temp}\n{block}}}\n")
    proxy = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url) or proxy.poll() is not None, 30, "nginx to answer")
        assert proxy.poll() is None, "nginx refused the README's config (see artifacts/nginx-error.log)"
        yield url
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def test_a_run_started_on_one_server_is_seen_and_resumed_on_the_other(tmp_path):
    cache, name = tmp_path / "cache", "shared-run"
    folder = cache / "pattern-runs" / name
    with (app_server(cache, "server-1") as (url_1, server_1), app_server(cache, "server-2") as (url_2, server_2),
          readme_proxy(url_1, url_2, tmp_path / "nginx") as front):
        with chromium_page() as page_a:
            page_b = page_a.context.browser.new_page(viewport=page_a.viewport_size)  # a second user
            page_b.set_default_timeout(60_000)
            start_run_in_page(page_a, front or url_1, name)  # A: the process the proxy picked for this browser
            wait_until(lambda: runs.run_activity(folder).kind == "training", 120, "the trainer to claim the run")
            started_by = runs.read_state(folder)["owner"]["pid"]
            assert started_by in (server_1.pid, server_2.pid)
            server_a, (url_b, server_b) = ((server_1, (url_2, server_2)) if started_by == server_1.pid else
                                           (server_2, (url_1, server_1)))
            if front:
                print(f"through nginx at {front}: the proxy sent this browser to pid {server_a.pid}")

            page_b.goto(f"{url_b}/patterns?image=chelsea&model={models.TEST_MODEL}&mode=train&run={name}")
            busy = (f"This run is training in another server process (pid {server_a.pid}); it can be resumed here "
                    "once it stops.")
            wait_for_app(page_b, busy)
            page_b.get_by_text(f"Training '{name}' in pid {server_a.pid}: step").first.wait_for()  # live, from disk
            assert not page_b.get_by_role("button", name="Resume", exact=True).count()
            assert not page_b.get_by_role("button", name="Stop", exact=True).count()  # not B's job to stop
            screenshot(page_b, "two-servers-busy")

            page_a.get_by_role("button", name="Stop", exact=True).click()
            page_a.get_by_role("button", name="Resume", exact=True).wait_for(timeout=120_000)
            stopped = runs.checkpoint_steps(folder)
            assert runs.read_state(folder)["state"] == "stopped" and stopped >= 1

            # B's page notices by itself (it polls the run's folder) and offers Resume
            page_b.get_by_role("button", name="Resume", exact=True).wait_for(timeout=30_000)
            assert not page_b.get_by_text(busy).count()
            resume_to(page_b, stopped + 10)
            assert not page_b.get_by_text("Traceback").count()
            screenshot(page_b, "two-servers-resumed")
    state = runs.read_state(folder)
    assert state["owner"]["pid"] == server_b.pid and state["state"] == "finished"
    assert runs.checkpoint_steps(folder) == stopped + 10
    assert list(runs.read_log(folder / "log.csv")["step"]) == list(range(1, stopped + 11))  # no step twice
