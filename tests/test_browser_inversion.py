"""Real-browser test of the class-inversion page's hole-filling mode and the paper's new rows (issue 15).

Screenshots: artifacts/screenshots/inversion-hole-filling.png, inversion-dog-row-preset.png.
"""

from __future__ import annotations

import pytest

from tests.browser import chromium_page, screenshot, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser


def open_presets(page) -> None:
    """Open the presets' expander (it stays open across reruns: click only when it is closed)."""
    if not page.get_by_role("button", name="Hole-filling with tiger label", exact=True).is_visible():
        page.get_by_text("The paper's results as presets").first.click()
    page.get_by_role("button", name="Hole-filling with tiger label", exact=True).wait_for()


def test_hole_filling_preset_runs_and_a_dog_row_says_why_it_runs_on_the_cat():
    with streamlit_server() as server, chromium_page() as page:
        page.goto(f"{server}/inversion?image=coffee")
        wait_for_app(page, "Change this image into a:")
        open_presets(page)
        page.get_by_role("button", name="Hole-filling with tiger label", exact=True).click()
        try:
            page.get_by_text("Fill the hole so the model sees a:").first.wait_for(timeout=20_000)
        except Exception:  # once in a clean-clone CI run the click was lost (not seen again in 8 runs alone)
            screenshot(page, "inversion-hole-preset-click-lost")
            open_presets(page)
            page.get_by_role("button", name="Hole-filling with tiger label", exact=True).click()
        wait_for_app(page, "Fill the hole so the model sees a:")
        assert "mode=hole" in page.url and "preset=hole-tiger" in page.url
        page.get_by_text("the hole, erased:").first.wait_for()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("After 40 steps").first.wait_for(timeout=180_000)
        wait_for_app(page)
        assert page.get_by_text("the model calls it a tiger").count()
        assert page.get_by_text("the hole, erased ·").count()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "inversion-hole-filling")

        open_presets(page)
        page.get_by_role("button", name="Brown bear (-1e-11, 0, 1e-6)", exact=True).click()
        wait_for_app(page, "Change this image into a:")
        assert "preset=brown-bear-3" in page.url and "mode=" not in page.url
        page.get_by_text("Preset Brown bear (-1e-11, 0, 1e-6):").first.wait_for()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("After 40 steps").first.wait_for(timeout=180_000)
        wait_for_app(page)
        assert page.get_by_text("the model calls it a brown bear").count()
        screenshot(page, "inversion-dog-row-preset")
