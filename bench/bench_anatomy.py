"""Anatomy benchmark (issue 13): the t-SNE embedding against openTSNE's default and scikit-learn,
and the nearest-neighbour query against a plain pre-normalised numpy dot product.

    OMP_NUM_THREADS=1 python bench/bench_anatomy.py [--n 2000] [--queries 200] [--markdown]

Vectors: penultimate features (the 1280-d input of ``_fc``) of efficientnet_lite0 on 2000
augmented crops of the bundled photos (``engine.imagesets.bundled_photos``; random resized crops
of 15-100 % of the area, aspect 3/4-4/3, flips, brightness/contrast jitter, seed 0), computed once
and cached under ``cache_root()/bench/`` so later runs time only the embeddings.

* **t-SNE** -- ours (``engine.anatomy.embed``), openTSNE's default (``openTSNE.TSNE().fit`` on the
  same PCA-50 data) and ``sklearn.manifold.TSNE`` (its defaults, same PCA-50 data), in one run,
  one thread each. KL is each library's own report, and also one exact KL(P || Q) per embedding
  against the same P (openTSNE's perplexity-30 affinities, exact neighbours), so the three are
  compared on one scale.
* **neighbours** -- one query over 10 000 vectors of 1280 dims (the 2000 features and noisy copies):
  ``NeighbourIndex.query`` (cosine, exact top-k with ties by index) vs ``matrix @ q`` alone, the
  floor of any exact search; median of interleaved rounds.

Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import interleaved_medians, machine_description, render  # noqa: E402

from engine import anatomy, images, io, models  # noqa: E402

FEATURES_VERSION = 1


def augmented_crops(pictures: list[np.ndarray], count: int, size: int, seed: int = 0):
    """Yield batches of ``count`` random resized crops (uint8, size x size) of the pictures."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    batch = []
    for i in range(count):
        source = Image.fromarray(pictures[i % len(pictures)])
        w, h = source.size
        area = w * h * rng.uniform(0.15, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = source.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
        crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.7, 1.3))
        batch.append(np.asarray(crop, np.uint8))
        if len(batch) == 32 or i == count - 1:
            yield np.stack(batch)
            batch = []


