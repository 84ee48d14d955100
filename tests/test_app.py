"""AppTest drives the real app: home and classify pages, sample, upload, model switch, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import images, models

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def start(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    return at


def sidebar_select(at: AppTest, label: str):
    return next(w for w in at.sidebar.selectbox if w.label == label)


def uploader(at: AppTest, label: str):
    return next(w for w in at.sidebar.file_uploader if w.label.startswith(label))


def chart_labels(at: AppTest) -> list[str]:
    import json

    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    return [y.strip() for y in figure["data"][0]["y"]][::-1]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_home_page_lists_only_existing_pages_and_the_model():
    at = start()
    assert at.title[0].value == "Glassbox"
    assert sidebar_select(at, "Model").value == models.DEFAULT_MODEL
    assert sidebar_select(at, "Sample image").value == "chelsea"
    links = [link.proto.label for link in at.get("page_link")]
    assert links == ["**Lecture**", "**Classify**", "**Anatomy**", "**Relabel**", "**Saliency**", "**Class inversion**", "**Dissection**", "**Patterns**", "**Mind's Eye**", "**Attacks lab**"]  # only pages that exist, no placeholders
    assert any("five most likely ImageNet classes" in m.value for m in at.markdown)
    sidebar_select(at, "Sample image").set_value("astronaut").run()
    sidebar_select(at, "Model").set_value("efficientnet_lite1").run()
    assert not at.exception
    assert at.sidebar.image[0].proto.imgs[0].caption == "astronaut"
    assert any("input 240 px" in c.value for c in at.sidebar.caption)
    assert any("EfficientNet-Lite1" in c.value for c in at.caption)
    assert at.query_params["model"] in ("efficientnet_lite1", ["efficientnet_lite1"])
    assert at.query_params["image"] in ("astronaut", ["astronaut"])


def test_classify_picks_a_sample_and_shows_its_top5():
    at = start("app_pages/classify.py")
    assert "Egyptian cat" in chart_labels(at)[:3] or "tabby" in chart_labels(at)[:3]
    sidebar_select(at, "Sample image").set_value("coffee").run()
    assert not at.exception
    assert chart_labels(at)[0] == "espresso"
    assert len(chart_labels(at)) == 5
    assert "coffee" in str(at.query_params["image"])


def test_upload_replaces_the_image_and_a_bad_upload_keeps_it():
    at = start("app_pages/classify.py")
    coffee = images.sample_bytes("coffee")
    uploader(at, "…or upload").set_value(("my coffee.png", coffee, "image/png")).run()
    assert not at.exception
    assert chart_labels(at)[0] == "espresso"
    assert str(at.query_params["image"]).startswith("h-")  # kept by content hash: a reload finds it
    uploader(at, "…or upload").set_value(("notes.txt", b"hello, not an image", "text/plain")).run()
    assert not at.exception
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "not an image" in errors and "previous image is kept" in errors
    assert chart_labels(at)[0] == "espresso"  # nothing lost


def test_switching_model_and_class_lookup_bound_to_url():
    at = start("app_pages/classify.py", **{"class": "967"})
    assert at.selectbox(key=f"_class_class_{models.DEFAULT_MODEL}").value == 967
    sidebar_select(at, "Model").set_value(models.TEST_MODEL).run()
    assert not at.exception
    assert any("input 64 px" in c.value for c in at.sidebar.caption)
    assert all(label.startswith("class ") for label in chart_labels(at))
    assert at.query_params["model"] in (models.TEST_MODEL, [models.TEST_MODEL])


def test_a_model_without_weights_gets_a_sentence_and_a_way_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_host_reachable", lambda url, timeout=3.0: False)
    at = start("app_pages/classify.py", model="vgg19")
    assert not at.exception
    assert any("not on this machine" in e.value for e in at.error)
    at.button(key="use_default_main").click().run()
    assert not at.exception
    assert sidebar_select(at, "Model").value == models.DEFAULT_MODEL
    assert not at.error


def test_links_with_unknown_names_fall_back_with_a_notice():
    at = start(model="nonsense", image="unicorn")
    notices = " ".join(i.value for i in at.info)
    assert "model called 'nonsense'" in notices and "sample called 'unicorn'" in notices
    assert sidebar_select(at, "Model").value == models.DEFAULT_MODEL
    assert sidebar_select(at, "Sample image").value == "chelsea"


def test_own_checkpoint_from_the_sidebar_and_a_refused_pickle():
    import torch

    net = models.build_architecture("squeezenet1_1", 3).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    at = start("app_pages/classify.py")
    weights, names = uploader(at, "Weights"), uploader(at, "Class names")
    weights.set_value(("fruit.pt", buffer.getvalue(), "application/octet-stream"))
    names.set_value(("fruit.txt", b"apple\npear\nplum\n", "text/plain"))
    next(s for s in at.sidebar.selectbox if s.label == "Architecture").set_value("squeezenet1_1")
    at.sidebar.button[0].click().run()
    assert not at.exception, at.exception
    assert sidebar_select(at, "Model").value.startswith("ckpt:fruit:")
    assert sorted(chart_labels(at)) == ["apple", "pear", "plum"]

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    evil = io.BytesIO()
    torch.save({"w": Evil()}, evil)
    uploader(at, "Weights").set_value(("evil.pt", evil.getvalue(), "application/octet-stream"))
    at.sidebar.button[0].click().run()
    assert not at.exception
    assert any("refuses for safety" in e.value for e in at.sidebar.error)
