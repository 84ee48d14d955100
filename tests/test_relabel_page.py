"""AppTest of the relabel page: a run as a job, its views, bad requests as sentences, and a reload
(a second session with the same link) that finds the run without pressing Run."""

from __future__ import annotations

import threading

from streamlit.testing.v1 import AppTest

from engine import jobs
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
    link = dict(at.query_params)
    assert link["gaussian"] == "1" and link["cap"] == "0.05"
    again = open_page(**link)  # a reload: the toggle and the cap come back from the link, and so does the run
    assert again.toggle(key="rl_gaussian").value
    assert any("Relabelled to **goldfish**" in s.value for s in again.success)


def run_button(at: AppTest):
    return next(b for b in at.button if b.label == "Run")


def jobs_for(fragment: str) -> list[jobs.JobStatus]:
    return [s for s in jobs.registry().list() if s.key and fragment in s.key]


def test_a_second_session_with_the_same_link_shows_the_queued_then_finished_run():
    """A reload (or a second tab) computes the same job key from the link and shows that job."""
    release = threading.Event()
    blocker = jobs.registry().find_or_start("test-blocker", lambda progress: release.wait(60), title="blocker")
    try:
        at = open_page(image="chelsea", target="586", method="pgd")
        next(n for n in at.number_input if n.label.startswith("ε for FGSM")).set_value(2)
        run_button(at).click().run()
        assert not at.exception, at.exception
        link = dict(at.query_params)
        assert (link["method"], link["epsilon"], link["target"], link["image"]) == ("pgd", "2", "586", "chelsea")
        second = open_page(**link)  # while the run waits behind the blocker: no Run pressed here
        assert not second.exception, second.exception
        assert not any("Press **Run** to start." in i.value for i in second.info)
        assert any(b.label == "Cancel" for b in second.button)  # the shared job row, with its Cancel
    finally:
        release.set()
    jobs.registry().wait(blocker.id, timeout=60)
    finish(second)
    assert any("PGD (steps in an ε-ball): the model now says" in i.value for i in second.info)
    assert [b.proto.label for b in second.get("download_button")] == ["Relabelled PNG", "Manifest (JSON)"]
    assert len(jobs_for('|pgd|{"epsilon": 2,')) == 1  # one job, shared by both sessions
    third = open_page(**link)  # after the run: the result at once
    assert any("PGD (steps in an ε-ball): the model now says" in i.value for i in third.info)


def test_a_reload_finds_the_half_track_run():
    at = open_page(image="chelsea", target="586")
    run_button(at).click().run()
    link = dict(at.query_params)
    second = open_page(**link)
    assert not any("Press **Run** to start." in i.value for i in second.info)
    finish(second)
    assert any("Relabelled to **half track**" in s.value for s in second.success)


def test_least_likely_names_its_own_target_and_links_keep_bad_numbers_out():
    at = open_page(image="chelsea", method="leastlikely", cap="7")
    assert any("its **least likely** class" in m.value for m in at.markdown)
    assert any("cap='7' is not a valid setting" in w.value for w in at.warning)
    assert next(n for n in at.number_input if n.label.startswith("Distortion cap")).value == 0.01


def test_the_panda_to_gibbon_preset_runs_untargeted_fgsm():
    """The lecture's first slide: one FGSM step away from the photo's own class, no target chosen."""
    at = open_page()
    next(b for b in at.button if b.label.startswith("Panda → gibbon")).click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.sidebar.selectbox if s.label == "Sample image").value == "chelsea"
    assert next(t for t in at.toggle if t.label.startswith("Untargeted")).value
    assert next(n for n in at.number_input if n.label.startswith("ε")).value == 2
    assert not any(s.label == "Turn this image into a:" for s in at.selectbox)
    next(b for b in at.button if b.label == "Run").click().run()
    finish(at)
    info = next(i.value for i in at.info if "FGSM (one step): the model now says" in i.value)
    assert "Egyptian cat" not in info  # the label moved away from the photo's own class
    assert at.query_params["untargeted"] == "1" and at.query_params["method"] == "fgsm"


# ---------------------------------------------------------------------------------------------
# Issue 15: the sweep view and sec. 3.1's one-big-step demo

