"""AppTest of the dissection page: a run as a job, histogram, units table, unit view, search, CSV, errors,
and a reload (or a second tab) that finds the dissection by itself."""

from __future__ import annotations

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import jobs
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/dissection.py", **query)


def dissect(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Dissect").click().run()
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def test_dissect_a_layer_then_look_at_a_unit_and_search_a_concept():
    at = open_page(model="tiny_test_cnn", image="chelsea", layer="features.5")
    assert any("Press **Dissect** to run" in i.value for i in at.info)
    dissect(at)
    summary = next(s.value for s in at.success)
    assert "units of features.5 have IoU > 0.04" in summary and "1000 images" in summary
    assert len(at.get("plotly_chart")) == 1
    assert [b.proto.label for b in at.get("download_button")] == ["Units (CSV)"]
    units_table = at.dataframe[0].value
    assert len(units_table) == 16 and list(units_table.columns)[:4] == ["unit", "concept", "category", "iou"]
    assert list(units_table["iou"]) == sorted(units_table["iou"], reverse=True)
    at.number_input(key="dis_unit").set_value(3).run()
    assert not at.exception, at.exception
    assert any(h.value.startswith("Unit 3:") for h in at.subheader)
    assert any(m.label == "Share of your image above the threshold" for m in at.metric)
    at.selectbox(key="dis_concept").set_value("red").run()
    search = at.dataframe[1].value
    assert list(search["IoU"]) == sorted(search["IoU"], reverse=True) and len(search) == 10


def test_a_second_visit_is_instant_from_the_disk_cache():
    from engine import concepts, dissection, models

    at = dissect(open_page(model="tiny_test_cnn", image="chelsea", layer="features.3"))
    handle = models.load_model("tiny_test_cnn")
    data = concepts.bundled_concepts(1000, size=224, mask_size=112)
    stored = dissection.cached_result(handle, data, "features.3", dissection.DissectionConfig())
    assert stored is not None and stored.summary() == next(s.value for s in at.success)
    messages = []
    again = dissection.dissect(handle, data, "features.3", dissection.DissectionConfig(),
                               progress=lambda f, m: messages.append(m))
    assert messages == ["loaded from the cache"] and (again.iou == stored.iou).all()


def test_a_missing_folder_is_a_sentence():
    at = open_page(model="tiny_test_cnn", image="chelsea")
    at.selectbox(key="dis_source").set_value("folder").run()
    at.text_input(key="dis_path").set_value("/no/such/folder")
    dissect(at)
    assert any("There is no folder at /no/such/folder" in e.value for e in at.error), [e.value for e in at.error]


def test_a_layer_without_a_spatial_map_in_the_link_is_a_sentence():
    at = open_page(model="tiny_test_cnn", image="chelsea", layer="fc")
    assert any("Layer 'fc' has no spatial output" in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.selectbox(key="dis_layer").value == "features"


def small_concept_folder(root, count: int = 16):
    """``count`` noise pictures, each with a speckle mask: a folder that dissects in a moment."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{index:02d}.png")
        (root / "masks" / f"{index:02d}").mkdir(parents=True)
        speckle = (rng.random((64, 64)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(speckle).save(root / "masks" / f"{index:02d}" / "speckle.png")
    return root


def test_a_reload_or_a_second_tab_finds_the_dissection_without_pressing_dissect(tmp_path):
    folder = str(small_concept_folder(tmp_path / "concepts"))
    first = open_page(model="tiny_test_cnn", image="chelsea")
    first.selectbox(key="dis_layer").set_value("features.3").run()
    first.selectbox(key="dis_source").set_value("folder").run()
    first.text_input(key="dis_path").set_value(folder).run()
    first.number_input(key="dis_quantile").set_value(0.02).run()
    first.number_input(key="dis_iou").set_value(0.05).run()
    link = dict(first.query_params)  # every setting of the job's key is in the link
    assert {k: link.get(k) for k in ("layer", "concepts", "folder", "quantile", "iou")} == {
        "layer": "features.3", "concepts": "folder", "folder": folder, "quantile": "0.02", "iou": "0.05"}
    next(b for b in first.button if b.label == "Dissect").click().run()
    assert not first.exception, first.exception

    second = open_page(**link)  # a fresh session with the same link: a reload, or a second tab
    assert not any("Press **Dissect** to run" in i.value for i in second.info)
    assert second.get("progress") or second.success  # the running job's progress row, or its result
    apptest.wait_for_jobs(timeout=300)
    second.run()
    first.run()
    assert not second.exception and not first.exception
    summary = next(s.value for s in second.success)
    assert "units of features.3 have IoU > 0.05" in summary and "16 images" in summary
    assert summary == next(s.value for s in first.success)
    assert len([s for s in jobs.registry().list() if folder in (s.key or "")]) == 1  # one job, shared
    assert len(second.dataframe[0].value) == 16  # the units table of the result
