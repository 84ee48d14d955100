"""AppTest of the relabel page: a run as a job, its views, bad requests as sentences."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/relabel.py", **query)


def finish(at: AppTest) -> None:
    apptest.wait_for_jobs()
    at.run()
    assert not at.exception, at.exception


def test_the_cat_becomes_a_half_track_with_downloads_and_limits():
    at = open_page(image="chelsea", target="586")
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    assert any("Relabelled to **half track**" in s.value for s in at.success)
    assert [b.proto.label for b in at.get("download_button")] == ["Relabelled PNG", "Manifest (JSON)"]
    next(b for b in at.button if b.label.startswith("Check the limits")).click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["check"]) == ["as relabelled", "mirror", "crop 90 %", "shift 8 px", "another network"]
    assert bool(table["keeps the new label"].iloc[0]) and not bool(table["keeps the new label"].iloc[-1])


def test_a_target_that_is_already_top1_and_a_cap_reached_are_sentences():
    at = open_page(image="coffee", target="967")
    assert any("already calls this image a espresso" in i.value for i in at.info)
    at = open_page(image="coffee", target="1")
    next(n for n in at.number_input if n.label.startswith("Distortion cap")).set_value(0.001)
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    assert any(w.value.startswith("Outcome: cap reached") for w in at.warning)


def test_fgsm_reports_the_new_top1():
    at = open_page(image="chelsea", method="fgsm")
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    assert any("FGSM (one step): the model now says" in i.value for i in at.info)


def test_the_swap_preset_relabels_both_photos():
    at = open_page()
    next(b for b in at.button if b.label.startswith("Swap two photos")).click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.sidebar.selectbox if s.label == "Sample image").value == "coffee"
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    successes = [s.value for s in at.success]
    assert any("Egyptian cat" in s for s in successes) and any("espresso" in s for s in successes), successes
    assert any("The swap: chelsea into a espresso" in h.value for h in at.subheader)


def test_an_unknown_class_in_the_link_offers_close_matches():
    at = open_page(image="chelsea", target="half trak")
    warnings = " ".join(w.value for w in at.warning)
    assert "no class called 'half trak'" in warnings and "Did you mean half track" in warnings


def test_gaussian_image_synthesis():
    at = open_page(target="1")
    at.toggle(key="rl_gaussian").set_value(True).run()
    next(n for n in at.number_input if n.label.startswith("Distortion cap")).set_value(0.05)
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    assert any("Relabelled to **goldfish**" in s.value for s in at.success)
    assert any("SSIM" in c.value for c in at.caption)
