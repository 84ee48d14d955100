"""Shared AppTest helpers: open a page of the real app with a link's query, let its jobs finish."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from engine import jobs

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def open_page(page: str, **query) -> AppTest:
    """The router first (as a browser would), then the page, with ``query`` as the link's parameters."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(query)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for_jobs(timeout: float = 120) -> None:
    for pool in jobs.POOLS:
        for status in jobs.registry(pool).list():
            if not status.finished:
                jobs.registry(pool).wait(status.id, timeout=timeout)
