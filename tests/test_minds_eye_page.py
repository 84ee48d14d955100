"""AppTest of the Mind's Eye page: every view with the real networks, the verdict following Θ, Table 1
as a job then from disk, the shipped sweep's boxes and gallery (and the sentence when it is missing),
a fresh sweep, the live attack (found again by a second session), bad links and missing weights."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from engine import cache, jobs, models
from engine.minds_eye import data, evaluate, weights
from tests import apptest

PAGE = "app_pages/minds_eye.py"


def weights_folder() -> str | None:
    """The shipped weights when they are all there, else ``$GLASSBOX_MINDS_EYE_WEIGHTS`` (a training folder)."""
    if all((weights.WEIGHTS_DIR / f"{net}.pt").is_file() for net in weights.FILES):
        return None
    folder = os.environ.get("GLASSBOX_MINDS_EYE_WEIGHTS")
    if not folder:
        pytest.skip("No Mind's Eye weights: ship them in assets/minds_eye/weights or set GLASSBOX_MINDS_EYE_WEIGHTS.")
    return folder


@pytest.fixture(scope="module")
def folder():
    return weights_folder()


@pytest.fixture(scope="module")
def tiny_sweep(folder, tmp_path_factory):
    """A real false-positive sweep of one image (two attacks), saved as the page reads it, and a copy in
    which every attack flipped (so the gallery has columns whatever these weights do in three steps)."""
    where = tmp_path_factory.mktemp("sweep")
    real = evaluate.save_sweep(evaluate.sweep("false-positive", 1, max_steps=3, folder=folder),
                               where / "sweep-false-positive.json")
    record = json.loads(real.read_text())
    for i, attacks in enumerate(record["attacks"].values()):
        count = len(attacks["steps"])
        attacks.update(steps=[2 + i] * count, distortion=[0.01 * (k + 1) for k in range(count)],
                       excluded=[False] * count)
    flipped = where / "flipped" / "sweep-false-positive.json"
    flipped.parent.mkdir()
    flipped.write_text(json.dumps(record))
    flipped.with_suffix(".npz").write_bytes(real.with_suffix(".npz").read_bytes())
    return real, flipped


@pytest.fixture(autouse=True)
def setting(folder, tmp_path, monkeypatch, tiny_sweep):
    if folder is None:
        monkeypatch.delenv("GLASSBOX_MINDS_EYE_WEIGHTS", raising=False)
    else:
        monkeypatch.setenv("GLASSBOX_MINDS_EYE_WEIGHTS", folder)
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(evaluate.SWEEP_FILES, "false-positive", tiny_sweep[0])
    monkeypatch.setitem(evaluate.SWEEP_FILES, "false-negative", tmp_path / "absent" / "sweep-false-negative.json")
    yield
    apptest.wait_for_jobs()


def open_page(**query) -> AppTest:
    return apptest.open_page(PAGE, model=models.TEST_MODEL, **query)


def finish(at: AppTest) -> None:
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception


def texts(elements) -> str:
    return " ".join(e.value for e in elements)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_every_view_opens_without_an_error():
    for view in ("explorer", "table", "effort", "gallery", "attack"):
        at = open_page(view=view)
        assert not at.exception, (view, at.exception)
        errors = [e.value for e in at.error if not e.value.startswith("Triple-staged verdict")]
        assert not errors, (view, errors)
        assert at.title[0].value == "Mind's Eye"


def triple_scores(folder, name: str, angles=(0.0, 0.0, 0.0), background: int = 3) -> np.ndarray:
    pixels = cache.minds_eye_composed(name, angles, background)
    with torch.inference_mode():
        x = torch.as_tensor(pixels, dtype=torch.float32)[None, None] / 255.0
        return weights.contenders(folder)["triple"](x).scores[0].numpy()


def test_the_explorer_shows_every_stage_and_its_verdict_follows_theta(folder):
    # An image whose best score leaves room on the slider's grid (0.01) on both sides.
    for name, background in (("monkey", 3), ("penguin", 3), ("none", 3), ("aeroplane", 7)):
        scores = triple_scores(folder, name, background=background)
        best = float(scores.max())
        if 0.02 <= best <= 0.97:
            break
    else:
        pytest.skip(f"every candidate image scores at an extreme ({best:.3f})")
    below, above = math.floor((best - 0.005) * 100) / 100, math.ceil((best + 0.005) * 100) / 100
    at = open_page(view="explorer", object=name, bg=str(background), theta=f"{below:g}")
    said = data.CLASSES[int(scores.argmax())]
    assert f"Triple-staged verdict: **{said}**" in texts(at.success) + texts(at.error)
    assert len(at.main.get("plotly_chart")) == 3  # similarity and weight, once per object class
    assert len(at.main.get("image")) == 1 + 3  # the query, then the projector's three drawings
    assert len(at.dataframe[0].value) == 3  # the three direct networks
    at.slider(key="me_theta").set_value(above).run()
    assert "Triple-staged verdict: **none**" in texts(at.success) + texts(at.error)
    assert at.query_params["theta"] in (f"{above:g}", [f"{above:g}"])
    at.slider(key="me_ax").set_value(0.25).run()
    assert not at.exception, at.exception
    assert at.query_params["ax"] in ("0.25", ["0.25"])


def test_bad_links_get_the_standard_warning():
    at = open_page(view="explorer", theta="7", object="giraffe", ax="nan")
    warnings = texts(at.warning)
    assert "theta='7' is not a valid setting" in warnings and "object='giraffe'" in warnings and "ax='nan'" in warnings
    assert at.slider(key="me_theta").value == 0.45
    at = open_page(view="the-best-one")
    assert "view='the-best-one' is not a valid setting" in texts(at.warning)
    assert at.selectbox(key="me_object").value == "monkey"  # the explorer, the default view


def test_missing_weights_name_the_train_command(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_MINDS_EYE_WEIGHTS", str(tmp_path / "empty"))
    cache.minds_eye_contenders.clear()
    for view in ("explorer", "attack"):
        at = open_page(view=view)
        assert not at.exception, at.exception
        errors = texts(at.error)
        assert "No weights for the" in errors and "python -m engine minds-eye train --net" in errors
        assert not at.main.get("plotly_chart")


def test_table_1_is_a_job_once_then_read_from_disk_and_theta_adds_a_row():
    at = open_page(view="table", n="5")
    assert "Press **Score the test set**" in texts(at.info)
    button(at, "Score the test set").click().run()
    finish(at)
    table = at.dataframe[0].value
    assert list(table["network"])[:3] == [weights.CONTENDER_LABELS[k] for k in ("direct", "direct_params", "direct_adv")]
    assert len(table) == 6 and table["error rate (paper, %)"].iloc[0] == "0.01"
    assert table["error rate (ours, %)"].between(0, 100).all()
    assert len(at.main.get("plotly_chart")) == 1
    at.slider(key="me_theta").set_value(0.33).run()
    table = at.dataframe[0].value
    assert len(table) == 7 and table["network"].iloc[-1] == "Triple-staged, Θ = 0.33"
    again = open_page(view="table", n="5")  # scores on disk: the table at once, no job
    assert not any(b.label == "Score the test set" for b in again.button)
    assert len(again.dataframe[0].value) == 6


def test_the_shipped_sweep_draws_fig_4_and_says_when_fig_6_is_missing():
    at = open_page(view="effort")
    assert len(at.main.get("plotly_chart")) == 1
    rows = at.dataframe[0].value
    assert len(rows) == 6 and set(rows["attacked"] + rows["excluded (wrong before the attack)"]) == {2}
    at = open_page(view="effort", kind="false-negative")
    assert "missing" in texts(at.warning) and "run a fresh sweep" in texts(at.warning)
    assert "Press **Run a fresh sweep**" in texts(at.info)


def test_a_fresh_sweep_runs_as_a_job_and_downloads():
    at = open_page(view="effort", kind="false-negative", sweep_n="1", sweep_steps="2")
    button(at, "Run a fresh sweep").click().run()
    finish(at)
    assert len(at.main.get("plotly_chart")) == 1  # the fresh sweep's boxes (none shipped for Fig. 6)
    assert [b.proto.label for b in at.get("download_button")] == ["Sweep (JSON)"]
    assert len(at.dataframe[0].value) == 6


def test_the_gallery_orders_adversarial_images_by_distortion(monkeypatch, tiny_sweep):
    monkeypatch.setitem(evaluate.SWEEP_FILES, "false-positive", tiny_sweep[1])
    at = open_page(view="gallery", gtarget="any")
    assert not at.exception, at.exception
    captions = [c for c in at.main.get("image") if "d=0.0" in str(c.proto)]
    assert len(captions) == 2 * 2  # two attacks, for each of the two networks
    assert "d=0.010 n=" in str(captions[0].proto)
    at.radio(key="me_gallery_theta").set_value(0.2).run()
    assert any("Θ = 0.2" in m.value for m in at.markdown)
    monkeypatch.setitem(evaluate.SWEEP_FILES, "false-positive", tiny_sweep[0].parent / "nothing.json")
    assert "run a fresh sweep" in texts(open_page(view="gallery").warning)


def test_the_live_attack_runs_to_its_end_and_a_second_session_finds_it():
    release = threading.Event()
    blocker = jobs.registry().find_or_start("test-blocker-minds-eye", lambda progress: release.wait(60),
                                            title="blocker")
    try:
        at = open_page(view="attack", net="direct", img="1", steps="2")
        assert at.selectbox(key="me_target").value == data.CLASSES.index("aeroplane")  # image 1 is a penguin
        button(at, "Attack").click().run()
        assert not at.exception, at.exception
        link = dict(at.query_params)
        second = apptest.open_page(PAGE, **link)  # a reload while the attack waits: no button pressed
        assert not any("Press **Attack** to start." in i.value for i in second.info)
        assert any(b.label == "Stop" for b in second.button)
    finally:
        release.set()
    jobs.registry().wait(blocker.id, timeout=60)
    finish(second)
    outcome = texts(second.success) + texts(second.warning)
    assert "Direct classification" in outcome and "aeroplane" in outcome
    slider = second.get("select_slider")
    assert len(slider) == 1 and slider[0].label == "Look at step"
    steps = list(slider[0].options)
    # the image; original / adversarial / difference; the chosen step and its change
    assert len(second.main.get("image")) == 1 + 3 + 2
    slider[0].set_value(steps[0]).run()
    assert not second.exception, second.exception
    assert any(f"step {steps[0]} ·" in str(i.proto) for i in second.main.get("image"))  # that step's image
    assert [b.proto.label for b in second.get("download_button")] == ["Adversarial PNG"]
    assert any("Every network on the adversarial image" in m.value for m in second.markdown)


def test_a_stopped_live_attack_still_shows_how_far_it_got():
    at = open_page(view="attack", net="triple", img="2", steps="1500", theta="0.7")
    button(at, "Attack").click().run()
    assert not at.exception, at.exception
    running = next(s for s in jobs.registry().list() if s.title.startswith("Attacking Triple-staged"))
    deadline = time.monotonic() + 120
    while len(jobs.registry().status(running.id).records) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    jobs.registry().cancel(running.id)  # what the page's Stop button does
    finish(at)
    assert any("Stopped" in i.value for i in at.info)
    assert any(c.value.startswith("step ") for c in at.caption)  # the last snapshot's step and distortion
    assert any(c.value.startswith("Now: ") for c in at.caption)  # every network's verdict when it stopped
