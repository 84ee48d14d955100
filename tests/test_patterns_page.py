"""AppTest of the patterns page: the shipped generator, training as a separate process with stop and
resume, a crashed run, bad uploads, and quick mode."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine import images, jobs, models
from engine.patterns import generate, runs, substrates, training
from engine.patterns.cli import parse_weights
from engine.patterns.losses import PatternLossWeights
from tests import apptest


@pytest.fixture(autouse=True)
def own_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "cache"))
    yield
    apptest.wait_for_jobs()


def open_page(**query) -> AppTest:
    return apptest.open_page("app_pages/patterns.py", **query)


def test_the_page_opens_on_the_shipped_generator_and_paints_every_class():
    at = open_page(image="chelsea")
    assert not at.exception, at.exception
    loaded = generate.load_generator_file(generate.SHIPPED)
    assert f"trained {loaded.steps} steps" in " ".join(c.value for c in at.caption)
    pictures = at.main.get("image")
    assert len(pictures) == 3 + len(loaded.class_names)  # substrate, the mix, the change, one per class
    assert [b.proto.label for b in at.get("download_button")] == ["Pattern PNG"]
    assert len(at.get("plotly_chart")) == 2  # the critic's top 5, and a network the generator never saw
    unseen = str(at.get("plotly_chart")[1].proto)
    assert "A network the generator never saw" in unseen and "efficientnet_lite2" in unseen
    assert not loaded.grayscale and not loaded.class_noise  # trained as the shipped README says
    assert loaded.critics == ("efficientnet_lite1",)
    assert not [r for r in at.radio if r.key == "gen_grey"]  # a colour generator: no grey reading to choose
    assert not at.number_input  # constant class tiles: no noise seed to pick
    at.multiselect(key="gen_classes").set_value(["zebra", "jaguar"]).run()
    at.slider(key="gen_w_jaguar").set_value(0.5).run()
    assert not at.exception, at.exception
    assert any("zebra × 1 + jaguar × 0.5" in str(i.proto) for i in at.main.get("image"))


def _train_tiny_run(folder, steps=4):
    config = training.TrainConfig(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=1, base=8)
    return runs.train_run(folder, config, steps, sample_every=2, checkpoint_every=2)


def test_training_runs_in_its_own_process_then_stops_and_resumes():
    at = open_page(model=models.TEST_MODEL, image="chelsea", mode="train")
    assert at.selectbox(key="train_run").value == "(new run)"
    at.text_input(key="train_name").set_value("tiny run").run()
    at.select_slider(key="train_size").set_value(64).run()
    at.number_input(key="train_steps").set_value(30).run()
    at.multiselect(key="train_classes").set_value(["class 1", "class 3"]).run()
    start = next(b for b in at.button if b.label == "Start training")
    assert not start.disabled
    start.click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_run").value == "tiny-run"
    status = next(s for s in jobs.registry("training").list() if "tiny-run" in (s.key or ""))
    jobs.registry("training").wait(status.id, timeout=300)
    at.run()
    assert not at.exception, at.exception
    folder = runs.runs_root() / "tiny-run"
    view = runs.view_run(folder)
    assert view.checkpoint_steps == 30 and view.logged_steps == 30
    assert len(at.main.get("image")) == 1 and len(at.get("plotly_chart")) == 1  # the sample grid and the curves
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["checkpoint.pt (resume elsewhere)", "log.csv", "Latest sample grid PNG"]
    at.number_input(key="resume_to_tiny-run").set_value(40).run()
    next(b for b in at.button if b.label == "Resume").click().run()
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert runs.view_run(folder).checkpoint_steps == 40
    assert "checkpoint at step 40" in " ".join(c.value for c in at.caption)
    # the run trained here is now a generator the Generate mode offers
    at.segmented_control(key="pat_mode").set_value("generate").run()
    at.selectbox(key="gen_generator").set_value("run:tiny-run").run()
    assert not at.exception, at.exception
    assert "trained 40 steps" in " ".join(c.value for c in at.caption)


def test_a_crashed_run_says_so_and_offers_resume(tmp_path):
    garments = tmp_path / "garments"
    skirts = [substrates.draw_substrate("skirt", 40, (30 * i, 60, 90)).image for i in range(4)]
    runs.save_uploads(garments, [(f"{i}.png", images.to_png_bytes(skirt)) for i, skirt in enumerate(skirts)])
    folder = runs.runs_root() / "broken"
    config = training.TrainConfig(classes=(1, 3), model=models.TEST_MODEL, size=32, batch=1, base=8,
                                  substrates=str(garments))
    runs.train_run(folder, config, 4, sample_every=2, checkpoint_every=2)
    with open(folder / "log.csv", "a") as log:  # the server died at step 5, after the checkpoint at 4
        log.write("5,0,0,0,0,0,0,0\n")
    at = open_page(model=models.TEST_MODEL, image="chelsea", mode="train", run="broken")
    assert "it was interrupted" in " ".join(w.value for w in at.warning)
    for picture in garments.iterdir():  # the user's garment folder is gone: resuming fails in the worker
        picture.unlink()
    garments.rmdir()
    next(b for b in at.button if b.label == "Resume").click().run()
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    error = " ".join(e.value for e in at.error)
    assert "The training stopped with an error: There is no folder at" in error
    assert "The last checkpoint is at step 4; resume below" in error
    assert any(b.label == "Resume" for b in at.button)


def test_the_new_run_form_refuses_what_cannot_train():
    _train_tiny_run(runs.runs_root() / "taken")
    at = open_page(model=models.TEST_MODEL, image="chelsea", mode="train")
    at.selectbox(key="train_run").set_value("(new run)").run()
    assert at.radio(key="train_recipe").value == "shipped"  # the CPU default
    at.radio(key="train_recipe").set_value("paper").run()
    assert (at.number_input(key="train_lr").value, at.text_input(key="train_weights").value) == (2e-4, "3, 10, 50, 150")
    assert at.toggle(key="train_noise").value is True  # the paper's f(t)
    at.radio(key="train_recipe").set_value("shipped").run()
    assert at.toggle(key="train_noise").value is False
    shipped = training.read_checkpoint(generate.SHIPPED)["config"]  # the recipe the shipped generator was trained with
    assert at.number_input(key="train_lr").value == pytest.approx(shipped["lr"])
    assert parse_weights(at.text_input(key="train_weights").value) == PatternLossWeights.from_dict(shipped["weights"])
    assert at.number_input(key="train_batch").value == shipped["batch"] and not shipped["class_noise"]
    assert at.toggle(key="train_grey").value is shipped["grayscale"] is False
    assert at.toggle(key="train_ensemble").value and tuple(shipped["critics"]) == ("efficientnet_lite1",)
    assert at.toggle(key="train_eot").value is shipped["eot"] is True
    assert at.toggle(key="train_varied").value and shipped["shapes"] == "varied"
    assert at.number_input(key="train_crops").value == shipped["crops"]
    at.text_input(key="train_name").set_value("taken").run()
    at.text_input(key="train_weights").set_value("3, 10, 50").run()
    at.radio(key="train_substrates").set_value("upload").run()
    warnings = " ".join(w.value for w in at.warning)
    assert "'taken' exists already" in warnings
    assert "four numbers" in warnings
    assert "at least 4 substrate images; 0 uploaded" in warnings
    assert next(b for b in at.button if b.label == "Start training").disabled
    at.radio(key="train_substrates").set_value("folder").run()
    at.text_input(key="train_folder").set_value("/nonexistent/garments").run()
    assert "There is no folder at /nonexistent/garments" in " ".join(w.value for w in at.warning)


def test_quick_mode_paints_a_zebra_onto_a_garment():
    at = open_page(image="chelsea", mode="quick")
    at.slider(key="pat_steps").set_value(10).run()
    next(b for b in at.button if b.label == "Paint").click().run()
    apptest.wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    assert [b.proto.label for b in at.get("download_button")] == ["Pattern PNG"]
    assert len(at.get("plotly_chart")) == 1


def _link(at: AppTest) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def test_a_reload_finds_the_quick_pattern_again_without_paint():
    at = open_page(image="chelsea", mode="quick")
    at.slider(key="pat_steps").set_value(10).run()
    at.selectbox(key="quick_garment").set_value("dress").run()
    at.multiselect(key="quick_classes").set_value(["zebra", "goldfish"]).run()
    at.slider(key="quick_w_goldfish").set_value(0.5).run()
    next(b for b in at.button if b.label == "Paint").click().run()
    assert not at.exception, at.exception
    link = _link(at)
    assert (link["steps"], link["garment"], link["classes"], link["weights"]) == ("10", "dress", "340,1", "1,0.5")
    running = open_page(**link)  # a reload (or a second tab) while the job may still run: no Paint pressed
    assert not running.exception, running.exception
    assert "Press **Paint** to start." not in [i.value for i in running.info]
    apptest.wait_for_jobs()
    reloaded = open_page(**link)  # and after it finished: the result, by itself
    assert not reloaded.exception, reloaded.exception
    assert reloaded.multiselect(key="quick_classes").value == ["zebra", "goldfish"]
    assert reloaded.slider(key="quick_w_goldfish").value == 0.5
    assert [b.proto.label for b in reloaded.get("download_button")] == ["Pattern PNG"]
    assert any("after 10 steps" in str(i.proto) for i in reloaded.main.get("image"))
    assert len(reloaded.get("plotly_chart")) == 1
    other = open_page(**{**link, "steps": "20"})  # other settings: another job, not started
    assert "Press **Paint** to start." in [i.value for i in other.info]
    broken = open_page(image="chelsea", mode="quick", classes="5000", weights="2,x")  # a damaged link
    warnings = " ".join(w.value for w in broken.warning)
    assert "classes='5000' is not a valid setting here" in warnings and "weights='2,x'" in warnings
    assert broken.multiselect(key="quick_classes").value == ["zebra"]


def test_a_trained_checkpoint_generates(tmp_path):
    handle = models.load_model(models.TEST_MODEL)
    trainer = training.Trainer(handle, training.TrainConfig(classes=(1, 3), model=handle.name, size=32, base=8))
    trainer.step()
    trainer.save(tmp_path / "ck.pt")
    loaded = generate.load_generator(training.read_checkpoint(tmp_path / "ck.pt"))
    assert loaded.class_names == ("class 1", "class 3") and loaded.size == 32 and loaded.steps == 1
    garment = substrates.draw_substrate("dress", 32, (10, 200, 30))
    pattern = generate.generate(loaded, garment.image, {0: 1.0, 1: 0.5})
    assert pattern.shape == (32, 32, 3) and pattern.dtype.name == "uint8"
    again = generate.generate(loaded, garment.image, {0: 1.0, 1: 0.5})
    assert (pattern == again).all()  # the same seed gives the same pattern
    assert images.to_png_bytes(np.asarray(pattern))[:4] == b"\x89PNG"


def test_presets_paint_on_held_out_garments():
    at = open_page(image="chelsea")
    loaded = generate.load_generator_file(generate.SHIPPED)
    labels = [b.label for b in at.button if b.key and b.key.startswith("gen_preset_")]
    assert len(labels) >= 4
    at.button(key="gen_preset_Zebra + goldfish mixed").click().run()
    assert not at.exception, at.exception
    assert at.radio(key="gen_source").value == "heldout" and at.selectbox(key="gen_heldout").value == "jumpsuit-1"
    assert at.multiselect(key="gen_classes").value == ["zebra", "goldfish"]
    assert at.slider(key="gen_w_goldfish").value == 0.6
    assert any("zebra × 1 + goldfish × 0.6" in str(i.proto) for i in at.main.get("image"))
    assert len(at.main.get("image")) == 3 + len(loaded.class_names)


def test_quality_mode_scores_a_run_on_the_held_out_garments():
    _train_tiny_run(runs.runs_root() / "tiny")
    at = open_page(model=models.TEST_MODEL, image="chelsea", mode="quality")
    assert not at.exception, at.exception
    at.selectbox(key="quality_generator").set_value("Run 'tiny' trained here").run()
    at.button(key="quality_run").click().run()
    apptest.wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    metrics = at.get("metric")
    assert len(metrics) == 4 and "efficientnet_lite2 top-5" in str(metrics[3].proto)
    assert any("| **mean of 2** |" in m.value for m in at.markdown)
    assert [b.proto.label for b in at.get("download_button")] == ["Report JSON"]
    at.text_input(key="quality_folder").set_value("/nonexistent/garments").run()
    at.button(key="quality_run").click().run()
    apptest.wait_for_jobs(timeout=120)
    at.run()
    assert "There is no folder at /nonexistent/garments" in " ".join(e.value for e in at.error)


def test_fig2_mode_sets_the_classic_gan_beside_the_cgan():
    from engine.patterns import classic

    at = open_page(image="chelsea", mode="classic")
    assert not at.exception, at.exception
    names = classic.load_classic(classic.SHIPPED_CLASSIC)[1]
    captions = [str(i.proto) for i in at.main.get("image")]
    assert sum("classic GAN, p = " in c for c in captions) == 3 * len(names)
    assert sum("cGAN on a garment, p = " in c for c in captions) == len(names)  # the shipped cGAN has every class


def test_every_generate_preset_paints_its_class_for_the_critic():
    """Each preset's strongest class is the shipped generator's critic's top 1 on the 8-bit pattern."""
    from engine.patterns import quality
    from engine.patterns.substrates import substrate_from_picture

    presets = _generate_presets()
    loaded = generate.load_generator_file(generate.SHIPPED)
    critic = models.load_model(loaded.model)
    for label, (garment, mix) in presets.items():
        picture = np.asarray(images.decode_image((quality.HELD_OUT_GARMENTS / f"{garment}.png").read_bytes()))
        pattern = generate.generate(loaded, substrate_from_picture(picture, loaded.size).image,
                                    {loaded.class_names.index(name): weight for name, weight in mix})
        strongest = max(mix, key=lambda pair: pair[1])[0]
        assert generate.classify_pattern(critic, pattern).labels[0] == strongest, label


def _generate_presets() -> dict:
    """GENERATE_PRESETS from the page's source (importing the page would run it)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / "app_pages" / "patterns.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(getattr(t, "id", None) == "GENERATE_PRESETS" for t in targets):
                return ast.literal_eval(node.value)
    raise AssertionError("GENERATE_PRESETS not found")
