"""Real browser: the Relabel page's sweep view (issue 15) runs as a job, survives a reload, and shows
both rules with the paper's numbers; the one-big-step preset shows its three pictures. Screenshots
go to artifacts/screenshots/."""

from __future__ import annotations

import pytest

from tests.browser import chromium_page, reload_mid_run, screenshot, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as url:
        yield url


def test_relabel_sweep_view_and_the_one_big_step_preset(server):
    with chromium_page() as page:
        page.goto(f"{server}/relabel?view=sweep&photos=chelsea,coffee&targets=5")
        wait_for_app(page, "Run the sweep")
        page.get_by_role("button", name="Run the sweep", exact=True).click()
        reload_mid_run(page, "Relabelled, the paper's rule", "Press Run the sweep to start")
        assert page.get_by_text("Relabelled, the fit rule").count()
        assert page.get_by_text("The paper (GoogLeNet)").count() and page.get_by_text("98.7 %").count()
        page.locator(".js-plotly-plot").nth(1).wait_for()  # the distortion and the steps histograms
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "relabel-sweep")
        page.get_by_text("Presets from the paper").click()
        page.get_by_role("button", name="One big step fails (sec. 3.1)").click()
        page.get_by_text("the gradient is not stationary").first.wait_for(timeout=120_000)
        wait_for_app(page)
        assert "view=onestep" in page.url
        assert page.get_by_text("one step of 2 levels").count() and not page.get_by_text("Traceback").count()
        screenshot(page, "relabel-one-big-step")
