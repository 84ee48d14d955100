"""AppTest of "Use as the image" (issue 16): on each page with a result image the button makes the result
the sidebar's current image (kept by content hash in the link, remembering where it came from), and
Classify and Saliency then compare it with the original; without a parent they do not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import chain, images, models, plots
from tests import apptest

TINY = models.TEST_MODEL


def finish(at: AppTest, timeout: float = 300) -> AppTest:
    apptest.wait_for_jobs(timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def press(at: AppTest, label: str, timeout: float = 300) -> AppTest:
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, at.exception
    return finish(at, timeout)


def link(at: AppTest) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def sidebar_text(at: AppTest) -> str:
    return " ".join([c.value for c in at.sidebar.caption] + [m.value for m in at.sidebar.markdown])


def use(at: AppTest, key: str) -> AppTest:
    """Press one "Use as the image" button (by its key) and check the result became the current image."""
    before = link(at).get("image")
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    after = link(at).get("image", "")
    assert after.startswith("h-") and after != before, (before, after)
    return at


def titled(at: AppTest, starts: tuple[str, ...]) -> list[dict]:
    """The plotly figures whose title starts with one of ``starts``."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return [spec for spec in specs if spec["layout"].get("title", {}).get("text", "").startswith(starts)]


def stored(at: AppTest):
    """The current image's manifest and bytes, read back from the store by the link's hash."""
    return chain.load(chain.digest_from_token(link(at)["image"]))


def compare_headings(at: AppTest) -> list[str]:
    return [h.value for h in at.subheader if h.value in ("Compared with the original", "Compare with the original")]


# ---------------------------------------------------------------------------------------------
# The shared colour range (the saliency compare's promise: one scale, not each map its own)


def test_the_shared_colour_range_is_one_range_over_both_maps():
    weak = np.full((4, 4), 0.1, np.float32)
    weak[0, 0] = 0.5
    strong = np.zeros((4, 4), np.float32)
    strong[1, 1] = 2.0
    shared = plots.colour_range([weak, strong], signed=False, shared=True)
    assert shared == [(0.0, 2.0), (0.0, 2.0)]  # the weak map's 0.5 is a quarter of the scale, not its top
    assert plots.colour_range([weak, strong], signed=False, shared=False) == [(pytest.approx(0.1), 0.5), (0.0, 2.0)]
    signed = plots.colour_range([weak - 0.3, strong], signed=True, shared=True)
    assert signed[0] == signed[1] == (-2.0, 2.0)  # symmetric around 0, from the larger magnitude


# ---------------------------------------------------------------------------------------------
# Relabel -> the current image; Classify and Saliency compare; a reload keeps it all


def test_a_relabelled_image_becomes_the_current_image_and_both_pages_compare_it():
    at = apptest.open_page("app_pages/relabel.py", model=TINY, image="chelsea", target="3")
    assert not compare_headings(at)
    press(at, "Run")
    use(at, "use_relabel_chelsea")
    derived = link(at)["image"]
    derivation, data = stored(at)
    assert derivation.parent == images.image_digest(images.sample_bytes("chelsea")) and derivation.page == "Relabel"
    assert derivation.settings["attack"] == "relabel" and derivation.model == TINY
    assert np.asarray(images.decode_image(data)).shape == (64, 64, 3)  # the result as the model saw it
    assert "Made on Relabel by Relabel" in sidebar_text(at) and "from **chelsea**" in sidebar_text(at)  # the origin
    at.switch_page("app_pages/classify.py").run()
    assert not at.exception, at.exception
    assert compare_headings(at) == ["Compared with the original"]
    sentence = " ".join(m.value for m in at.markdown)
    assert "for the original" in sentence and ("now says" in sentence or "still says" in sentence)
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith("Original · chelsea") for c in captions) and any(c.startswith("Now ·") for c in captions)
    compared = titled(at, ("Original", "Now"))
    assert len(compared) == 2
    assert compared[0]["layout"]["xaxis"]["range"] == compared[1]["layout"]["xaxis"]["range"]  # one axis

    looked_up = at.selectbox(key=f"_class_class_{TINY}").value
    at.switch_page("app_pages/saliency.py").run()
    assert not at.exception, at.exception
    assert compare_headings(at) == ["Compare with the original"]
    assert at.selectbox(key=f"_class_class_{TINY}").value == looked_up  # the class travels, not class 0
    maps = titled(at, ("Original · chelsea", "Now · "))
    assert len(maps) == 2
    heat = [next(t for t in spec["data"] if t["type"] == "heatmap") for spec in maps]
    assert heat[0]["zmin"] == heat[1]["zmin"] and heat[0]["zmax"] == heat[1]["zmax"]  # one colour scale
    assert any("one colour scale" in c.value for c in at.caption)
    at.radio(key="sal_orig_class").set_value("original").run()
    assert not at.exception and link(at).get("orig_class") == "original"

    again = AppTest.from_file(apptest.APP, default_timeout=180)  # a reload: a new session with the same link
    again.query_params.update(link(at))
    again.run()
    again.switch_page("app_pages/classify.py").run()
    assert not again.exception, again.exception
    assert link(again)["image"] == derived
    assert "Made on Relabel by Relabel" in sidebar_text(again)
    assert compare_headings(again) == ["Compared with the original"]


def test_no_comparison_without_a_parent():
    for page in ("app_pages/classify.py", "app_pages/saliency.py"):
        at = apptest.open_page(page, model=TINY, image="chelsea")
        assert not compare_headings(at), page


