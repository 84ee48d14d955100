"""Real browser on a freshly started server: the router's navigation is the only one ever shown.

Streamlit lists a ``pages/`` folder in the sidebar by itself (lowercase file names) until the
script's ``st.navigation`` arrives; the pages live in ``app_pages/`` so that list never exists.
"""

from __future__ import annotations

import time

import pytest

from tests.browser import chromium_page, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser

NAV = ["Home", "Lecture", "Classify", "Anatomy", "Relabel", "Saliency", "Class inversion", "Dissection", "Patterns", "Mind's Eye", "Attacks lab"]
FILE_NAMES = {"streamlit app", "home", "lecture", "classify", "anatomy", "relabel", "saliency", "inversion", "dissection", "patterns", "minds eye", "attacks lab"}
READ_NAV = """() => Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a, [data-testid="stSidebarNavLink"]'))
                  .map(a => a.innerText.trim().split('\\n').pop().trim())"""


def watch_navigation(page, url: str, seconds: float = 8.0) -> list[list[str]]:
    """Every distinct sidebar navigation seen from the first paint on, polled every 50 ms."""
    page.goto(url, wait_until="commit")
    seen: list[list[str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            labels = page.evaluate(READ_NAV)
        except Exception:  # the document is being replaced while it loads
            labels = None
        if labels and (not seen or seen[-1] != labels):
            seen.append(labels)
        page.wait_for_timeout(50)
    return seen


@pytest.mark.parametrize("path", ["", "/saliency?image=coffee"])
def test_a_fresh_server_never_shows_the_automatic_page_list(path):
    with streamlit_server() as url, chromium_page() as page:
        seen = watch_navigation(page, url + path)
        wait_for_app(page)
        assert seen, "the navigation never appeared"
        for labels in seen:
            assert not FILE_NAMES & {label.lower() for label in labels if label not in NAV}, labels
            assert labels == NAV, f"a navigation other than the router's was shown: {labels}"
        if path:  # the deep link still opens its page
            assert page.url.split("?")[0].endswith("/saliency")
            page.get_by_text("Grad-CAM").first.wait_for()