def penultimate_features(n: int) -> tuple[np.ndarray, str]:
    """lite0's 1280-d pooled features of n augmented crops, cached on disk."""
    path = io.cache_root() / "bench" / f"anatomy-lite0-penultimate-{n}-v{FEATURES_VERSION}.npy"
    if path.is_file():
        return np.load(path), f"cached {path}"
    from engine import imagesets

    photos = imagesets.bundled_photos(size=320)
    pictures = [photos.image(i) for i in range(len(photos))]
    handle = models.load_model("efficientnet_lite0")
    from engine.hooks import capture

    rows = []
    started = time.perf_counter()
    for batch in augmented_crops(pictures, n, handle.input_size):
        with torch.inference_mode(), capture(handle, ["_avg_pooling"]) as captured:
            handle.logits(images.to_tensor(batch))
            rows.append(captured["_avg_pooling"].flatten(1).float().numpy())
    features = np.concatenate(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.save(file, features)
    return features, f"computed in {time.perf_counter() - started:.0f} s from {len(pictures)} bundled photos, cached"


def exact_kl(P, points: np.ndarray) -> float:
    """KL(P || Q) with Q the exact Student-t similarities of the embedding (dense, n <= ~5000)."""
    points = np.asarray(points, np.float64)
    squared = (points ** 2).sum(1)
    weights = 1.0 / (1.0 + np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0))
    np.fill_diagonal(weights, 0.0)
    total = weights.sum()
    coo = P.tocoo()
    p = coo.data
    q = weights[coo.row, coo.col] / total
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def bench_tsne(vectors: np.ndarray):
    from openTSNE import TSNE, affinity
    from sklearn.manifold import TSNE as SkTSNE

    reduced = np.ascontiguousarray(anatomy.pca(vectors, 50)[0])
    rows, points = [], {}
    # warm-up: imports and first calls of all three, so no row pays for them
    anatomy.embed(vectors[:200], "tsne")
    TSNE(random_state=0).fit(reduced[:200])
    SkTSNE(n_components=2, random_state=0, perplexity=20).fit_transform(reduced[:200])

    started = time.perf_counter()
    ours = anatomy.embed(vectors, "tsne", seed=0)
    ours_seconds = time.perf_counter() - started
    points["ours"] = ours.points
    rows.append(("ours (engine.anatomy.embed, incl. PCA)", ours_seconds, ours.kl))

    started = time.perf_counter()
    default = TSNE(random_state=0).fit(reduced)
    open_seconds = time.perf_counter() - started
    points["openTSNE"] = np.asarray(default)
    rows.append(("openTSNE TSNE().fit (default)", open_seconds, float(default.kl_divergence)))

    started = time.perf_counter()
    sk = SkTSNE(n_components=2, random_state=0)
    sk_points = sk.fit_transform(reduced)
    sk_seconds = time.perf_counter() - started
    points["sklearn"] = sk_points
    rows.append(("sklearn.manifold.TSNE (default)", sk_seconds, float(sk.kl_divergence_)))

    P = affinity.PerplexityBasedNN(reduced, perplexity=30, method="exact", random_state=0).P
    exact = {"ours": exact_kl(P, points["ours"]), "openTSNE": exact_kl(P, points["openTSNE"]),
             "sklearn": exact_kl(P, points["sklearn"])}
    table_rows = [[name, f"{seconds:.2f}", f"{seconds / open_seconds:.2f}", f"{kl:.4f}", f"{exact[key]:.4f}"]
                  for (name, seconds, kl), key in zip(rows, ("ours", "openTSNE", "sklearn"))]
    notes = [f"ours / openTSNE default: {ours_seconds / open_seconds:.2f}x time; "
             f"ours / sklearn: {ours_seconds / sk_seconds:.2f}x time",
             f"exact KL, same P: ours {exact['ours']:.4f}, openTSNE {exact['openTSNE']:.4f}, "
             f"sklearn {exact['sklearn']:.4f} (ours - sklearn = {exact['ours'] - exact['sklearn']:+.4f})",
             "PCA to 50 dims (engine.anatomy.pca) is inside 'ours' but done beforehand for the other two."]
    return (f"t-SNE of {len(vectors)} lite0 penultimate vectors (1280-d)",
            ["method", "seconds", "x openTSNE", "KL (own report)", "KL (exact, same P)"], table_rows, notes)


def bench_neighbours(vectors: np.ndarray, queries: int):
    rng = np.random.default_rng(0)
    reps = -(-10_000 // len(vectors))
    big = np.concatenate([vectors] * reps)[:10_000]
    big = big + rng.normal(0, 0.01, big.shape).astype(np.float32) * big.std()
    index = anatomy.NeighbourIndex(big, "cosine")
    plain = np.ascontiguousarray(big / np.linalg.norm(big, axis=1, keepdims=True), dtype=np.float32)
    picks = rng.integers(0, len(big), queries)
    state = {"i": 0}

    def ours():
        index.query(big[picks[state["i"] % queries]], 10)
        state["i"] += 1

    def dot():
        q = big[picks[state["i"] % queries]]
        plain @ (q / np.linalg.norm(q))
        state["i"] += 1

    # the answer equals a brute-force sort
    q = big[picks[0]]
    brute = np.argsort(1.0 - plain @ (q / np.linalg.norm(q)), kind="stable")[:10]
    got = index.query(q, 10)[0]
    agree = "yes" if np.array_equal(brute, got) else "NO"
    medians = interleaved_medians({"ours": ours, "dot": dot}, repeats=queries, warmup=10)
    rows = [["NeighbourIndex.query (k=10, exact, ties by index)", f"{medians['ours']:.3f}",
             f"{medians['ours'] / medians['dot']:.2f}"],
            ["pre-normalised numpy dot product (matrix @ q)", f"{medians['dot']:.3f}", "1.00"]]
    return (f"nearest-neighbour query over {len(big)} x {big.shape[1]} vectors (median of {queries})",
            ["method", "ms", "x dot product"], rows, [f"top-10 equals a brute-force stable sort: {agree}"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    vectors, origin = penultimate_features(args.n)
    print(f"Glassbox anatomy benchmark -- machine: {machine_description()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()[0]:.2f}")
    print(f"command: python bench/bench_anatomy.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"vectors: {vectors.shape}, {origin}\n")
    print(render(bench_neighbours(vectors, args.queries), args.markdown))
    print(render(bench_tsne(vectors), args.markdown))


if __name__ == "__main__":
    main()
