"""Real browser: a fresh server, deep link first, upload, top-5 chart, bad input; screenshots saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import images
from tests.browser import chromium_page, click_and_wait, reload_mid_run, screenshot, streamlit_server, wait_for_app

pytestmark = pytest.mark.browser

NAV = ["Home", "Lecture", "Classify", "Anatomy", "Relabel", "Saliency", "Class inversion", "Dissection", "Patterns", "Mind's Eye", "Attacks lab"]


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as url:
        yield url


def sidebar_nav_labels(page) -> list[str]:
    # Each link reads "<material icon name>\n\n<title>"; keep the title.
    return [t.strip().split("\n")[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def image_uploader(page):
    box = page.locator('[data-testid="stFileUploader"]').filter(has_text="upload your own")
    return box.locator('input[type="file"]')


def test_deep_link_first_then_upload_and_bad_file(server, tmp_path):
    with chromium_page() as page:
        # The very first request on a fresh server is a deep link to a page.
        page.goto(f"{server}/classify?image=coffee")
        wait_for_app(page, "Top-5 classes")
        assert sidebar_nav_labels(page) == NAV  # the router's navigation, not the legacy one
        page.locator(".js-plotly-plot").first.wait_for()
        page.get_by_text("espresso").first.wait_for()
        assert page.get_by_text("Runs on").first.is_visible()
        screenshot(page, "classify-deep-link")

        photo = tmp_path / "my chelsea.png"
        photo.write_bytes(images.sample_bytes("chelsea"))
        image_uploader(page).set_input_files(str(photo))
        wait_for_app(page, "Egyptian cat")
        chart = page.locator(".js-plotly-plot").first.inner_text()
        assert "Egyptian cat" in chart and "espresso" not in chart
        assert "image=h-" in page.url  # kept by content hash: a reload finds it
        screenshot(page, "classify-upload")

        bad = tmp_path / "notes.txt"
        bad.write_text("this is not an image")
        image_uploader(page).set_input_files(str(bad))
        wait_for_app(page, "previous image is kept")
        assert "Egyptian cat" in page.locator(".js-plotly-plot").first.inner_text()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "classify-bad-upload")


def test_home_page_and_navigation(server):
    with chromium_page() as page:
        page.goto(server)
        wait_for_app(page, "See inside an image classifier")
        assert sidebar_nav_labels(page) == NAV
        screenshot(page, "home")
        # the link itself: other pages' blurbs (the Lecture's) also say "classify"
        page.locator('[data-testid="stMain"]').get_by_role("link", name="Classify", exact=True).click()
        wait_for_app(page, "Top-5 classes")
        assert page.url.split("?")[0].endswith("/classify")
        assert "model=efficientnet_lite0" in page.url and "image=chelsea" in page.url


def test_saliency_page_runs_gradcam_and_occlusion(server):
    with chromium_page() as page:
        page.goto(f"{server}/saliency?image=coffee&methods=gradcam,occlusion")
        wait_for_app(page, "Faithfulness: deletion and insertion")
        page.get_by_text("Grad-CAM · espresso").first.wait_for()
        # The card's files are made when their button is pressed: the PNG and the manifest arrive whole.
        page.get_by_role("button", name="Files").first.click()
        with page.expect_download() as png:
            page.get_by_role("button", name="Overlay (PNG)").first.click()
        assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # A download reruns the page: let that rerun finish, and open the popover again if it closed,
        # before the next click (clicking during the rerun could hit a button being replaced).
        wait_for_app(page)
        manifest_button = page.get_by_role("button", name="Manifest (JSON)").first
        if not manifest_button.is_visible():
            page.get_by_role("button", name="Files").first.click()
        with page.expect_download() as manifest:
            manifest_button.click()
        record = json.loads(Path(manifest.value.path()).read_text())
        assert record["glassbox"] == "saliency" and record["method"] == "gradcam", record
        page.keyboard.press("Escape")
        page.locator("summary").filter(has_text="Settings of the slow methods").click()
        wait_for_app(page)
        page.get_by_role("button", name="Run the slow methods").click()
        # A reload mid-run finds the running scan by the link; only a finished occlusion card has
        # this text (the progress bar also names the method).
        assert reload_mid_run(page, "Probability vs occluder position", "A slow method: open")
        wait_for_app(page)
        assert page.get_by_text("Running…").count() == 0
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "saliency-gradcam-occlusion")
        page.get_by_role("button", name="Score the 2 maps shown").click()
        page.get_by_text("Deletion (lower AUC is better)").first.wait_for(timeout=120_000)
        wait_for_app(page)
        screenshot(page, "saliency-faithfulness")


def test_relabel_page_turns_the_cat_into_a_half_track(server):
    with chromium_page() as page:
        page.goto(f"{server}/relabel?image=chelsea&target=586")
        wait_for_app(page, "Turn this image into a:")
        page.get_by_role("button", name="Run", exact=True).click()
        reload_mid_run(page, "Relabelled to", "Press Run to start")
        assert page.get_by_text("relabelled · half track").count()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "relabel-half-track")


def test_inversion_page_paints_a_mask_and_runs(server):
    with chromium_page() as page:
        page.goto(f"{server}/inversion?image=chelsea&target=292")
        wait_for_app(page, "Change this image into a:")
        page.get_by_text("Paint it").click()
        canvas = page.locator("canvas.upper-canvas").first
        canvas.wait_for()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.3 * box["height"])
        page.mouse.down()
        for i in range(12):  # a zigzag over the cat's face
            page.mouse.move(box["x"] + (0.3 + 0.4 * (i % 2)) * box["width"], box["y"] + (0.3 + 0.035 * i) * box["height"],
                            steps=4)
        page.mouse.up()
        wait_for_app(page)
        steps = page.get_by_label("Steps")
        steps.fill("80")
        steps.press("Enter")
        wait_for_app(page)
        page.get_by_role("button", name="Run", exact=True).click()
        assert reload_mid_run(page, "After 80 steps", "Press Run to start")  # the painted mask comes back too
        assert page.get_by_text("Snapshots: step").count()
        assert not page.get_by_text("The mask is empty").count()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "inversion-painted-mask")


def test_dissection_page_runs_and_shows_a_clicked_unit(server):
    with chromium_page() as page:
        page.goto(f"{server}/dissection?image=chelsea")
        wait_for_app(page, "Concept images")
        page.get_by_role("button", name="Dissect", exact=True).click()
        assert reload_mid_run(page, "have IoU >", "Press Dissect to run", timeout_ms=240_000)
        screenshot(page, "dissection-histogram")
        heading = page.locator("h3").filter(has_text="IoU").first.inner_text()  # "Unit 581: dots (IoU 0.135)"
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        row = (box["x"] + 14, box["y"] + 35 * 3 + 18)  # the selection box of the third row (the grid is a canvas)
        page.mouse.move(*row)
        page.wait_for_timeout(300)
        page.mouse.click(*row)
        page.wait_for_function("h => !document.body.innerText.includes(h)", arg=heading, timeout=30_000)
        wait_for_app(page)
        assert not page.get_by_text("Traceback").count()
        page.get_by_text("Share of your image above the threshold").first.scroll_into_view_if_needed()
        screenshot(page, "dissection-unit")


def test_patterns_page_generates_from_the_shipped_generator_and_trains(server, tmp_path):
    with chromium_page() as page:
        page.goto(f"{server}/patterns?image=chelsea")
        wait_for_app(page, "Every class of this generator on this garment")
        assert not page.get_by_text("Traceback").count()
        for name in ("goldfish", "zebra", "flamingo", "jaguar", "giant panda", "tabby"):
            assert page.get_by_text(name, exact=True).count()
        click_and_wait(page, "Zebra on a tote bag", "Held-out garment (a shape the generator never trained on)")
        wait_for_app(page, "A network the generator never saw")
        screenshot(page, "patterns-generate")

        (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
        page.get_by_role("combobox", name="Generator", exact=True).click()
        page.get_by_role("option", name="Upload a checkpoint").click()
        wait_for_app(page, "Upload a checkpoint to generate")
        page.locator('[data-testid="stFileUploader"]').filter(has_text="checkpoint.pt of a run").locator(
            'input[type="file"]').set_input_files(str(tmp_path / "junk.pt"))
        wait_for_app(page, "junk.pt is not a pattern-generator checkpoint")

        page.goto(f"{server}/patterns?image=chelsea&mode=classic")
        wait_for_app(page, "cGAN on a garment")
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "patterns-fig2")

        page.goto(f"{server}/patterns?image=chelsea&mode=quality")
        wait_for_app(page, "Press Score")
        click_and_wait(page, "Score", "Report JSON", timeout_ms=240_000)
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "patterns-quality")

        page.goto(f"{server}/patterns?image=chelsea&model=tiny_test_cnn&mode=train")
        wait_for_app(page, "Start training")
        steps = page.get_by_label("Steps")
        steps.fill("60")
        steps.press("Enter")
        wait_for_app(page)
        click_and_wait(page, "Start training", "Stop saves a checkpoint", timeout_ms=60_000)
        assert reload_mid_run(page, "Samples at step 25", "Start training", stop_label="Stop")  # the live grid's caption
        screenshot(page, "patterns-training")
        page.get_by_text("checkpoint at step 60").first.wait_for(timeout=240_000)
        page.get_by_role("button", name="Resume", exact=True).wait_for(timeout=60_000)  # the job has ended
        wait_for_app(page)
        assert not page.get_by_role("button", name="Stop", exact=True).count()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "patterns-trained")


def test_minds_eye_page_explorer_table_and_effort(server):
    from engine.minds_eye import weights

    if not all((weights.WEIGHTS_DIR / f"{net}.pt").is_file() for net in weights.FILES) \
            and not weights.default_folder():
        pytest.skip("No Mind's Eye weights: ship them in assets/minds_eye/weights or set GLASSBOX_MINDS_EYE_WEIGHTS.")
    with chromium_page() as page:
        page.goto(f"{server}/minds_eye?ax=0.2&az=-0.1")
        wait_for_app(page, "Triple-staged verdict")
        page.locator(".js-plotly-plot").nth(2).wait_for()  # similarity and weight, once per object class
        assert sidebar_nav_labels(page) == NAV
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "minds-eye-explorer")

        page.goto(f"{server}/minds_eye?view=table&n=50")
        wait_for_app(page, "Test images per class")
        if page.get_by_role("button", name="Score the test set", exact=True).count():
            click_and_wait(page, "Score the test set", "fresh test images", timeout_ms=240_000)
        page.get_by_text("the paper (Table 1)").first.wait_for()  # the curve's legend
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "minds-eye-table1")

        page.get_by_role("radio", name="Effort (Fig. 4, 6)").click()  # the view switcher (a segmented control)
        wait_for_app(page, "A fresh sweep")
        assert "view=effort" in page.url
        assert page.get_by_text("The shipped sweep (Fig. 4)").count()
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "minds-eye-effort")


def test_anatomy_page_views(server, tmp_path):
    import zipfile

    with chromium_page() as page:
        page.goto(f"{server}/anatomy?view=filters")
        wait_for_app(page, "First layer:")
        assert sidebar_nav_labels(page) == NAV
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "anatomy-filters")

        page.goto(f"{server}/anatomy?view=activations")
        wait_for_app(page, "Strongest activation")
        first = page.get_by_text("over chelsea (bright = strong)").first.inner_text()
        page.locator(".js-plotly-plot .scatterlayer .point").nth(5).click(force=True)  # a tile of the grid
        page.wait_for_function("(before) => !document.body.innerText.includes(before)", arg=first, timeout=60_000)
        wait_for_app(page, "over chelsea (bright = strong)")
        screenshot(page, "anatomy-activations")

        page.goto(f"{server}/anatomy?view=patches&set=bundled")
        wait_for_app(page, "Image set:")
        assert page.get_by_text("20 photos").count()  # the set's size, on screen
        click_and_wait(page, "Find top patches", "receptive field at its peak", timeout_ms=240_000)
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "anatomy-patches")

        page.goto(f"{server}/anatomy?view=neighbours")  # the default set: crops of the bundled photos
        wait_for_app(page, "Image set:")
        assert page.get_by_text("500 crops").count()
        click_and_wait(page, "Find neighbours", "By raw pixels", timeout_ms=240_000)
        assert page.get_by_text("chelsea crop").count()  # crops of the same photo are its feature neighbours
        screenshot(page, "anatomy-neighbours")

        page.goto(f"{server}/anatomy?view=tour&set=bundled")
        wait_for_app(page, "Image set:")
        click_and_wait(page, "Take the tour", "receptive field grows", timeout_ms=300_000)
        screenshot(page, "anatomy-tour")

        page.goto(f"{server}/anatomy?view=back")
        wait_for_app(page, "Deconvnet (Zeiler & Fergus)")
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "anatomy-back")

        archive = tmp_path / "my photos.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for name in ("coffee", "rocket", "astronaut", "chelsea", "motorcycle", "camera"):
                if name in images.list_samples():
                    zipped.writestr(f"photos/{name}.png", images.sample_bytes(name))
            zipped.writestr("photos/notes.txt", "not an image")
        page.goto(f"{server}/anatomy?view=embedding&set=zip&method=pca")
        wait_for_app(page, "ZIP of images")
        page.locator('[data-testid="stFileUploader"]').filter(has_text="ZIP of images").locator(
            'input[type="file"]').set_input_files(str(archive))
        wait_for_app(page, "from my photos.zip")
        assert page.get_by_text("1 file skipped").count()
        click_and_wait(page, "Embed", "click a point", timeout_ms=240_000)
        screenshot(page, "anatomy-embedding")
        page.locator(".js-plotly-plot .scatterlayer .point").first.click(force=True)
        page.locator('[data-testid="stSidebar"]').get_by_text("Showing").first.wait_for(timeout=60_000)
        wait_for_app(page)
        assert "photos/" in page.locator('[data-testid="stSidebar"]').inner_text()  # the member is now the image
        assert not page.get_by_text("Traceback").count()
        screenshot(page, "anatomy-embedding-clicked")


def test_attacks_lab_views(server, tmp_path):
    """Every view of the Attacks lab on lite0 over three photos (small settings, so each job takes seconds)."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(np.asarray(images.load_sample(name))[:300, :300]).resize((128, 128)).save(folder / f"{name}.png")
    photos = f"set=folder&set_folder={folder}"
    views = [  # (link, text once drawn, button, text of the result, screenshot)
        (f"view=universal&train=folder&train_folder={folder}&passes=1", "Held-out set:", "Compute the perturbation",
         "the perturbation, stretched", "universal"),
        (f"view=transfer&models=efficientnet_lite0,efficientnet_lite1&kind=per-image&strength=2&{photos}",
         "Measured on:", "Build the table", "The diagonal is the white-box rate", "transfer"),
        (f"view=curves&methods=fgsm,bim&eps=2,4&{photos}", "stands in for", "Run the comparison", "Curves (JSON)",
         "curves"),
        ("view=minimal", "Run all three", "Run all three", "‖r‖₂ =", "minimal"),
        (f"view=effort&models=efficientnet_lite0&steps=20&{photos}", "Image set:", "Push every image",
         "ImageNet models on this set", "effort"),
        ("view=blackbox&epochs=2", "top-1 label", "Run the black-box attack", "Oracle queries", "blackbox"),
        (f"view=defences&transform=bits:3&{photos}", "Image set:", "Attack the defence", "The transform alone keeps",
         "defences"),
    ]
    with chromium_page() as page:
        for link, drawn, button, result, name in views:
            page.goto(f"{server}/attacks_lab?{link}")
            wait_for_app(page, drawn)
            assert sidebar_nav_labels(page) == NAV
            click_and_wait(page, button, result, timeout_ms=300_000)
            if name == "minimal":  # three jobs; L-BFGS's search over c ends last
                page.get_by_text("([0, 1] units)").nth(2).wait_for(timeout=300_000)
                wait_for_app(page)
            assert not page.get_by_text("Traceback").count()
            screenshot(page, f"attacks-lab-{name}")