# ---------------------------------------------------------------------------------------------
# Every page's result buttons


def origin_of(at: AppTest) -> str:
    return next((c.value for c in at.sidebar.caption if c.value.startswith("Made ")), "")


def test_relabel_one_big_step_and_the_iterative_result():
    at = apptest.open_page("app_pages/relabel.py", model=TINY, image="chelsea", view="onestep", target="3")
    finish(at)
    use(at, "use_relabel_onestep_iterative")
    assert origin_of(at).startswith("Made on Relabel by ") and "one-level steps toward class 3" in origin_of(at)


def test_a_result_from_the_gaussian_image_starts_a_chain_of_its_own():
    at = apptest.open_page("app_pages/relabel.py", model=TINY, image="chelsea", target="1")
    at.toggle(key="rl_gaussian").set_value(True).run()
    press(at, "Run")
    use(at, "use_relabel_gaussian")
    # not made from chelsea: it keeps its origin (page, operation) but names no original to compare with
    assert origin_of(at).startswith("Made on Relabel by ") and " from " not in origin_of(at)
    derivation, _ = stored(at)
    assert derivation.parent is None and derivation.name.startswith("gaussian →")
    at.switch_page("app_pages/classify.py").run()
    assert not at.exception and not compare_headings(at)


def test_class_inversion_and_hole_filling_results():
    at = apptest.open_page("app_pages/inversion.py", model=TINY, image="coffee", target="3")
    at.number_input(key="inv_steps").set_value(6).run()
    press(at, "Run")
    use(at, "use_inversion_class")
    assert "class inversion → class 3" in origin_of(at) and "from **coffee**" in origin_of(at)
    at = apptest.open_page("app_pages/inversion.py", model=TINY, image="coffee", target="3", mode="hole")
    at.number_input(key="inv_steps").set_value(6).run()
    press(at, "Run")
    use(at, "use_inversion_hole")
    assert "hole filling → class 3" in origin_of(at)


def test_painted_garments_become_images_of_their_own():
    at = apptest.open_page("app_pages/patterns.py", image="chelsea")
    use(at, "use_pattern_gen")
    # a garment is not made from the sidebar's image: it keeps its origin, with no original to compare
    assert origin_of(at).startswith("Made on Patterns by ") and " from " not in origin_of(at)
    assert any(c.value.startswith("Showing **") and "pattern on a" in c.value for c in at.sidebar.caption)
    at.switch_page("app_pages/classify.py").run()
    assert not at.exception and not compare_headings(at)
    at = apptest.open_page("app_pages/patterns.py", image="chelsea", mode="quick", steps="10")
    press(at, "Paint")
    use(at, "use_pattern_quick")
    assert any("pattern on a" in c.value for c in at.sidebar.caption)


def test_attacks_lab_minimal_results():
    at = apptest.open_page("app_pages/attacks_lab.py", model=TINY, image="chelsea", view="minimal", eps="4")
    press(at, "Run all three")
    use(at, "use_minimal_deepfool")
    assert "DeepFool" in origin_of(at) and "(minimal perturbation)" in origin_of(at)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    made = []
    for name, samples in (("train", ["chelsea", "coffee", "astronaut"]), ("held", ["brick", "grass"])):
        folder = tmp_path_factory.mktemp(name)
        for i, sample in enumerate(samples):
            Image.fromarray(np.asarray(images.load_sample(sample))[:220, :220]).resize((96, 96)).save(
                folder / f"{i:02d}_{sample}.png")
        made.append(folder)
    return made


def test_a_universal_perturbation_on_a_held_out_photo_and_on_the_current_image(photo_folders):
    train, held = photo_folders
    query = dict(model=TINY, image="chelsea", view="universal", train="folder", train_folder=str(train),
                 heldout="folder", heldout_folder=str(held), passes="1")
    at = apptest.open_page("app_pages/attacks_lab.py", **query)
    press(at, "Compute the perturbation")
    at.toggle(key="lab_uap_current").set_value(True).run()
    assert not at.exception, at.exception
    assert link(at).get("on_current") == "1"
    assert sum(c.startswith("plus the perturbation") for image in at.image for c in image.captions) == 2
    use(at, "use_uap_current")
    assert "universal perturbation ξ=10" in origin_of(at) and "from **chelsea**" in origin_of(at)
    at = apptest.open_page("app_pages/attacks_lab.py", **query)
    finish(at)
    use(at, "use_uap_heldout")
    assert origin_of(at).startswith("Made on Attacks lab by universal perturbation") and " from " not in origin_of(at)
    assert any("held-out photo + universal perturbation" in c.value for c in at.sidebar.caption)


def test_a_minds_eye_adversarial_image():
    from engine.minds_eye import weights

    if not all((weights.WEIGHTS_DIR / f"{net}.pt").is_file() for net in weights.FILES):
        pytest.skip("No shipped Mind's Eye weights")
    at = apptest.open_page("app_pages/minds_eye.py", model=TINY, view="attack", net="direct", img="1", steps="2")
    press(at, "Attack")
    use(at, "use_minds_eye_attack")
    assert any("Mind's Eye attack →" in c.value for c in at.sidebar.caption)
    derivation, data = stored(at)
    assert derivation.parent is None and np.asarray(images.decode_image(data)).shape == (64, 64, 3)
