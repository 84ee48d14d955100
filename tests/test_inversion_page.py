"""AppTest of the class-inversion page: runs as jobs, presets, masks through session_state, bad input."""

from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest

from engine import images, jobs
from engine import inversion as I
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/inversion.py", **query)


def run(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Run").click().run()
    apptest.wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    return at


def latest_result(title_part: str) -> I.InversionResult:
    done = [s for s in jobs.registry().list() if s.state == "done" and title_part in s.title]
    return done[-1].result


def test_the_default_turns_the_cat_into_a_tiger_with_views_and_downloads():
    at = run(open_page(image="chelsea", target="292"))
    assert any("the model calls it a **tiger**" in s.value for s in at.success), [s.value for s in at.success]
    assert [b.proto.label for b in at.get("download_button")] == ["Final PNG", "Snapshots (ZIP)", "Loss log (CSV)",
                                                                 "Manifest (JSON)"]
    assert any(s.label == "Snapshots: step" for s in at.select_slider)
    assert len(at.get("plotly_chart")) == 3  # before, after, the loss terms


def test_a_mask_painted_into_session_state_keeps_the_outside_unchanged():
    at = open_page(image="chelsea", target="292")
    mask = I.ellipse_mask(224, (0.3, 0.2, 0.7, 0.7))
    at.session_state["inv_mask_kind"] = "paint"
    at.session_state["inv_painted_mask"] = mask
    at.session_state["inv_steps"] = 15
    at.run()
    assert not at.error, [e.value for e in at.error]
    run(at)
    result = latest_result("chelsea → tiger")
    assert result.steps == 15
    outside = mask == 0
    assert np.array_equal(result.image[outside], result.original[outside])
    assert not np.array_equal(result.image[~outside], result.original[~outside])


def test_an_empty_mask_is_a_sentence_and_run_is_disabled():
    at = open_page(image="chelsea", target="292")
    at.session_state["inv_mask_kind"] = "paint"
    at.run()
    assert any("The mask is empty" in e.value for e in at.error)
    assert next(b for b in at.button if b.label == "Run").disabled


def test_the_tiger_face_preset_sets_weights_and_an_ellipse_and_compares_unmasked():
    at = open_page(image="coffee")
    next(b for b in at.button if b.label.startswith("Tiger [face-masked] (1e-10")).click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.sidebar.selectbox if s.label == "Sample image").value == "chelsea"
    assert [t.value for t in at.text_input][:4] == ["1e-10", "1e-07", "1e-09", "1e-08"]
    assert at.session_state["inv_mask_kind"] == "ellipse"
    assert at.slider(key="inv_box_x").value == (28, 78) and at.slider(key="inv_box_y").value == (18, 80)
    at.checkbox(key="inv_compare").check().run()
    run(at)
    assert any(h.value == "Masked and unmasked, side by side" for h in at.subheader)


def test_already_top1_bad_weights_and_divergence_are_sentences():
    at = open_page(image="chelsea", target="285")
    assert any("already calls this image a Egyptian cat" in i.value for i in at.info)
    at = open_page(image="chelsea", target="292")
    at.text_input(key="inv_w_style").set_value("lots").run()
    assert any("'lots' is not a number" in e.value for e in at.error)
    assert next(b for b in at.button if b.label == "Run").disabled
    at.text_input(key="inv_w_style").set_value("0").run()
    at.text_input(key="inv_w_content").set_value("-1e3").run()
    at.session_state["inv_optimizer"] = "adam"
    run(at)
    assert any(w.value.startswith("Stopped: the loss exploded") for w in at.warning), [w.value for w in at.warning]


def test_feature_inversion_mode():
    at = open_page(image="coffee", mode="features")
    next(n for n in at.number_input if n.label == "Steps (Adam)").set_value(20)
    run(at)  # the form's Run button submits the new value
    result = latest_result("Rebuild from")
    assert result.target is None and result.steps == 20
    assert np.array_equal(result.original, np.asarray(images.fit_square(images.load_sample("coffee"), 224)))
    assert [b.proto.label for b in at.get("download_button")][0] == "Final PNG"


def test_a_mask_painted_at_another_size_follows_the_model():
    at = open_page(image="coffee", model="tiny_test_cnn", target="3")
    at.session_state["inv_mask_kind"] = "paint"
    at.session_state["inv_painted_mask"] = I.rectangle_mask(224, (0.0, 0.0, 0.5, 1.0))
    at.session_state["inv_steps"] = 5
    at.run()
    assert not at.error, [e.value for e in at.error]
    run(at)
    result = latest_result("coffee → class 3")
    assert np.array_equal(result.image[:, 32:], result.original[:, 32:])  # the right half of 64 px is outside
