"""AppTest of the class-inversion page: runs as jobs, presets, masks through session_state, bad input."""

from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest

from engine import images, jobs
from engine import inversion
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/inversion.py", **query)


def run(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Run").click().run()
    apptest.wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    return at


def latest_result(title_part: str) -> inversion.InversionResult:
    done = [s for s in jobs.registry().list() if s.done and title_part in s.title]
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
    mask = inversion.ellipse_mask(224, (0.3, 0.2, 0.7, 0.7))
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
    at.session_state["inv_painted_mask"] = inversion.rectangle_mask(224, (0.0, 0.0, 0.5, 1.0))
    at.session_state["inv_steps"] = 5
    at.run()
    assert not at.error, [e.value for e in at.error]
    run(at)
    result = latest_result("coffee → class 3")
    assert np.array_equal(result.image[:, 32:], result.original[:, 32:])  # the right half of 64 px is outside


# -- a reload reattaches (issue 11): every setting of the run lives in the link ---------------------


def reload(at: AppTest) -> AppTest:
    """A fresh session with the first one's link, as a reload or a second tab opens it: Run is not pressed."""
    return open_page(**{key: value for key, value in at.query_params.items()})


def shows_the_run(at: AppTest) -> bool:
    """The running job's progress, or its finished result (the outcome and the downloads)."""
    running = len(at.get("progress")) > 0
    finished = any(b.proto.label == "Final PNG" for b in at.get("download_button"))
    return running or finished


def jobs_titled(title: str) -> list:
    return [s for s in jobs.registry().list() if s.title == title]


def test_a_reload_shows_the_running_then_finished_run_without_pressing_run():
    first = open_page(image="coffee", model="tiny_test_cnn", target="7")
    first.radio(key="inv_optimizer").set_value("adam").run()
    first.slider(key="inv_jitter").set_value(4).run()
    first.number_input(key="inv_steps").set_value(300).run()
    first.text_input(key="inv_w_style").set_value("0").run()
    first.toggle(key="inv_noise").set_value(True).run()
    next(b for b in first.button if b.label == "Run").click().run()
    assert not first.exception, first.exception
    link = dict(first.query_params)
    assert {link[k] for k in ("optimizer", "jitter", "steps", "w_style", "noise")} == {"adam", "4", "300", "0", "1"}

    second = reload(first)
    assert not any("Press **Run** to start" in i.value for i in second.info), [i.value for i in second.info]
    assert shows_the_run(second)
    apptest.wait_for_jobs()
    second.run()
    assert any(b.proto.label == "Final PNG" for b in second.get("download_button"))
    assert any("After 300 steps" in m.value for m in list(second.success) + list(second.warning))
    result = latest_result("coffee → class 7")
    assert result.steps == 300 and result.config["optimizer"] == "adam" and result.config["jitter"] == 4
    assert len(jobs_titled("coffee → class 7")) == 1  # the reload found the run; it started nothing


def test_a_reload_finds_the_painted_mask_by_its_digest_and_the_comparison():
    first = open_page(image="coffee", model="tiny_test_cnn", target="2")
    mask = inversion.rectangle_mask(64, (0.25, 0.25, 0.75, 0.75))
    first.session_state["inv_mask_kind"] = "paint"
    first.session_state["inv_painted_mask"] = mask
    first.session_state["inv_steps"] = 6
    first.run()
    first.checkbox(key="inv_compare").check().run()
    run(first)
    link = dict(first.query_params)
    assert link["mask"] == "paint" and link["painted"] == inversion.mask_digest(mask) and link["compare"] == "1"

    second = reload(first)  # the canvas starts blank; the mask comes from the server's store by its digest
    assert not second.error, [e.value for e in second.error]
    assert any(h.value == "Masked and unmasked, side by side" for h in second.subheader)
    assert any(b.proto.label == "Final PNG" for b in second.get("download_button"))
    assert len(jobs_titled("coffee → class 2")) == 1 and len(jobs_titled("coffee → class 2, no mask")) == 1

    link["painted"] = "0123456789abcdef"  # a link from before a server restart
    stale = open_page(**link)
    assert any("no longer on this server" in e.value for e in stale.error)
    assert next(b for b in stale.button if b.label == "Run").disabled


def test_a_link_names_an_uploaded_mask_by_its_digest():
    from engine import cache

    mask = inversion.rectangle_mask(64, (0.0, 0.0, 0.5, 0.5))
    digest = cache.remember_inversion_mask(mask)  # as the page does when a mask is uploaded
    at = open_page(image="coffee", model="tiny_test_cnn", target="2", mask="upload", uploaded=digest)
    assert not at.error, [e.value for e in at.error]
    assert any("uploaded mask from this link" in c.value for c in at.caption)
    assert "may change: 25 % of the image" in [caption for image in at.image for caption in image.captions]
    at.radio(key="inv_mask_kind").set_value("none").run()
    assert "uploaded" not in at.query_params  # another kind of mask: the link forgets the digest


def test_a_reload_reattaches_in_feature_mode():
    first = open_page(image="coffee", model="tiny_test_cnn", mode="features")
    next(n for n in first.number_input if n.label == "Steps (Adam)").set_value(30)
    run(first)
    link = dict(first.query_params)
    assert link["mode"] == "features" and link["f_steps"] == "30"
    second = reload(first)
    assert not any("Press **Run** to start" in i.value for i in second.info)
    assert [b.proto.label for b in second.get("download_button")][0] == "Final PNG"
    assert len([s for s in jobs.registry().list() if s.title.startswith("Rebuild from")
                and s.result is not None and s.result.steps == 30]) == 1


def test_a_preset_writes_its_settings_into_the_link_and_keeps_its_name_while_they_hold():
    at = open_page(image="coffee")
    next(b for b in at.button if b.label.startswith("Tiger [body-masked, jittered]")).click().run()
    assert not at.exception, at.exception
    link = dict(at.query_params)
    assert {k: link.get(k) for k in ("preset", "image", "target", "optimizer", "jitter", "steps", "mask", "box_y",
                                     "w_style", "w_tv", "w_colour")} == {
        "preset": "tiger-body-jitter", "image": "chelsea", "target": "292", "optimizer": "gd", "jitter": "16",
        "steps": "60", "mask": "rectangle", "box_y": "35-100", "w_style": "-1e-12", "w_tv": "0", "w_colour": "1e-11"}
    assert link["box_x"] == "0-100" and "w_content" not in link  # 1e-10 is the default

    again = reload(at)  # the same widgets come back from the link
    assert [t.value for t in again.text_input][:4] == ["1e-10", "-1e-12", "0", "1e-11"]
    assert again.slider(key="inv_box_y").value == (35, 100) and again.slider(key="inv_jitter").value == 16
    assert again.query_params["preset"] == "tiger-body-jitter"
    again.number_input(key="inv_steps").set_value(61).run()
    assert "preset" not in again.query_params  # no longer the paper's row


# -- hole-filling, every row a preset, the content loss (issue 15) ------------------------------------


def test_hole_filling_mode_fills_only_the_hole_and_lives_in_the_link():
    at = open_page(image="coffee", model="tiny_test_cnn", target="3", mode="hole")
    assert not at.error, [e.value for e in at.error]
    assert at.radio(key="inv_hole_kind").value == "ellipse"  # a hole by default, never none
    assert any("the hole, erased" in caption for image in at.image for caption in image.captions)
    assert not any(t.label.startswith("Start from noise") for t in at.toggle)
    at.radio(key="inv_fill").set_value("grey").run()
    at.number_input(key="inv_steps").set_value(6).run()
    run(at)
    link = dict(at.query_params)
    assert {link.get(k) for k in ("mode", "fill", "steps")} == {"hole", "grey", "6"} and link.get("hole") is None
    result = latest_result("coffee: a hole filled as class 3")
    hole = inversion.ellipse_mask(64, (0.25, 0.2, 0.75, 0.8))  # the default box, 25-75 % x 20-80 %
    assert np.array_equal(result.image[hole == 0], result.original[hole == 0])
    assert (result.start[hole > 0] == 128).all()  # mid-grey
    assert result.config["fill"] == "grey" and result.steps == 6
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith("the hole, erased ·") for c in captions)
    assert any(c.startswith("before ·") for c in captions)
    again = reload(at)
    assert any(b.proto.label == "Final PNG" for b in again.get("download_button"))
    assert len(jobs_titled("coffee: a hole filled as class 3")) == 1


