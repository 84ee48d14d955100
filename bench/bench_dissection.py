"""Dissection benchmark (issue 6): throughput against the layer's forward, a NetDissect-Lite-style
baseline, and peak memory for 10k images.

    python bench/bench_dissection.py [--quick] [--markdown] [--rss]

efficientnet_lite0, CPU, torch's default threads, the engine's allocator tuning on. The bundled
concept set is generated (and cached) before any timing, so no row pays for drawing images.

* **floor** -- the pure batched forward over the set (batch 32), with the same data loading: images
  per second that no dissection of the layer can beat. Dissection = stage 1 (that forward plus
  writing the activations and keeping each unit's largest values) + the IoU tally.
* **NetDissect-Lite style** -- the baseline the issue names: a forward hook copies each batch's
  features to numpy; thresholds by ``np.quantile`` over all of a unit's values; the tally per image
  and per unit with a PIL bilinear resize of the map and numpy ``&``/``|`` against every concept's
  mask. Timed on a subset (it is slow) and reported per image.
* **peak RSS** (``--rss``) -- a separate process dissects the 10 000-image set (112 px) at the
  default layer; ``ru_maxrss`` of that process.

Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import interleaved_medians, machine_description, render  # noqa: E402

from engine import concepts, dissection, io  # noqa: E402
from engine import models  # noqa: E402


def pure_forward(handle, data, count, batch_size=32):
    for images, _ in data.batches(batch_size, 0, count):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        with torch.inference_mode():
            handle.logits(x)


def netdissect_lite(handle, data, layer, count, quantile=0.005, batch_size=32):
    """Per-batch hooks, numpy features, np.quantile, PIL resize per unit and image, numpy tally."""
    features = []
    module = handle.module(layer)
    hook = module.register_forward_hook(lambda m, i, o: features.append(o.detach().cpu().numpy()))
    try:
        for images, _ in data.batches(batch_size, 0, count):
            with torch.inference_mode():
                handle.logits(torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255))
    finally:
        hook.remove()
    maps = np.concatenate(features)  # (N, C, h, w)
    units = maps.shape[1]
    thresholds = np.quantile(maps.transpose(1, 0, 2, 3).reshape(units, -1), 1 - quantile, axis=1)
    size = data.mask_size
    inter = np.zeros((units, len(data.concepts)))
    union = np.zeros_like(inter)
    for index in range(count):
        sample = data.sample(index)
        for unit in range(units):
            up = np.asarray(Image.fromarray(maps[index, unit]).resize((size, size), Image.Resampling.BILINEAR))
            lit = up > thresholds[unit]
            for concept, mask in zip(sample.concept_ids, sample.masks):
                inter[unit, concept] += np.logical_and(lit, mask).sum()
                union[unit, concept] += np.logical_or(lit, mask).sum()
    return inter, union


def throughput(handle, data, layers, count, repeats) -> list[list]:
    rows = []
    for layer in layers:
        config = dissection.DissectionConfig()
        timings = interleaved_medians({
            "floor": lambda: pure_forward(handle, data, count),
            "ours": lambda: dissection.dissect(handle, data, layer, config, use_cache=False),
        }, repeats=repeats, warmup=1)
        result = dissection.dissect(handle, data, layer, config, use_cache=False)
        floor, ours = timings["floor"], timings["ours"]
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if k != "total")
        rows.append([layer, str(count), f"{1000 * count / floor:.1f}", f"{1000 * count / ours:.1f}",
                     f"{floor / ours:.2f}", stages, f"{int(result.detectors.sum())}/{result.units}"])
    return rows


def baseline(handle, data, layer, count, ours_per_image_ms) -> list[list]:
    start = time.perf_counter()
    netdissect_lite(handle, data, layer, count)
    seconds = time.perf_counter() - start
    per_image = 1000 * seconds / count
    return [[layer, str(count), f"{per_image:.1f}", f"{ours_per_image_ms:.1f}", f"{per_image / ours_per_image_ms:.1f}x"]]


def peak_rss(n: int) -> list[list]:
    code = (
        "import resource, time, json\n"
        "from engine import concepts, dissection, models\n"
        "h = models.load_model('efficientnet_lite0', device='cpu')\n"
        f"data = concepts.bundled_concepts({n}, size=112, mask_size=56)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "r = dissection.dissect(h, data, None, dissection.DissectionConfig(), use_cache=False)\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'peak_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " 'before_kib': base, 'units': r.units, 'detectors': int(r.detectors.sum()), 'layer': r.layer}))\n")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "GLASSBOX_DEVICE": "cpu", "PYTHONPATH": str(root),
                              **({"GLASSBOX_CACHE": str(io.cache_root())})})
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    activations_gb = n * 1280 * 49 * 4 / 1e9
    return [[str(n), stats["layer"], f"{activations_gb:.1f}", f"{stats['before_kib'] / 1024:.0f}",
             f"{stats['peak_kib'] / 1024:.0f}", f"{stats['seconds']:.0f}", f"{stats['detectors']}/{stats['units']}"]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--rss", action="store_true", help="also dissect 10 000 images in a separate process")
    args = parser.parse_args(argv)
    handle = models.load_model("efficientnet_lite0", device="cpu")
    count = 300 if args.quick else 1000
    data = concepts.bundled_concepts(count, size=224, mask_size=112)
    print(machine_description())
    rows = throughput(handle, data, ["_bn1", "_blocks.10"], count, repeats=1 if args.quick else 3)
    print(render(("Throughput: dissection against the layer's pure batched forward (bundled set, 224 px, masks 112)",
                  ["layer", "images", "forward img/s (floor)", "dissection img/s", "ours / floor", "stages",
                   "detectors"], rows,
                  ["floor: the whole forward with the same data loading (the layer's map needs every module before it)"]),
                 args.markdown))
    ours_ms = 1000 / float(rows[0][3])
    subset = 50 if args.quick else 100
    print(render(("NetDissect-Lite-style baseline (per-batch hooks, numpy tally), same data",
                  ["layer", "images", "baseline ms/image", "ours ms/image", "ours is faster by"],
                  baseline(handle, data, "_bn1", subset, ours_ms), []), args.markdown))
    if args.rss:
        print(render(("Peak memory, 10 000 images (112 px, masks 56), separate process",
                      ["images", "layer", "activations (GB)", "RSS before (MiB)", "peak RSS (MiB)", "seconds",
                       "detectors"], peak_rss(10000), []), args.markdown))


if __name__ == "__main__":
    main()
