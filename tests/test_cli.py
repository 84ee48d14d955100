"""The CLI: `python -m engine classify` on real photos, JSON output, errors as sentences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine import images

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin"})


def test_classify_sample_and_file_as_json(tmp_path):
    photo = tmp_path / "coffee.png"
    photo.write_bytes(images.sample_bytes("coffee"))
    result = run_cli("classify", str(photo), "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["labels"][0] in ("espresso", "cup") and len(payload["labels"]) == 3
    assert payload["probs"] == sorted(payload["probs"], reverse=True) and 0 < payload["probs"][-1] < 1
    table = run_cli("classify", "chelsea")
    assert table.returncode == 0 and "Egyptian cat" in table.stdout and "CPU" in table.stdout


def test_cli_errors_are_sentences(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    bad = run_cli("classify", str(text))
    assert bad.returncode == 2 and "not an image" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("classify", "chelsea", "--model", "nope")
    assert missing.returncode == 2 and "no model called 'nope'" in missing.stderr
    nowhere = run_cli("classify", str(tmp_path / "absent.jpg"))
    assert nowhere.returncode == 2 and "neither a file nor a sample" in nowhere.stderr


def test_saliency_writes_overlay_map_and_manifest(tmp_path):
    import numpy as np
    from PIL import Image

    result = run_cli("saliency", "coffee", "--method", "gradcam", "--class", "cup", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    stem = tmp_path / "coffee_gradcam_968-cup"
    saliency_map = np.load(f"{stem}.npy")
    assert saliency_map.shape == (224, 224) and saliency_map.min() >= 0 and saliency_map.max() > 0
    assert Image.open(f"{stem}.png").size == (224, 224)
    manifest = json.loads(Path(f"{stem}.json").read_text())
    assert manifest["class"] == {"id": 968, "name": "cup"} and manifest["layer"] == "_bn1"
    assert manifest["model"]["name"] == "efficientnet_lite0" and "torch" in manifest["versions"]
    bad = run_cli("saliency", "coffee", "--method", "gradcam", "--layer", "_fc", "--out", str(tmp_path))
    assert bad.returncode == 2 and "no spatial output" in bad.stderr


def test_relabel_writes_a_png_that_classifies_as_the_target(tmp_path):
    from PIL import Image

    from engine import classify, models

    result = run_cli("relabel", "chelsea", "--target", "half track", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "chelsea_relabel_manifest.json").read_text())
    assert manifest["final_top1"]["name"] == "half track" and manifest["distortion_eq3"] <= 0.01
    steps = json.loads((tmp_path / "chelsea_relabel_steps.json").read_text())
    assert steps["outcome"] == "relabelled" and len(steps["distortion"]) == steps["steps"] + 1
    handle = models.load_model()
    reloaded = Image.open(tmp_path / "chelsea_relabel.png").convert("RGB")
    assert classify.classify_image(handle, reloaded, top_k=1).labels[0] == "half track"
    missing = run_cli("relabel", "chelsea", "--out", str(tmp_path))
    assert missing.returncode == 2 and "needs a --target" in missing.stderr
    assert manifest["method"] == "relabel" and manifest["manifest_version"] == 1  # attacks.manifest, as the page's
    assert manifest["image_sha256"] == images.image_digest(images.sample_bytes("chelsea"))
    pgd = run_cli("relabel", "chelsea", "--method", "pgd", "--epsilon", "2", "--out", str(tmp_path))
    assert pgd.returncode == 0 and (tmp_path / "chelsea_pgd.png").exists()
    pgd_manifest = json.loads((tmp_path / "chelsea_pgd_manifest.json").read_text())
    assert pgd_manifest["target"] is None and pgd_manifest["quality"]["linf_levels"] <= 2
    assert pgd_manifest["config"]["epsilon"] == 2 and pgd_manifest["steps"] == 10
    assert len(json.loads((tmp_path / "chelsea_pgd_steps.json").read_text())["distortion"]) == 11
    unknown = run_cli("relabel", "chelsea", "--method", "carliniwagner", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_invert_writes_image_snapshots_loss_log_and_manifest(tmp_path):
    from PIL import Image

    mask = tmp_path / "face.png"
    pixels = np.zeros((100, 100), np.uint8)
    pixels[20:80, 25:75] = 255
    Image.fromarray(pixels).save(mask)
    result = run_cli("invert", "chelsea", "--target", "tiger", "--weights", "1e-10,1e-7,1e-9,1e-8", "--mask", str(mask),
                     "--steps", "12", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    manifest = json.loads((out / "chelsea_tiger_manifest.json").read_text())
    assert manifest["target"] == {"id": 292, "name": "tiger"} and manifest["steps"] == 12
    assert manifest["mask_pixels"] == 134 * 112  # 60 % x 50 % of 224 x 224
    log = (out / "chelsea_tiger_losses.csv").read_text().splitlines()
    assert log[0].startswith("step,total,classification,content,style,tv,colour") and len(log) == 14
    totals = [float(line.split(",")[1]) for line in log[1:]]
    assert totals[-1] < totals[0]
    snapshots = sorted(out.glob("chelsea_tiger_step*.png"))
    assert len(snapshots) == 8 and snapshots[0].name == "chelsea_tiger_step0000.png"
    final = np.asarray(Image.open(out / "chelsea_tiger.png"))
    original = np.asarray(Image.open(snapshots[0]))
    assert final.shape == (224, 224, 3) and np.array_equal(final[:30], original[:30])  # above the mask: untouched
    bad = run_cli("invert", "chelsea", "--target", "tiger", "--optimizer", "lbfgs", "--jitter", "16", "--out", str(out))
    assert bad.returncode == 2 and "L-BFGS cannot take jitter" in bad.stderr


def test_dissect_writes_csv_and_html(tmp_path):
    env = {"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "GLASSBOX_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "engine", "dissect", "--model", "tiny_test_cnn", "--layer", "features.5",
                             "--n", "120", "--size", "64", "--quantile", "0.02", "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "units of features.5 have IoU > 0.04" in result.stdout
    csv = (tmp_path / "out" / "dissection_tiny_test_cnn_features.5.csv").read_text().splitlines()
    assert csv[0] == "unit,concept,category,iou,detector,threshold" and len(csv) == 17
    html = (tmp_path / "out" / "dissection_tiny_test_cnn_features.5.html").read_text()
    assert "<table>" in html and "Detector units per concept" in html and "<script" not in html
    missing = subprocess.run([sys.executable, "-m", "engine", "dissect", "--model", "tiny_test_cnn", "--concepts",
                              str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 2 and "There is no folder at" in missing.stderr


def test_patterns_train_writes_checkpoint_samples_and_log_and_resumes(tmp_path):
    env = {"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "GLASSBOX_TEST_MODELS": "1"}
    args = [sys.executable, "-m", "engine", "patterns", "train", "--model", "tiny_test_cnn", "--classes", "1", "3",
            "--size", "32", "--sample-every", "2", "--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    first = subprocess.run(args + ["--steps", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert json.loads((run / "config.json").read_text())["class_names"] == ["class 1", "class 3"]
    no_model = [a for a in args if a not in ("--model", "tiny_test_cnn")]  # resume takes the checkpoint's model
    again = subprocess.run(no_model + ["--steps", "6", "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0, again.stderr
    steps = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 5, one header
    wrong = subprocess.run(args[:-2] + ["--out", str(run), "--steps", "8", "--resume", "--size", "64"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=env)
    assert wrong.returncode == 2 and "trained on classes" in wrong.stderr


def test_methods_json_lists_both_registries():
    from engine import attacks, saliency

    result = run_cli("methods", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(listing) == {"saliency", "attacks"}
    assert [entry["key"] for entry in listing["saliency"]] == list(saliency.METHODS)
    assert [entry["key"] for entry in listing["attacks"]] == list(attacks.ATTACKS)
    for entry in listing["saliency"] + listing["attacks"]:
        assert entry["label"] and isinstance(entry["fields"], list)
        for field in entry["fields"]:
            assert set(field) >= {"name", "type", "default"}
    pgd = next(entry for entry in listing["attacks"] if entry["key"] == "pgd")
    assert {field["name"] for field in pgd["fields"]} >= {"epsilon"}
    occlusion = next(entry for entry in listing["saliency"] if entry["key"] == "occlusion")
    assert occlusion["covers_every_class"] is True
    text = run_cli("methods")
    assert text.returncode == 0 and "gradcam" in text.stdout and "relabel" in text.stdout


def test_invert_runs_a_hole_filling_preset_that_changes_only_the_hole(tmp_path):
    from PIL import Image

    from engine import classify, inversion, models

    result = run_cli("invert", "chelsea", "--preset", "hole-tiger", "--steps", "3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    handle = models.load_model()
    photo = images.to_uint8(classify.image_tensor(handle, images.load_sample("chelsea")))
    hole = inversion.preset_mask(inversion.PRESETS["hole-tiger"], handle.input_size) > 0
    final = np.asarray(Image.open(tmp_path / "chelsea_tiger.png"))
    assert np.array_equal(final[~hole], photo[~hole])  # outside the hole: the photo, bit for bit
    assert not np.array_equal(final[hole], photo[hole])  # the hole was erased and refilled
