"""AppTest of the Anatomy page: every view on the tiny model, the set views as jobs over a folder of
images, clicking an embedded image into the sidebar, and bad input as sentences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import images
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/anatomy.py", model="tiny_test_cnn", image="chelsea", **query)


def press(at: AppTest, label: str) -> AppTest:
    """Press the button if it is there (features already on disk open without it), let the job end."""
    button = next((b for b in at.button if b.label == label), None)
    if button is not None:
        button.click().run()
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Twelve crops of the bundled samples, a nested one, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, name in enumerate(images.list_samples()[:4] * 3):
        picture = np.asarray(images.load_sample(name))
        y, x = rng.integers(0, 40, 2)
        Image.fromarray(picture[y:y + 200, x:x + 200]).save(folder / f"{i:02d}_{name}.png")
    (folder / "inner").mkdir()
    Image.fromarray(np.asarray(images.load_sample("coffee"))).save(folder / "inner" / "coffee.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_filters_view_draws_the_first_layer_with_its_shape():
    at = open_page(view="filters")
    assert not at.exception, at.exception
    assert any(h.value == "First layer: features.0, weights 8 × 3 × 3 × 3" for h in at.subheader)
    assert len(at.image) >= 1
    assert [b.proto.label for b in at.get("download_button")] == ["Filters (PNG)"]


def test_activations_view_shows_a_clickable_grid_and_the_strongest_channel():
    at = open_page(view="activations", layer="features.3", count="8")
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1
    labels = [m.label for m in at.metric]
    assert "Strongest activation" in labels and "Share of positions above zero" in labels
    assert any("the 8 strongest" in c.value for c in at.caption)


def test_back_view_shows_three_projections_and_says_there_are_no_switches():
    at = open_page(view="back", layer="features.3")
    assert not at.exception, at.exception
    assert any("max-pool" in i.value for i in at.info)  # the tiny net has none
    captions = [c for picture in at.image for c in picture.captions]
    assert {"Deconvnet (Zeiler & Fergus)", "Guided backprop", "Gradient"} <= set(captions), captions
    assert [b.proto.label for b in at.get("download_button")] == ["Projections (PNG)"]


def test_patches_over_a_folder_then_neighbours_and_embedding(photo_folder):
    at = open_page(view="patches", set="folder", folder=str(photo_folder), layer="features.3", k="4")
    assert any("13 images" in c.value for c in at.caption), [c.value for c in at.caption]  # the size, on screen
    assert any("notes.txt" in str(d.value) for d in at.dataframe)  # the skipped file is listed
    assert any("Press **Find top patches**" in i.value for i in at.info)
    press(at, "Find top patches")
    assert any("receptive field" in c.value for c in at.caption)
    patch_captions = [c for picture in at.image for c in picture.captions if c.endswith((".png", ".jpg")) is False
                      and " · " in c]
    assert len(patch_captions) == 4, patch_captions
    values = [float(c.rsplit(" · ", 1)[1]) for c in patch_captions]
    assert values == sorted(values, reverse=True)
    assert [b.proto.label for b in at.get("download_button")] == ["Patches (PNG)", "Patches (JSON)"]
    again = open_page(view="patches", set="folder", folder=str(photo_folder), layer="features.3", k="4")
    assert not any(b.label == "Find top patches" for b in again.button)  # a second visit reads the disk
    assert any("receptive field" in c.value for c in again.caption)

    at = open_page(view="neighbours", set="folder", folder=str(photo_folder), k="3")
    press(at, "Find neighbours")
    assert any("penultimate features" in m.value for m in at.markdown)
    assert any("raw pixels" in m.value for m in at.markdown)
    assert [b.proto.label for b in at.get("download_button")] == ["Neighbours (JSON)"]

    at = open_page(view="embedding", set="folder", folder=str(photo_folder), method="pca")
    press(at, "Embed")
    assert len(at.get("plotly_chart")) == 1
    assert any("PCA" in c.value for c in at.caption)
    assert [b.proto.label for b in at.get("download_button")] == ["Points (CSV)"]


def test_an_image_chosen_on_the_page_becomes_the_current_image():
    at = open_page(view="filters")
    at.session_state["_next_image"] = ("set photo.png", images.sample_bytes("coffee"))
    at.run()
    assert not at.exception, at.exception
    assert any("Showing **set photo.png**" in c.value for c in at.sidebar.caption)


def test_bad_input_is_a_sentence(tmp_path, photo_folder):
    at = open_page(view="patches", set="folder", folder=str(tmp_path / "nowhere"))
    assert not at.exception, at.exception
    assert at.error and "nowhere" in at.error[0].value

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    at = open_page(view="neighbours", set="folder", folder=str(empty))
    assert at.error and "holds no image" in at.error[0].value

    at = open_page(view="neighbours", set="folder", folder=str(photo_folder), k="20")
    press(at, "Find neighbours")
    assert at.error and "13" in at.error[0].value  # a set smaller than k says so
