"""`python -m engine anatomy`: the issue's CLI contract (JSON a script reads), on the tiny model and a
folder of real photos, and its bad input as sentences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import images

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "GLASSBOX_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([sys.executable, "-m", "engine", "anatomy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_photos")
    for i, name in enumerate(images.list_samples()[:5] * 2):
        picture = np.asarray(images.load_sample(name))
        Image.fromarray(picture[i * 8:i * 8 + 180, i * 6:i * 6 + 180]).save(folder / f"{i:02d}_{name}.png")
    return folder


def test_filters_writes_a_grid_and_the_shape(tmp_path):
    result = run_cli("filters", "--model", "tiny_test_cnn", "--out", str(tmp_path / "out"), cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["layer"] == "features.0" and record["shape"] == [8, 3, 3, 3]
    grid = np.asarray(Image.open(record["png"]))
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert json.loads((tmp_path / "out" / "filters_tiny_test_cnn.json").read_text())["shape"] == [8, 3, 3, 3]


def test_neighbours_and_embed_print_the_contract(tmp_path, photos):
    cache = tmp_path / "c"
    result = run_cli("neighbours", str(photos / "00_" f"{images.list_samples()[0]}.png"), "--set", str(photos),
                     "--k", "3", "--json", "--model", "tiny_test_cnn", cache=cache)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) == {"features", "pixels"}
    for rows in record.values():
        assert len(rows) == 3 and all(set(row) == {"path", "distance"} for row in rows)
        assert [row["distance"] for row in rows] == sorted(row["distance"] for row in rows)
    # The query is itself in the set: that copy is left out, so the lists show other images.
    query = f"00_{images.list_samples()[0]}.png"
    assert all(row["path"] != query for rows in record.values() for row in rows)
    assert record["pixels"][0]["distance"] > 0

    for method in ("pca", "tsne"):
        result = run_cli("embed", "--set", str(photos), "--method", method, "--json", "--model", "tiny_test_cnn",
                         cache=cache)
        assert result.returncode == 0, result.stderr
        points = json.loads(result.stdout)["points"]
        assert len(points) == 10 and all(set(p) == {"path", "x", "y", "predicted"} for p in points)
        assert len({p["path"] for p in points}) == 10


def test_the_page_downloads_the_cli_records():
    """The page's CSV of points and the CLI's JSON come from one builder."""
    import csv
    import io as text_io
    from types import SimpleNamespace

    from engine import anatomy_cli

    embedding = SimpleNamespace(points=np.array([[0.5, -1.25], [2.0, 3.0]], np.float32))
    points = anatomy_cli.embedding_points(embedding, ["a.png", "b, c.png"], ["tabby", "tiger cat"], [0.9, 0.25])
    assert points[1] == {"path": "b, c.png", "x": 2.0, "y": 3.0, "predicted": "tiger cat", "confidence": 0.25}
    rows = list(csv.DictReader(text_io.StringIO(anatomy_cli.embedding_csv(points))))
    assert [r["path"] for r in rows] == ["a.png", "b, c.png"] and float(rows[0]["y"]) == -1.25


def test_patches_writes_crops_cut_to_the_field(tmp_path, photos):
    result = run_cli("patches", "--layer", "features.3", "--unit", "2", "--set", str(photos), "--k", "4",
                     "--out", str(tmp_path / "out"), "--model", "tiny_test_cnn", cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["patches"]) == 4 and Path(record["png"]).is_file()
    values = [p["value"] for p in record["patches"]]
    assert values == sorted(values, reverse=True)


def test_bad_input_is_a_sentence(tmp_path, photos):
    cache = tmp_path / "c"
    few = run_cli("patches", "--layer", "features.3", "--unit", "0", "--set", str(photos), "--k", "50",
                  "--out", str(tmp_path / "o"), "--model", "tiny_test_cnn", cache=cache)
    assert few.returncode == 2 and "10" in few.stderr and "Traceback" not in few.stderr
    missing = run_cli("embed", "--set", str(tmp_path / "nowhere"), "--model", "tiny_test_cnn", cache=cache)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    flat = run_cli("patches", "--layer", "fc", "--unit", "0", "--set", str(photos), "--out", str(tmp_path / "o"),
                   "--model", "tiny_test_cnn", cache=cache)
    assert flat.returncode == 2 and "spatial" in flat.stderr and "Traceback" not in flat.stderr


def test_features_under_torchrun_equal_one_process(tmp_path, photos):
    """The issue's "beyond one machine": two ranks (gloo) shard the set; what rank 0 caches equals a
    one-process run exactly."""
    from engine import imagesets, models

    cache = tmp_path / "c"
    env = {"GLASSBOX_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "GLASSBOX_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "HOME": os.environ.get("HOME", "/root"), "TMPDIR": str(tmp_path)}  # torchrun's scratch dies with the test
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), "-m", "engine", "anatomy", "features",
                             "--set", str(photos), "--layer", "features.3", "--layer", "penultimate",
                             "--model", "tiny_test_cnn"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    old = os.environ.get("GLASSBOX_CACHE")
    os.environ["GLASSBOX_CACHE"] = str(cache)
    try:
        handle = models.load_model("tiny_test_cnn")
        imageset = imagesets.open_set(str(photos), size=handle.input_size)
        for layer in ("features.3", "penultimate"):
            assert (imagesets.features_dir() / f"{imagesets.features_key(handle, layer, imageset)}.npz").is_file()
            sharded = imagesets.set_features(handle, imageset, layer, batch_size=4)  # read from rank 0's cache
            alone = imagesets.set_features(handle, imageset, layer, use_cache=False)
            assert sharded.count == 10
            for field in ("values", "argmax", "means", "predicted", "confidence"):
                a, b = getattr(sharded, field), getattr(alone, field)
                assert (a is None and b is None) or np.array_equal(a, b), field
    finally:
        if old is None:
            os.environ.pop("GLASSBOX_CACHE", None)
        else:
            os.environ["GLASSBOX_CACHE"] = old


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
