"""AppTest of the Attacks lab: every view (tab) runs its job on the tiny model over a small folder of
photos, shows its result and downloads, and bad input reads as a sentence."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import images
from tests import apptest

TINY = "tiny_test_cnn"


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/attacks_lab.py", image="chelsea", **query)


def press(at: AppTest, label: str, timeout: float = 300) -> AppTest:
    next(b for b in at.button if b.label == label).click().run()
    apptest.wait_for_jobs(timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def folder_of(tmp_path_factory, name: str, samples: list[str], size: int = 96):
    folder = tmp_path_factory.mktemp(name)
    rng = np.random.default_rng(len(name))
    for i, sample in enumerate(samples):
        picture = np.asarray(images.load_sample(sample))
        y, x = rng.integers(0, 60, 2)
        crop = Image.fromarray(picture[y:y + 220, x:x + 220]).resize((size, size))
        crop.save(folder / f"{i:02d}_{sample}.png")
    return folder


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    return folder_of(tmp_path_factory, "train", ["chelsea", "coffee", "astronaut", "rocket"])


@pytest.fixture(scope="module")
def held_folder(tmp_path_factory):
    return folder_of(tmp_path_factory, "held", ["brick", "grass", "gravel"])


def downloads(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


def test_the_views_are_the_issues_families():
    at = open_page(model=TINY)
    control = at.get("button_group")[0]
    assert [o.content for o in control.proto.options] == ["Universal", "Transfer", "ε curves", "Minimal perturbation",
                                                         "Effort to flip", "Black box", "Defences"]


def test_universal_perturbation_runs_as_a_job_with_its_downloads(train_folder, held_folder):
    at = open_page(model=TINY, view="universal", train="folder", train_folder=str(train_folder), heldout="folder",
                   heldout_folder=str(held_folder), passes="1")
    assert any("4 images" in c.value for c in at.caption) and any("3 images" in c.value for c in at.caption)
    press(at, "Compute the perturbation")
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Fooling rate, training set", "Fooling rate, held-out set"]
    assert downloads(at)[:3] == ["uap.npy", "uap.png", "report.json"]
    from engine import lab_runs  # the same record the job returned (cached on disk): report.json's keys

    record = lab_runs.uap_run(TINY, str(train_folder), str(held_folder),
                              {"method": "sgd", "norm": "inf", "xi": 10.0, "max_passes": 1, "target_fooling": 0.8})
    assert {"fooling_rate_train", "fooling_rate_heldout", "xi", "norm", "model"} <= set(lab_runs.uap_report(record))
    shown = [m.value for m in at.metric][:2]
    assert shown == [f"{100 * record['fooling_rate_train']:.0f} %", f"{100 * record['fooling_rate_heldout']:.0f} %"]
    assert float(np.abs(record["perturbation"]).max()) <= 10 / 255 + 1e-6


def test_the_same_set_twice_is_a_warning_and_a_set_too_small_a_sentence(train_folder, tmp_path):
    at = open_page(model=TINY, view="universal", train="folder", train_folder=str(train_folder), heldout="folder",
                   heldout_folder=str(train_folder))
    assert any("same set" in w.value for w in at.warning)
    lonely = tmp_path / "one"
    lonely.mkdir()
    Image.fromarray(np.asarray(images.load_sample("coffee"))).save(lonely / "coffee.png")
    at = open_page(model=TINY, view="universal", train="folder", train_folder=str(lonely), heldout="heldout")
    press(at, "Compute the perturbation")
    assert any("at least" in e.value and "training images" in e.value for e in at.error), [e.value for e in at.error]


def test_the_universal_preset_restores_the_lecture_settings(train_folder):
    at = open_page(model=TINY, view="universal", train="folder", train_folder=str(train_folder), xi="4", passes="2")
    next(b for b in at.button if b.label.startswith("Preset: a UAP on the bundled photos")).click().run()
    assert not at.exception, at.exception
    assert next(s for s in at.selectbox if s.label == "Training set").value == "bundled"
    assert next(s for s in at.selectbox if s.label == "Held-out set").value == "heldout"
    assert next(n for n in at.number_input if n.label.startswith("ξ")).value == 10.0
    assert "xi" not in at.query_params and "train" not in at.query_params
    next(b for b in at.button if b.label.startswith("Preset: the lecture's algorithm")).click().run()
    assert next(s for s in at.selectbox if s.label == "Algorithm").value == "deepfool"


def test_transfer_table_per_image(held_folder):
    at = open_page(model=TINY, view="transfer", models=f"efficientnet_lite0,{TINY}", kind="per-image", strength="4",
                   set="folder", set_folder=str(held_folder))
    assert not any(s.label == "Training set" for s in at.selectbox)  # per-image perturbations need no training set
    press(at, "Build the table")
    table = at.dataframe[0].value
    assert list(table.columns) == ["made on ↓ / tested on →", "lite0", TINY]
    assert list(table.iloc[:, 0]) == ["lite0", TINY]
    assert "Table (JSON)" in downloads(at)


def test_transfer_needs_two_models():
    at = open_page(model=TINY, view="transfer", models="efficientnet_lite0")
    assert any("at least two models" in i.value for i in at.info)


def test_epsilon_curves_say_agreement_stands_in_for_accuracy(held_folder):
    at = open_page(model=TINY, view="curves", methods="fgsm,bim", eps="2,8", set="folder",
                   set_folder=str(held_folder))
    assert any("stands in for" in i.value for i in at.info)
    press(at, "Run the comparison")
    assert len(at.get("plotly_chart")) == 2
    assert "Curves (JSON)" in downloads(at)


def test_minimal_perturbations_on_the_sidebar_image():
    at = open_page(model=TINY, view="minimal", eps="4")
    press(at, "Run all three")
    captions = [c.value for c in at.caption if c.value.startswith("‖r‖₂")]
    assert len(captions) == 3
    assert downloads(at) == ["PNG", "PNG", "PNG"]


def test_the_minimal_preset_is_the_lectures_panda_to_gibbon():
    at = open_page(model=TINY, view="minimal", eps="9")
    next(b for b in at.button if b.label.startswith("Preset: panda → gibbon")).click().run()
    assert not at.exception, at.exception
    assert next(n for n in at.number_input if n.label.startswith("FGSM ε")).value == 2


def test_effort_to_flip_boxes_beside_the_minds_eye(held_folder):
    at = open_page(model=TINY, view="effort", models=TINY, steps="5", set="folder", set_folder=str(held_folder))
    press(at, "Push every image")
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # this set's models, then the Mind's Eye networks from the shipped sweep
    assert "Effort (JSON)" in downloads(at)


def test_black_box_against_the_minds_eye_direct_net():
    at = open_page(model=TINY, view="blackbox", epochs="1")
    press(at, "Run the black-box attack")
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Transfer rate", "Oracle queries"]
    assert next(m for m in at.metric if m.label == "Oracle queries").value == "100"


def test_defences_naive_and_adaptive_then_the_detector(held_folder):
    at = open_page(model=TINY, view="defences", transform="bits:3", eps="4", set="folder", set_folder=str(held_folder))
    press(at, "Attack the defence")
    bars = at.get("plotly_chart")
    assert bars, "the bar chart of undefended, naive and adaptive success"
    assert any(c.value.startswith("The transform alone keeps") for c in at.caption)
    assert "Defence (JSON)" in downloads(at)
    # the tiny net answers the same class for every picture, so nothing can be relabelled: a sentence
    press(at, "Train the detector")
    assert any("could be relabelled under the cap" in e.value for e in at.error), [e.value for e in at.error]


def test_an_unknown_transform_is_a_sentence():
    at = open_page(model=TINY, view="defences", transform="blur:3")
    assert any("jpeg" in e.value and "blur" in e.value for e in at.error), [e.value for e in at.error]
    assert not any(b.label == "Attack the defence" for b in at.button)
