"""AppTest of the saliency page: fast maps inline, slow ones as jobs, downloads, bad settings."""

from __future__ import annotations

import json
import threading

from streamlit.testing.v1 import AppTest

from engine import jobs, models, saliency
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/saliency.py", **query)


def chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


def number(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


wait_for_jobs = apptest.wait_for_jobs
RUNNING = "Running… progress is shown below the maps."


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


def test_a_reload_reattaches_to_the_running_and_finished_slow_jobs_and_the_scores(monkeypatch):
    """Run, then a second session on the same link (a reload, a second tab) shows the running job and
    later the finished maps and AUC table, without pressing anything."""
    gate = threading.Event()
    real_scan = saliency.occlusion_scan

    def gated_scan(*args, **kwargs):  # holds the job in "running" until the second session has looked
        gate.wait(60)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(saliency, "occlusion_scan", gated_scan)
    at = open_page(model=models.TEST_MODEL, methods="gradcam,occlusion", image="coffee")
    try:
        at.selectbox(key="sal_compare_method").set_value("occlusion").run()
        number(at, "Patch size (px)").set_value(12)
        number(at, "Stride (px)").set_value(4)
        before = len(jobs.registry().list())
        next(b for b in at.button if b.label == "Run the slow methods").click().run()
        assert not at.exception, at.exception
        link = dict(at.query_params)
        assert link["slow"] in ("patch:12,stride:4", ["patch:12,stride:4"]) and link["compare"] in ("occlusion", ["occlusion"])
        assert len(jobs.registry().list()) == before + 1, "one scan serves the grid and both compared classes"

        second = open_page(**link)
        assert any(RUNNING in info.value for info in second.info), [info.value for info in second.info]
        rows = [element.proto.text for element in second.get("progress")]
        assert any(text.startswith("Occlusion · ") for text in rows), rows
        assert not any(t.startswith("Occlusion · ") for t in chart_titles(second))
        assert len(jobs.registry().list()) == before + 1, "the second session started nothing"
    finally:
        gate.set()
        wait_for_jobs()

    second.run()  # what the polling fragment's rerun does when the job ends
    third = open_page(**link)  # and a reload after the end
    for session in (second, third):
        titles = chart_titles(session)
        assert any(t.startswith("Occlusion · ") and t.count("·") == 1 for t in titles), titles
        assert sum(t.startswith("Occlusion · ") and "%" in t for t in titles) == 2, "both compared classes"
        assert not any(RUNNING in info.value for info in session.info)

    third.number_input(key="sal_faith_steps").set_value(8)  # the faithfulness settings are in the link too
    next(b for b in third.button if b.label.startswith("Score the 2 maps")).click().run()
    assert not third.exception, third.exception
    assert third.query_params["faith_steps"] in ("8", ["8"])
    wait_for_jobs()
    fourth = open_page(**dict(third.query_params))
    assert fourth.dataframe, "the finished scores are found again from the link"
    assert list(fourth.dataframe[0].value["method"]) == ["Grad-CAM", "Occlusion"]