TINY = "tiny_test_cnn"


def test_the_sweep_view_runs_both_rules_as_a_job_with_the_papers_numbers_beside():
    from engine import models, relabel

    at = open_page(model=TINY, view="sweep", photos="chelsea,coffee", targets="2", cap="0.12")
    assert not at.exception, at.exception
    assert any("Press **Run the sweep** to start." in i.value for i in at.info)
    assert any(c.value.startswith("4 pairs") for c in at.caption)
    next(b for b in at.button if b.label == "Run the sweep").click().run()
    link = dict(at.query_params)
    second = open_page(**link)  # a reload mid-run finds the same job (or its result)
    finish(at)
    metrics = {m.label: m.value for m in at.metric}
    handle = models.load_model(TINY)
    expected = relabel.sweep_both(handle, relabel.sample_inputs(handle, ["chelsea", "coffee"]), 2, cap=0.12)
    assert metrics["Relabelled, the paper's rule"] == f"{100 * expected.paper.success_rate:.1f} %"
    assert metrics["Relabelled, the fit rule"] == f"{100 * expected.fit.success_rate:.1f} %"
    assert metrics["The paper (GoogLeNet)"] == "98.7 %"
    table = at.dataframe[0].value
    assert list(table[""]) == ["the paper's rule", "the fit rule", "the paper (GoogLeNet, Caffe)"]
    assert len(at.get("plotly_chart")) == 2
    assert [b.proto.label for b in at.get("download_button")] == ["Pairs (CSV)", "Sweep (JSON)"]
    pairs = at.dataframe[1].value
    assert len(pairs) == 4 and "paper: outcome" in pairs.columns and "fit: outcome" in pairs.columns
    assert (link["view"], link["photos"], link["targets"], link["cap"]) == ("sweep", "chelsea,coffee", "2", "0.12")
    finish(second)
    assert {m.label: m.value for m in second.metric} == metrics
    assert len(jobs_for("relabel-sweep|" + TINY)) == 1


def test_the_sweep_view_says_what_is_wrong_with_bad_input():
    at = open_page(model=TINY, view="sweep", photos="chelsea,unicorn", targets="0")
    warnings = " ".join(w.value for w in at.warning)
    assert "photos='chelsea,unicorn' is not a valid setting" in warnings
    assert "targets='0' is not a valid setting" in warnings
    at.multiselect(key="rl_sw_photos").set_value([])
    next(b for b in at.button if b.label == "Run the sweep").click().run()
    assert not at.exception, at.exception
    assert any(w.value == "Pick at least one photo to sweep." for w in at.warning)


def test_the_single_rule_sweep_reports_only_that_rule():
    at = open_page(model=TINY, view="sweep", photos="chelsea", targets="1", cap="0.12", rule="paper")
    next(b for b in at.button if b.label == "Run the sweep").click().run()
    finish(at)
    labels = [m.label for m in at.metric]
    assert "Relabelled, the paper's rule" in labels and "Relabelled, the fit rule" not in labels


def test_the_one_big_step_preset_shows_the_single_step_failing_where_small_steps_succeed():
    at = open_page()
    next(b for b in at.button if b.label.startswith("One big step fails")).click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.sidebar.selectbox if s.label == "Sample image").value == "chelsea"
    assert at.query_params["view"] == "onestep" and at.query_params["target"] == "586"
    finish(at)  # one click: the comparison started by itself
    info = next(i.value for i in at.info if "along the first gradient" in i.value)
    assert "leaves the model saying **tabby**" in info and "make it a **half track**" in info
    assert any("the gradient is not stationary" in m.value for m in at.markdown)
    assert len(at.image) >= 3
    ladder = at.dataframe[0].value
    assert "half track" not in set(ladder["top-1"])
    again = open_page(**dict(at.query_params))  # the link brings the same comparison back
    assert any("leaves the model saying **tabby**" in i.value for i in again.info)


def test_one_big_step_on_a_class_the_image_already_has():
    at = open_page(image="coffee", view="onestep", target="967")
    assert any("already calls this image a espresso" in i.value for i in at.info)
