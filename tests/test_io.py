"""engine.io: atomic writes, the cache root, manifests and the one fuzzy name lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import images, io
from engine.errors import ConfigError


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "deep" / "result.bin"
    io.write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as temporary:
            temporary.write_bytes(b"half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"  # a failed write leaves the old file
    assert [p.name for p in target.parent.iterdir()] == ["result.bin"]  # and no temporary behind
    io.write_json_atomic(target, {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1, 2]}


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path))
    assert io.cache_root() == tmp_path
    monkeypatch.setenv("GLASSBOX_CACHE", "  ")
    assert io.cache_root().parts[-2:] == (".cache", "glassbox")


def test_manifest_has_one_shape():
    record = io.manifest("relabel", model="m", steps=3)
    assert record["glassbox"] == "relabel" and record["manifest_version"] == io.MANIFEST_VERSION
    assert record["model"] == "m" and "created" in record
    assert json.loads(io.manifest_json({**record, "p": np.float64(0.25)}))["p"] == 0.25


def test_find_name_exact_folded_prefix_substring_and_hints():
    names = ["stripes horizontal", "stripes vertical", "dots", "Egyptian cat"]
    assert io.find_name("dots", names, what="concept", error=ConfigError) == 2
    assert io.find_name(" egyptian CAT ", names, what="class", error=ConfigError) == 3
    assert io.find_name("stripes h", names, what="concept", error=ConfigError, prefix=True) == 0
    assert io.find_name("gyptian", names, what="class", error=ConfigError, substring=True) == 3
    with pytest.raises(ConfigError, match=r"^The name 'stripes' matches several concepts"):
        io.find_name("stripes", names, what="concept", error=ConfigError, prefix=True)
    with pytest.raises(ConfigError, match=r"several classes"):
        io.find_name("s", ["glass", "grass"], what="class", error=ConfigError, substring=True)
    with pytest.raises(ConfigError, match=r"no concept called 'dost'\. Did you mean dots\?"):
        io.find_name("dost", names, what="concept", error=ConfigError)


@pytest.mark.parametrize("value_range", [images.UNIT, images.SIGNED])
def test_uint8_round_trip_in_both_value_ranges(value_range):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = images.to_tensor(pixels, value_range=value_range)
    low, high = value_range
    assert float(x.min()) >= low and float(x.max()) <= high
    assert np.array_equal(images.to_uint8(x, value_range=value_range), pixels)
    if value_range == images.SIGNED:  # the tanh range: -1 is black, 1 is white
        assert images.to_uint8(torch.full((3, 1, 1), -1.0), value_range=value_range).max() == 0
        assert images.to_uint8(torch.full((3, 1, 1), 1.0), value_range=value_range).min() == 255


def test_atomic_writes_leave_ordinary_file_permissions(tmp_path):
    path = io.write_text_atomic(tmp_path / "a.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o644


def test_difference_image_is_mid_grey_where_nothing_changed_and_scales_with_gain():
    original = np.full((2, 2, 3), 100, np.uint8)
    changed = original.copy()
    changed[0, 0] = (101, 99, 200)
    picture = images.difference_image(changed, original, gain=10)
    assert picture.dtype == np.uint8 and (picture[1, 1] == 128).all()
    assert picture[0, 0].tolist() == [138, 118, 255]  # +10, -10, clipped
    from engine import relabel
    from engine.patterns import generate

    assert relabel.difference_image is images.difference_image
    assert np.array_equal(generate.change_picture(changed, original), images.difference_image(changed, original, gain=3))
