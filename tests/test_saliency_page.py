"""AppTest of the saliency page: fast maps inline, slow ones as jobs, downloads, bad settings."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from engine import jobs, models
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/saliency.py", **query)


def chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


def number(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


wait_for_jobs = apptest.wait_for_jobs


def test_fast_methods_render_with_downloads_and_slow_ones_wait_for_run():
    at = open_page(model=models.TEST_MODEL, methods="gradcam,gradient,occlusion", image="coffee")
    titles = chart_titles(at)
    assert any(t.startswith("Grad-CAM · ") for t in titles) and any(t.startswith("Gradient saliency") for t in titles)
    assert not any(t.startswith("Occlusion") for t in titles)
    assert any("Run the slow methods" in i.value for i in at.info)
    names = [b.proto.label for b in at.get("download_button")]
    assert names.count("Overlay (PNG)") == 2 and names.count("Manifest (JSON)") == 2
    assert at.query_params["methods"] in ("gradcam,gradient,occlusion", ["gradcam,gradient,occlusion"])


def test_slow_method_runs_as_a_job_and_survives_reruns_then_scores():
    at = open_page(model=models.TEST_MODEL, methods="gradcam,occlusion", image="chelsea")
    number(at, "Patch size (px)").set_value(16)
    number(at, "Stride (px)").set_value(16)
    next(b for b in at.button if b.label == "Run the slow methods").click().run()
    assert not at.exception, at.exception
    wait_for_jobs()
    at.run()  # a later rerun finds the finished job by its key instead of starting it again
    assert at.query_params["slow"] in ("patch:16", ["patch:16"])  # stride 16 is the default
    reloaded = open_page(**{k: v for k, v in at.query_params.items()})  # a reload: a fresh session, same link
    assert any(t.startswith("Occlusion · ") for t in chart_titles(reloaded)), "the finished job is found again"
    titles = chart_titles(at)
    assert any(t.startswith("Occlusion · ") for t in titles), titles
    before = len(jobs.registry().list())
    at.run()
    at.selectbox(key=f"_class_class_{models.TEST_MODEL}").set_value(3).run()
    assert len(jobs.registry().list()) == before  # neither a rerun nor a new class recomputes the scan
    assert "Occlusion · class 3" in chart_titles(at)
    next(b for b in at.button if b.label.startswith("Score the 2 maps")).click().run()
    assert not at.exception, at.exception
    wait_for_jobs()
    at.run()
    assert not at.exception
    assert at.dataframe, "the AUC table is shown"
    table = at.dataframe[0].value
    assert list(table["method"]) == ["Grad-CAM", "Occlusion"]
    assert ((0 <= table["deletion AUC ↓"]) & (table["deletion AUC ↓"] <= 1)).all()


def test_a_patch_larger_than_the_image_gets_a_sentence():
    at = open_page(model=models.TEST_MODEL, methods="occlusion")
    number(at, "Patch size (px)").set_value(100)  # the tiny model sees 64 x 64
    next(b for b in at.button if b.label == "Run the slow methods").click().run()
    wait_for_jobs()
    at.run()
    assert not at.exception
    assert any("larger than the image" in e.value for e in at.error)


def test_preset_sets_image_classes_and_methods():
    at = open_page()
    next(b for b in at.button if b.label == "Pixel saliency is class dependent").click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.sidebar.selectbox if s.label == "Sample image").value == "chelsea"
    assert at.multiselect(key="sal_methods").value == ["gradcam", "occlusion"]
    titles = chart_titles(at)
    assert "Grad-CAM · Egyptian cat (36.2 %)" in titles and "Grad-CAM · tiger cat (33.7 %)" in titles
