"""Image sets and set features (issue 13): ZIP uploads with bad members, folders, bundled photos,
features against a brute-force per-image loop, the disk cache, batch-size independence."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import hooks, imagesets
from engine.errors import ConfigError, DatasetError
from engine.images import to_tensor


def picture_bytes(seed: int, size=(40, 30), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def bomb_header(width=100_000, height=100_000) -> bytes:
    """A PNG whose header claims 10 gigapixels (no pixel data): refused before any allocation."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_keeps_good_members_and_lists_the_bad():
    data = make_zip({
        "a.png": picture_bytes(0),
        "nested/deeper/b.jpg": picture_bytes(1, (64, 48), "JPEG"),
        "notes.txt": b"these are my holiday photos",
        "truncated.png": picture_bytes(2, (64, 64))[:300],
        "empty.png": b"",
        "bomb.png": bomb_header(),
        "__MACOSX/._a.png": b"\x00\x05\x16\x07 resource fork",  # metadata, ignored
    })
    found = imagesets.zip_set(data, "holiday.zip", size=32)
    assert found.labels == ("a.png", "nested/deeper/b.jpg") and len(found) == 2
    reasons = dict(found.skipped)
    assert set(reasons) == {"bomb.png", "empty.png", "notes.txt", "truncated.png"}
    assert "pixels" in reasons["bomb.png"] and "empty" in reasons["empty.png"]
    assert all(reason.endswith(".") and len(reason) > 20 for reason in reasons.values())
    assert found.image(1).shape == (32, 32, 3) and found.image(1).dtype == np.uint8
    assert "2 images" in found.describe() and "4 files skipped" in found.describe()
    # The decoded set is on disk: another process reopens it by key, and it pickles without pixels.
    again = imagesets.cached_set(found.key)
    assert again.labels == found.labels and again.skipped == found.skipped
    np.testing.assert_array_equal(again.image(0), found.image(0))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(found)).image(1), found.image(1))
    assert imagesets.open_set(found.key).key == found.key


def test_zip_without_images_says_so():
    with pytest.raises(DatasetError, match="holds no image"):
        imagesets.zip_set(make_zip({"a.txt": b"hello", "b.csv": b"1,2"}), "notes.zip")
    with pytest.raises(DatasetError, match="empty"):
        imagesets.zip_set(make_zip({}), "nothing.zip")
    with pytest.raises(DatasetError, match="not a ZIP"):
        imagesets.zip_set(b"PK not really", "fake.zip")


def test_zip_over_the_limits_names_the_limit(monkeypatch):
    data = make_zip({f"{i}.png": picture_bytes(i) for i in range(3)})
    monkeypatch.setattr(imagesets, "MAX_ZIP_MEMBERS", 2)
    with pytest.raises(DatasetError, match="at most 2 files"):
        imagesets.zip_set(data, "three.zip")
    monkeypatch.setattr(imagesets, "MAX_ZIP_MEMBERS", 100)
    monkeypatch.setattr(imagesets, "MAX_ZIP_BYTES", 1024)
    with pytest.raises(DatasetError, match="at most 1 kB"):
        imagesets.zip_set(data, "big.zip")
    monkeypatch.setattr(imagesets, "MAX_ZIP_BYTES", 10 << 20)
    monkeypatch.setattr(imagesets, "MAX_ZIP_UNPACKED", 100)
    with pytest.raises(DatasetError, match="unpack to at most"):
        imagesets.zip_set(data, "bomb.zip")


def test_folder_set_is_recursive_and_skips_bad_files(tmp_path):
    (tmp_path / "cats" / "small").mkdir(parents=True)
    (tmp_path / "cats" / "one.png").write_bytes(picture_bytes(3))
    (tmp_path / "cats" / "small" / "two.jpg").write_bytes(picture_bytes(4, fmt="JPEG"))
    (tmp_path / "three.png").write_bytes(picture_bytes(5))
    (tmp_path / "readme.md").write_text("not a picture")
    (tmp_path / ".hidden.png").write_bytes(picture_bytes(6))
    found = imagesets.folder_set(tmp_path, size=48)
    assert found.labels == ("cats/one.png", "cats/small/two.jpg", "three.png")
    assert [name for name, _ in found.skipped] == ["readme.md"]
    assert found.source == "folder" and found.image(2).shape == (48, 48, 3)
    assert imagesets.open_set(str(tmp_path), size=48).key == found.key
    (tmp_path / "four.png").write_bytes(picture_bytes(7))  # a new file: a new set
    assert len(imagesets.folder_set(tmp_path, size=48)) == 4
    with pytest.raises(DatasetError):
        imagesets.open_set(str(tmp_path / "absent"))


def test_bundled_photos_are_real_photos_with_credits():
    found = imagesets.bundled_photos(size=64)
    assert len(found) >= 8 and {"chelsea", "astronaut", "coffee"} <= set(found.labels)
    assert "scikit-image" in found.credits and "CREDITS.md" in found.credits
    assert "not ImageNet" in found.describe() and f"{len(found)} photos" in found.describe()
    pictures = np.concatenate([b for b, _ in found.batches(7)])
    assert pictures.shape == (len(found), 64, 64, 3) and pictures.std() > 10
    assert imagesets.open_set("bundled", size=64).key == found.key


