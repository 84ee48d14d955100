"""The Lecture page in presenter mode in real Chromium at a projector's 1280x720: the sidebar collapsed,
large type, Next keeping ?present=1, a job step run to its result, and a screenshot of each step shown
(artifacts/screenshots/lecture-*.png) for a person to look at."""

from __future__ import annotations

import pytest

from tests.browser import SHOTS, chromium_page, screenshot, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1280, 720


def shots(page, name: str) -> None:
    """What the projector shows (the 1280x720 screen as it is) and the whole step below it."""
    page.screenshot(path=str(SHOTS / f"{name}-screen.png"))
    screenshot(page, name)


def next_step(page, title: str) -> None:
    """Press Next and wait until the new step has replaced the old one (no faded, stale element left)."""
    page.get_by_role("button", name="Next").click()
    page.get_by_text(title, exact=False).first.wait_for()
    wait_for_app(page)
    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')")


def test_presenter_mode_at_1280x720_steps_through_the_lecture():
    with streamlit_server() as url, chromium_page(WIDTH, HEIGHT) as page:
        page.goto(f"{url}/lecture?present=1&image=chelsea")
        wait_for_app(page, "1 / 8 · Classify")
        page.locator(".js-plotly-plot").first.wait_for()
        page.get_by_text("tabby", exact=False).first.wait_for()
        sidebar = page.locator('[data-testid="stSidebar"]')
        assert sidebar.get_attribute("data-collapsed") == "true"  # collapsed for the projector
        assert sidebar.bounding_box() is None or sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0
        body = page.evaluate("() => parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert body >= 21  # the root type is enlarged (Streamlit sizes in rem)
        story = page.get_by_text("it's a black box", exact=False).first
        assert float(story.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 21
        width = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollWidth")
        assert width <= WIDTH  # nothing wider than the projector
        shots(page, "lecture-1-classify")

        next_step(page, "2 / 8 · Saliency")
        page.get_by_text("Grad-CAM · ", exact=False).first.wait_for()
        assert "present=1" in page.url and "step=saliency" in page.url
        shots(page, "lecture-2-saliency")

        next_step(page, "3 / 8 · Occlusion")
        page.get_by_role("button", name="Slide the occluder").click()
        page.get_by_text("with the occluder centred here", exact=False).first.wait_for(timeout=180_000)
        wait_for_app(page)
        assert "present=1" in page.url and "step=occlusion" in page.url
        shots(page, "lecture-3-occlusion")

        next_step(page, "4 / 8 · Dissection")
        next_step(page, "5 / 8 · Anatomy")
        page.get_by_text("The 16 strongest of", exact=False).first.wait_for()
        page.locator('[data-testid="stMain"] .js-plotly-plot').first.wait_for()
        shots(page, "lecture-5-anatomy")
        next_step(page, "6 / 8 · Relabel")
        page.get_by_role("button", name="Relabel into half track").click()
        page.get_by_text("Relabelled to", exact=False).first.wait_for(timeout=180_000)
        wait_for_app(page)
        shots(page, "lecture-6-relabel")

        page.locator('[data-testid="stMain"]').get_by_role("button", name="Leave presenter mode").click()
        wait_for_app(page, "Presenter mode")
        assert "present=1" not in page.url and "step=relabel" in page.url
