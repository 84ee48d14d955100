"""Set features benchmark (issue 13): features per (model, layer, set) against the model's plain
batched forward over the same images, pre-decoded, in the same run.

    python bench/bench_imagesets.py [--quick] [--markdown] [--images N]

efficientnet_lite0, CPU, torch's default threads, the engine's allocator tuning on (importing
``engine`` sets it). The set is a ZIP of N crops of the bundled photos (224 px JPEGs), decoded and
cached by :func:`engine.imagesets.zip_set` before any timing.

* **floor** -- the plain batched forward (batch 32) over every picture held in RAM as one uint8
  array: ``torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)`` then ``handle.logits``
  under ``torch.inference_mode``. No reading, no hooks, no output kept: images per second that no
  feature pass can beat.
* **ours** -- :func:`engine.imagesets.set_features_many` with ``use_cache=False``: reads the cached
  set (memory map), converts and prefetches the next batch in a thread, captures the layers, keeps
  each channel's max / argmax / mean (or the penultimate vector) and the top-1 class.

Ratios are floor time / ours per round (1.0 = free), the median over rounds; throughputs are medians.
Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import interleaved_medians, machine_description, render  # noqa: E402

from engine import imagesets, models  # noqa: E402


def crops_zip(count: int, seed: int = 0) -> bytes:
    """``count`` random square crops of the bundled photos, as 224 px JPEGs in a ZIP."""
    photos = imagesets.bundled_photos(size=448)
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            photo = photos.image(int(rng.integers(len(photos))))
            side = int(rng.integers(160, 448))
            top, left = (int(v) for v in rng.integers(0, 448 - side + 1, 2))
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((224, 224))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out = io.BytesIO()
            crop.save(out, "JPEG", quality=90)
            archive.writestr(f"crop{i:05d}.jpg", out.getvalue())
    return buffer.getvalue()


def plain_forward(handle, pixels: np.ndarray, batch_size: int = 32) -> None:
    for first in range(0, len(pixels), batch_size):
        x = torch.from_numpy(pixels[first:first + batch_size]).permute(0, 3, 1, 2).float().div_(255)
        with torch.inference_mode():
            handle.logits(x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args(argv)
    count = args.images or (128 if args.quick else 512)
    repeats = 1 if args.quick else 3
    handle = models.load_model("efficientnet_lite0", device="cpu")
    imageset = imagesets.zip_set(crops_zip(count), "crops.zip", size=224)
    pixels = np.concatenate([batch for batch, _ in imageset.batches(256)])  # pre-decoded, in RAM
    print(machine_description())
    print(f"torch threads: {torch.get_num_threads()}; set: {imageset.describe()}")
    rows = []
    for layers in ([imagesets.PENULTIMATE], ["_blocks.10", imagesets.PENULTIMATE], ["_bn1"]):
        ratios = []
        for _ in range(repeats):  # rounds of (floor, ours): a burst of load from elsewhere hits both alike
            timings = interleaved_medians({
                "floor": lambda: plain_forward(handle, pixels),
                "ours": lambda: imagesets.set_features_many(handle, imageset, layers, batch_size=32,
                                                            use_cache=False),
            }, repeats=1, warmup=1 if not ratios else 0)
            ratios.append((timings["floor"], timings["ours"]))
        floor, ours = (statistics.median(t[i] for t in ratios) for i in (0, 1))
        ratio = statistics.median(f / o for f, o in ratios)
        rows.append([" + ".join(layers), str(count), f"{1000 * count / floor:.1f}", f"{1000 * count / ours:.1f}",
                     f"{ratio:.2f}"])
    print(render(("Set features against the plain batched forward (lite0, batch 32, 224 px)",
                  ["layers", "images", "forward img/s (floor)", "features img/s", "ours / floor (median of rounds)"],
                  rows,
                  ["floor: pixels pre-decoded in RAM, forward only, no hooks; ours reads the cached set from disk"]),
                 args.markdown))


if __name__ == "__main__":
    main()
