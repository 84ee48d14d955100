"""AppTest of the Lecture page: every step in order with Next and Back (each demo live, jobs awaited), the
step kept in the link, a bad step, a second session that finds a step's job, and presenter mode's
reduced controls, its way out, and its parameter kept across steps and pages."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests import apptest

TINY = "tiny_test_cnn"
ORDER = ["classify", "saliency", "occlusion", "dissection", "anatomy", "relabel", "universal", "minds_eye"]
JOB_BUTTONS = ("Slide the occluder", "Dissect", "Relabel into", "Compute the perturbation")


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/lecture.py", model=TINY, **query)


def indicator(at: AppTest) -> str:
    return next(m.value for m in at.markdown if " / 8 · " in m.value)


def param(at: AppTest, name: str) -> str | None:
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label or b.label.startswith(label))


def run_job(at: AppTest) -> None:
    """Press the step's one job button, if it has one, and let the job finish."""
    for b in at.button:
        if b.label.startswith(JOB_BUTTONS):
            b.click().run()
            apptest.wait_for_jobs()
            at.run()
            assert not at.exception, at.exception
            return


def widget_labels(at: AppTest) -> set[str]:
    """The main area's controls (the sidebar's model and image pickers are left out)."""
    main = at.main
    found = set()
    for kind in ("selectbox", "radio", "slider", "select_slider", "number_input"):
        found |= {w.label for w in main.get(kind)}
    return found


def test_every_step_in_order_with_next_and_back_each_live():
    at = open_page()
    assert "1 / 8 · Classify" in indicator(at)
    assert button(at, "Back").disabled and not button(at, "Next").disabled
    seen = []
    for number, key in enumerate(ORDER, start=1):
        assert f"{number} / 8" in indicator(at)
        assert param(at, "step") == key
        run_job(at)
        assert not at.error, [e.value for e in at.error]
        seen.append(key)
        if key in ("classify", "saliency", "occlusion", "dissection", "anatomy", "relabel"):
            assert at.get("plotly_chart"), f"step {key} drew no chart"
        if key == "dissection":
            assert any("On **200 images** of the bundled concept set" in c.value for c in at.caption)
        if key == "relabel":
            assert at.warning or at.success  # the verdict: relabelled or stopped at the cap, in a sentence
            captions = [image.proto.imgs[0].caption for image in at.main.image]
            assert any(c.startswith("before · ") for c in captions)
            assert any(c.startswith("after · ") for c in captions)
        if key == "universal":
            assert any(s.value.startswith(("Fooled:", "Not fooled:")) for s in [*at.success, *at.warning])
            assert [m.label for m in at.metric] == ["training", "held-out"]
            assert all(m.value.endswith(" %") for m in at.metric)
        if key == "minds_eye":
            assert any("does not use the sidebar's image" in m.value for m in at.markdown)
            assert [m.label for m in at.metric] == ["Triple-staged says", "Direct network says"]
        links = [link.proto.label for link in at.get("page_link") if link.proto.label.startswith("Open the ")]
        assert links and links[0].endswith("page for all the settings")
        if key != ORDER[-1]:
            button(at, "Next").click().run()
            assert not at.exception, at.exception
    assert seen == ORDER
    assert button(at, "Next").disabled
    button(at, "Back").click().run()
    assert "7 / 8 · Universal perturbation" in indicator(at) and param(at, "step") == "universal"


def test_the_step_is_in_the_link_by_name_or_number_and_a_bad_one_is_a_sentence():
    at = open_page(step="relabel")
    assert "6 / 8 · Relabel" in indicator(at)
    assert any(b.label.startswith("Relabel into") for b in at.button)
    at = open_page(step="3")
    assert "3 / 8 · Occlusion" in indicator(at) and param(at, "step") == "occlusion"
    at = open_page(step="fooling")
    assert any("step='fooling' is not a step of this lecture" in w.value for w in at.warning)
    assert "1 / 8 · Classify" in indicator(at) and param(at, "step") == "classify"
    at = open_page(step="9")
    assert at.warning and "1 / 8" in indicator(at)


def test_a_steps_setting_is_in_the_link_and_kept_when_coming_back():
    at = open_page(step="saliency")
    at.radio(key="lec_rank").set_value(2).run()
    assert param(at, "rank") == "2"
    button(at, "Next").click().run()
    button(at, "Back").click().run()
    assert at.radio(key="lec_rank").value == 2 and "2 / 8 · Saliency" in indicator(at)
    again = open_page(step="saliency", rank="2")  # the shared link opens the same class
    assert again.radio(key="lec_rank").value == 2


def test_a_second_session_with_the_same_link_finds_the_steps_finished_job():
    at = open_page(step="relabel", lec_target="3")
    button(at, "Relabel into").click().run()
    apptest.wait_for_jobs()
    again = open_page(step="relabel", lec_target="3")  # no click: the job is found by its key
    assert again.warning or again.success
    assert not any("Press **Relabel into" in i.value for i in again.info)


def test_presenter_mode_reduces_the_controls_and_keeps_itself_on_the_way():
    steps = ("classify", "occlusion", "anatomy", "relabel", "minds_eye")
    full = {key: widget_labels(open_page(step=key)) for key in steps}
    shown = {key: widget_labels(open_page(step=key, present="1")) for key in full}
    assert shown == {"classify": set(), "occlusion": set(), "anatomy": set(), "relabel": {"Relabel into"},
                     "minds_eye": {"Object"}}
    for key in full:
        assert shown[key] <= full[key] and len(full[key]) > len(shown[key]) or key == "classify"
    at = open_page(step="relabel", present="1")
    assert not at.title  # no page title: the step fills the projector
    assert any(b.label == "Leave presenter mode" for b in at.button)
    button(at, "Next").click().run()
    assert param(at, "present") == "1" and param(at, "step") == "universal"
    at.switch_page("app_pages/classify.py").run()  # another page: still presenting
    assert not at.exception and param(at, "present") == "1"
    at.switch_page("app_pages/lecture.py").run()
    next(b for b in at.button if b.label == "Leave presenter mode").click().run()
    assert "present" not in at.query_params
    assert any(b.label == "Presenter mode" for b in at.button) and at.title[0].value == "Lecture"


def test_a_step_whose_page_does_not_exist_is_left_out(monkeypatch):
    import streamlit_app

    pages = tuple(entry for entry in streamlit_app.PAGES if entry.path != "app_pages/dissection.py")
    monkeypatch.setattr(streamlit_app, "PAGES", pages)
    at = open_page(step="4")
    assert any(" / 7 · Anatomy" in m.value for m in at.markdown)  # dissection's step is gone, not faked
    at = open_page(step="dissection")
    assert any("step='dissection' is not a step" in w.value for w in at.warning)