def test_a_hole_that_is_empty_or_everything_is_a_sentence():
    at = open_page(image="coffee", model="tiny_test_cnn", target="3", mode="hole", hole="rectangle", box_x="0-100",
                   box_y="0-100")
    assert any("covers the whole image" in e.value for e in at.error), [e.value for e in at.error]
    assert next(b for b in at.button if b.label == "Run").disabled
    at = open_page(image="coffee", model="tiny_test_cnn", target="3", mode="hole", hole="paint")
    assert any(e.value.startswith("The hole is empty") for e in at.error), [e.value for e in at.error]
    assert next(b for b in at.button if b.label == "Run").disabled


def test_a_hole_filling_preset_sets_the_mode_the_hole_and_its_note():
    at = open_page(image="coffee")
    assert len([b for b in at.button if b.key and b.key.startswith("preset_")]) == len(inversion.PRESETS) == 17
    next(b for b in at.button if b.label == "Hole-filling with gecko label").click().run()
    assert not at.exception, at.exception
    link = dict(at.query_params)
    assert {k: link.get(k) for k in ("preset", "mode", "image", "target", "hole", "box_x", "box_y", "w_tv")} == {
        "preset": "hole-gecko", "mode": "hole", "image": "chelsea", "target": "38", "hole": None, "box_x": "28-78",
        "box_y": "18-80", "w_tv": "1e-07"}
    assert any("Preset *Hole-filling with gecko label*" in c.value
               and "no hole, weights or steps are printed" in c.value for c in at.caption)
    again = reload(at)
    assert again.query_params["preset"] == "hole-gecko" and again.session_state["inv_mode"] == "hole"
    assert again.radio(key="inv_hole_kind").value == "ellipse" and again.slider(key="inv_box_x").value == (28, 78)


def test_a_dog_row_says_it_runs_on_the_cat_and_the_content_loss_choice_is_in_the_link():
    at = open_page(image="coffee")
    next(b for b in at.button if b.label == "Brown bear (-1e-11, 0, 1e-6)").click().run()
    assert at.query_params["preset"] == "brown-bear-3"
    assert any("no dog photo under a free licence" in c.value for c in at.caption)
    assert at.radio(key="inv_content_loss").value == "mse"
    at.radio(key="inv_content_loss").set_value("gram").run()
    assert at.query_params["content_loss"] == "gram" and "preset" not in at.query_params  # not the row any more
    assert any("presets use the feature MSE" in c.value for c in at.caption)


def test_the_gram_content_loss_runs_from_the_page():
    at = open_page(image="coffee", model="tiny_test_cnn", target="4", content_loss="gram", w_content="1e-6")
    at.number_input(key="inv_steps").set_value(4).run()
    run(at)
    result = latest_result("coffee → class 4")
    assert result.config["content_loss"] == "gram" and "content" in result.terms
