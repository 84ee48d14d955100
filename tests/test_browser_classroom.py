"""Real browser, the classroom question of issue 16: relabel the cat into a half-track, press "Use as the
image", reload the tab (the derived image and its origin come back from the link's hash), then ask
Classify what the model says now and Saliency where it looks, each beside the original."""

from __future__ import annotations

import pytest

from tests.browser import chromium_page, click_and_wait, screenshot, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as url:
        yield url


def sidebar(page):
    return page.locator('[data-testid="stSidebarContent"]')


def open_from_sidebar(page, title: str, text: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    wait_for_app(page, text)


def test_use_as_the_image_survives_a_reload_and_both_pages_compare(server):
    with chromium_page() as page:
        page.goto(f"{server}/relabel?image=chelsea&target=586")
        wait_for_app(page, "Turn this image into a:")
        click_and_wait(page, "Run", "relabelled · half track", timeout_ms=300_000)
        screenshot(page, "classroom-relabel-result")
        page.get_by_role("button", name="Use as the image").first.click()
        wait_for_app(page, "Made on Relabel by")
        assert "image=h-" in page.url
        origin = sidebar(page).get_by_text("Made on Relabel by").first.inner_text()
        assert "half track" in origin and "chelsea" in origin

        url = page.url
        page.reload()
        wait_for_app(page, "Made on Relabel by")
        assert page.url == url  # the derived image is in the link, by its hash
        assert sidebar(page).get_by_text("Showing chelsea → half track").count()
        assert sidebar(page).get_by_text("Made on Relabel by").first.inner_text() == origin
        screenshot(page, "classroom-relabel-after-reload")

        open_from_sidebar(page, "Classify", "Compared with the original")
        page.get_by_text("The model now says").first.wait_for()
        sentence = page.get_by_text("The model now says").first.inner_text()
        assert "half track" in sentence and "for the original" in sentence
        assert page.get_by_text("Original · chelsea").count()
        assert page.get_by_text("Now · chelsea → half track").count()
        assert "image=h-" in page.url
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "classroom-classify-compare")

        open_from_sidebar(page, "Saliency", "Compare with the original")
        page.get_by_text("on one colour scale").first.wait_for()
        page.get_by_text("Original · chelsea · p(half track)").first.wait_for()  # the maps' titles: drawn
        page.get_by_text("Now · chelsea → half track · p(half track)").first.wait_for()
        page.wait_for_timeout(1500)  # let every plotly chart draw before the page is measured
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "classroom-saliency-compare")
