"""AppTest of the patterns page: quick mode as a job, generation from a checkpoint, bad uploads."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from engine import models
from engine.patterns import training as T
from tests import apptest


def open_page(**query) -> AppTest:
    return apptest.open_page("pages/patterns.py", **query)


def test_quick_mode_paints_a_zebra_onto_a_garment():
    at = open_page(image="chelsea")
    at.slider(key="pat_steps").set_value(10).run()
    next(b for b in at.button if b.label == "Paint").click().run()
    apptest.wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    assert [b.proto.label for b in at.get("download_button")] == ["Pattern PNG"]
    assert len(at.get("plotly_chart")) == 1


def test_generate_mode_without_a_checkpoint_asks_for_one():
    at = open_page(image="chelsea")
    at.segmented_control(key="pat_mode").set_value("generate").run()
    assert not at.exception, at.exception
    assert any("Upload a checkpoint to generate" in i.value for i in at.info)


def test_a_trained_checkpoint_generates(tmp_path):
    from engine.patterns import generate as G
    from engine.patterns import substrates as S

    handle = models.load_model(models.TEST_MODEL)
    trainer = T.Trainer(handle, T.TrainConfig(classes=(1, 3), model=handle.name, size=32, base=8))
    trainer.step()
    trainer.save(tmp_path / "ck.pt")
    loaded = G.load_generator(T.read_checkpoint(tmp_path / "ck.pt"))
    assert loaded.class_names == ("class 1", "class 3") and loaded.size == 32 and loaded.steps == 1
    garment = S.draw_substrate("dress", 32, (10, 200, 30))
    pattern = G.generate(loaded, garment.image, {0: 1.0, 1: 0.5})
    assert pattern.shape == (32, 32, 3) and pattern.dtype.name == "uint8"
    again = G.generate(loaded, garment.image, {0: 1.0, 1: 0.5})
    assert (pattern == again).all()  # the same seed gives the same pattern
