"""Beyond one machine (issue 13): set features and Network Dissection sharded over two gloo ranks
equal a single-process run exactly -- thresholds, IoU counts, top images, every feature row."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from engine import dissection, distributed, imagesets, models
from engine.concepts import Concept, Sample

LAYER = "features.3"
CONFIG = dissection.DissectionConfig(quantile=0.02, batch_size=4, top_k=3)  # 23 images: 12 + 11 per rank




class SmallConcepts:
    """Deterministic random pictures and masks, rebuilt identically in every process."""

    def __init__(self, n: int = 23, size: int = 64, mask_size: int = 32, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.name, self.key, self.mask_size = f"small-{n}", f"small-{n}-{seed}", mask_size
        self.concepts = tuple(Concept(i, name, category) for i, (name, category) in enumerate(
            [("red", "colour"), ("blue", "colour"), ("dots", "texture")]))
        self.samples = []
        for _ in range(n):
            ids = np.sort(rng.choice(3, rng.integers(0, 4), replace=False)).astype(np.int64)
            masks = rng.random((len(ids), mask_size, mask_size)) < 0.3
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image[rng.random((size, size)) < 0.3] = 0  # flat patches: some maxima tie, testing the tie-break
            self.samples.append(Sample(image, ids, masks, ("colour", "texture")))

    def __len__(self):
        return len(self.samples)

    def batches(self, batch_size, start=0, stop=None):
        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            chunk = self.samples[first:min(stop, first + batch_size)]
            yield np.stack([s.image for s in chunk]), chunk


def run_both(handle, imageset, *, use_cache):
    features = imagesets.set_features_many(handle, imageset, [LAYER, imagesets.PENULTIMATE], batch_size=3,
                                           use_cache=use_cache)
    result = dissection.dissect(handle, SmallConcepts(), LAYER, CONFIG, use_cache=use_cache)
    arrays = {f"{name}:{field}": getattr(f, field) for name, f in features.items()
              for field in ("values", "argmax", "means", "predicted", "confidence") if getattr(f, field) is not None}
    arrays.update({f"dissect:{field}": getattr(result, field)
                   for field in ("thresholds", "iou", "intersections", "unions", "top_images", "top_values")})
    return arrays


def worker(rank: int, port: int, set_key: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == 2
    try:
        assert distributed.shard_range(23, 4) == ((0, 12), (12, 23))[rank]
        arrays = run_both(models.load_model(models.TEST_MODEL), imagesets.cached_set(set_key), use_cache=True)
        np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(tiny, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(3)
    for i in range(13):  # batch 3: 5 batches, 2 on rank 0 and 3 on rank 1
        Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(pictures / f"{i:02d}.png")
    imageset = imagesets.folder_set(pictures, size=56)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each rank, so every kernel sums in the same order
    try:
        expected = run_both(tiny, imageset, use_cache=False)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(worker, args=(free_port(), imageset.key, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as got:
            assert set(got.files) == set(expected)
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"rank {rank}: {name}")
    # rank 0 wrote the caches; a later single process reads the same numbers back
    assert dissection.cached_result(tiny, SmallConcepts(), LAYER, CONFIG) is not None
    cached = imagesets.set_features(tiny, imageset, LAYER, batch_size=3)
    np.testing.assert_array_equal(cached.values, expected[f"{LAYER}:values"])


@pytest.mark.parametrize("count,batch,world", [(23, 4, 2), (5, 4, 3), (100, 7, 4), (1, 1, 2)])
def test_shards_are_whole_batches_covering_the_set(count, batch, world):
    ranges = [distributed.shard_range(count, batch, rank_=r, world=world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % batch == 0 or start == count for start, _ in ranges)