def random_set(tmp_path, n=11, size=48):
    for i in range(n):
        (tmp_path / f"{i:02d}.png").write_bytes(picture_bytes(100 + i, (50 + i, 60)))
    return imagesets.folder_set(tmp_path, size=size)


def brute_force(handle, imageset, layer):
    """Image by image: to_tensor, resize to the model's size, a plain forward with hooks."""
    linear = handle.module(imagesets.last_linear(handle))
    rows = []
    for index in range(len(imageset)):
        x = F.interpolate(to_tensor(imageset.image(index)), size=(handle.input_size,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)
        taken = {}
        remove = linear.register_forward_pre_hook(lambda m, args: taken.setdefault("vector", args[0]))
        try:
            with torch.no_grad(), hooks.capture(handle, [layer]) as captured:
                logits = handle.logits(x)
        finally:
            remove.remove()
        rows.append((captured[layer][0].flatten(1), taken["vector"][0], logits[0].softmax(0)))
    return rows


def test_features_equal_a_per_image_loop(tiny, tmp_path):
    imageset = random_set(tmp_path)
    got = imagesets.set_features_many(tiny, imageset, ["features.3", imagesets.PENULTIMATE], batch_size=4)
    spatial, vector = got["features.3"], got[imagesets.PENULTIMATE]
    assert spatial.kind == "spatial" and (spatial.height, spatial.width) == (32, 32)
    assert vector.kind == "vector" and vector.argmax is None and vector.values.shape == (len(imageset), 16)
    for index, (maps, penultimate, probabilities) in enumerate(brute_force(tiny, imageset, "features.3")):
        np.testing.assert_allclose(spatial.values[index], maps.max(1).values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(spatial.means[index], maps.mean(1), rtol=1e-5, atol=1e-6)
        # the reported position holds the maximum (ties between positions may pick either)
        at = maps.gather(1, torch.from_numpy(spatial.argmax[index]).long()[:, None])[:, 0]
        np.testing.assert_allclose(at, maps.max(1).values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vector.values[index], penultimate, rtol=1e-5, atol=1e-6)
        assert spatial.predicted[index] == int(probabilities.argmax())
        np.testing.assert_allclose(spatial.confidence[index], probabilities.max(), rtol=1e-5)
    np.testing.assert_array_equal(vector.predicted, spatial.predicted)
    assert hooks.count_hooks(tiny.model) == 0


def test_features_are_cached_and_batch_size_free(tiny, tmp_path):
    imageset = random_set(tmp_path, n=9)
    first = imagesets.set_features(tiny, imageset, "features.5", batch_size=2)
    path = imagesets.features_dir() / f"{imagesets.features_key(tiny, 'features.5', imageset)}.npz"
    assert path.is_file()
    messages = []
    again = imagesets.set_features(tiny, imageset, "features.5", batch_size=2, progress=lambda f, m: messages.append(m))
    assert "cache" in messages[-1]
    fresh = imagesets.set_features(tiny, imageset, "features.5", batch_size=9, use_cache=False)
    for other in (again, fresh):
        for field in ("values", "argmax", "means", "predicted", "confidence"):
            np.testing.assert_array_equal(getattr(other, field), getattr(first, field))
    assert first.count == 9 and first.set_key == imageset.key and first.model == tiny.name


def test_features_reject_bad_layers(tiny, tmp_path):
    imageset = random_set(tmp_path, n=2)
    with pytest.raises(ConfigError, match="no spatial output"):
        imagesets.set_features(tiny, imageset, "fc")
    with pytest.raises(ConfigError):
        imagesets.set_features(tiny, imageset, "features.3", batch_size=0)


def test_pixel_vectors_are_shrunk_pictures(tmp_path):
    imageset = random_set(tmp_path, n=3)
    vectors = imagesets.pixel_vectors(imageset, side=8)
    assert vectors.shape == (3, 8 * 8 * 3) and vectors.dtype == np.uint8
    expected = np.asarray(Image.fromarray(imageset.image(2)).resize((8, 8), Image.Resampling.BOX)).reshape(-1)
    np.testing.assert_array_equal(vectors[2], expected)
    np.testing.assert_array_equal(imagesets.pixel_vectors(imageset, side=8), vectors)  # from the cache


def test_photo_crops_are_deterministic_crops_of_the_photos():
    crops = imagesets.photo_crops(12, size=64, seed=3)
    again = imagesets.photo_crops(12, size=64, seed=3)
    other = imagesets.photo_crops(12, size=64, seed=4)
    assert len(crops) == 12 and crops.key == again.key != other.key
    assert crops.labels[0].endswith("crop 0") and "crops" in crops.describe()
    first = np.concatenate([b for b, _ in crops.batches(5)])
    assert np.array_equal(first, np.concatenate([b for b, _ in again.batches(12)]))
    assert not np.array_equal(first, np.concatenate([b for b, _ in other.batches(12)]))
    assert first.std() > 10 and first.shape == (12, 64, 64, 3)
    photos = imagesets.bundled_photos(size=64)
    assert crops.labels[0].split(" crop ")[0] in photos.labels


def test_image_features_equal_the_sets(tiny, tmp_path):
    found = random_set(tmp_path, n=5, size=64)
    vectors = imagesets.set_features(tiny, found, imagesets.PENULTIMATE, use_cache=False).values
    for index in range(len(found)):
        np.testing.assert_array_equal(imagesets.image_features(tiny, found.image(index)), vectors[index])
