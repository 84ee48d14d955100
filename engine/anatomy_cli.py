"""``python -m engine anatomy``: the Anatomy page's views headless, with JSON where a script reads it.

    python -m engine anatomy filters [--model M] --out DIR                 # PNG grid + JSON with the shape
    python -m engine anatomy activations IMAGE --layer L --out DIR         # the strongest channels' grid
    python -m engine anatomy patches --layer L --unit U --set SET --k K --out DIR
    python -m engine anatomy tour --set SET --k K --out DIR                # one strong unit per block
    python -m engine anatomy neighbours IMAGE --set SET --k K --json
    python -m engine anatomy embed --set SET --method tsne|pca --json
    python -m engine anatomy back IMAGE --layer L [--unit U] --out DIR     # deconvnet, guided backprop, gradient
    python -m engine anatomy features --set SET [--layer L ...]            # cache a set's features (torchrun shards it)
    torchrun --nproc_per_node N -m engine anatomy features --set SET --layer L

SET is ``bundled`` (the photos that ship), ``concepts`` (the drawn concept images), a folder of
images, a ZIP of images or a Broden folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import images, io, models


def add_parser(commands) -> None:
    p = commands.add_parser("anatomy", help="what a network has learned: filters, activations, top patches, "
                                            "neighbours, t-SNE, deconvnet")
    sub = p.add_subparsers(dest="anatomy_command", required=True)

    def verb(name: str, help: str, run, *, image: bool = False, image_set: bool = False, out: bool = False):
        v = sub.add_parser(name, help=help)
        if image:
            v.add_argument("image", help="image file, or a sample name such as chelsea")
        if image_set:
            v.add_argument("--set", dest="set", required=True,
                           help="bundled, concepts, a folder of images, a .zip of images, or a Broden folder")
        v.add_argument("--model", default=models.DEFAULT_MODEL, help=f"model name (default {models.DEFAULT_MODEL})")
        if out:
            v.add_argument("--out", required=True, help="folder for the files")
        v.set_defaults(run=run)
        return v

    verb("filters", "the first layer's filters as a PNG grid, and a JSON with the shape", cmd_filters, out=True)
    v = verb("activations", "a layer's strongest channels on an image, as a PNG grid", cmd_activations, image=True,
             out=True)
    v.add_argument("--layer", help="layer with a spatial output (default: the model's last feature map)")
    v.add_argument("--count", type=int, default=32, help="how many channels (default 32)")
    v = verb("patches", "a unit's maximally activating patches over a set, cut to its receptive field",
             cmd_patches, image_set=True, out=True)
    v.add_argument("--layer", required=True)
    v.add_argument("--unit", type=int, required=True)
    v.add_argument("--k", type=int, default=9)
    v = verb("tour", "one strong unit per block, edges to parts, with its patches", cmd_tour, image_set=True,
             out=True)
    v.add_argument("--k", type=int, default=6)
    v = verb("neighbours", "the image's nearest images by penultimate features and by raw pixels", cmd_neighbours,
             image=True, image_set=True)
    v.add_argument("--k", type=int, default=6)
    v.add_argument("--json", action="store_true")
    v = verb("embed", "t-SNE or PCA of a set's penultimate features", cmd_embed, image_set=True)
    v.add_argument("--method", choices=["tsne", "pca"], default="tsne")
    v.add_argument("--json", action="store_true")
    v = verb("back", "a unit projected back to the pixels: deconvnet, guided backprop and gradient", cmd_back,
             image=True, out=True)
    v.add_argument("--layer", help="layer (default: the model's last feature map)")
    v.add_argument("--unit", type=int, help="unit (default: the strongest on the image)")
    v = verb("features", "compute and cache a set's features (shards across ranks under torchrun)", cmd_features,
             image_set=True)
    v.add_argument("--layer", action="append", help="a layer (repeat for several; default: the penultimate vector)")


# ---------------------------------------------------------------------------------------------
# What the CLI writes and the page downloads: one builder each


def patches_png(patches) -> bytes:
    """A patch grid: every crop fitted into the largest crop's square, side by side."""
    from . import plots

    side = max(max(c.shape[:2]) for c in patches.crops)
    squares = [np.asarray(images.fit_square(c, side)) for c in patches.crops]
    return images.to_png_bytes(plots.tile(squares, min(len(squares), 9)))


def patches_record(patches, *, model: str, set_name: str) -> dict:
    return {"model": model, "layer": patches.layer, "unit": int(patches.unit), "set": set_name,
            "field": [int(v) for v in patches.field_size],
            "patches": [{"path": label, "value": round(float(v), 5), "box": [int(b) for b in box]}
                        for label, v, box in zip(patches.labels, patches.values, patches.boxes)]}


def neighbours_record(result, labels) -> dict:
    """``{"features": [{"path", "distance"}, ...], "pixels": [...]}`` (the issue's contract)."""
    return {kind: [{"path": labels[int(i)], "distance": round(float(d), 6)} for i, d in rows]
            for kind, rows in (("features", result.features), ("pixels", result.pixels))}


def embedding_points(embedding, labels, predicted_names, confidence=None) -> list[dict]:
    """``[{"path", "x", "y", "predicted"}, ...]`` (the issue's contract), plus the confidence if given."""
    points = []
    for i, (x, y) in enumerate(embedding.points):
        point = {"path": labels[i], "x": round(float(x), 5), "y": round(float(y), 5), "predicted": predicted_names[i]}
        if confidence is not None:
            point["confidence"] = round(float(confidence[i]), 5)
        points.append(point)
    return points


def embedding_csv(points: list[dict]) -> str:
    import csv
    import io as text_io

    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(points[0]) if points else ["path", "x", "y", "predicted"])
    writer.writeheader()
    writer.writerows(points)
    return buffer.getvalue()


def _handle(args: argparse.Namespace) -> models.ModelHandle:
    return models.load_model(args.model)


def _image_set(args: argparse.Namespace, handle: models.ModelHandle):
    from . import imagesets

    return imagesets.open_set(args.set, size=handle.input_size)


def _image_tensor(args: argparse.Namespace, handle: models.ModelHandle):
    from . import classify
    from .__main__ import read_image

    view = classify.model_view(handle, read_image(args.image))
    return view, images.to_tensor(view, device=handle.device)


def _features(handle, imageset, layers: list[str]) -> dict:
    from . import imagesets
    from .jobs import tqdm_progress

    with tqdm_progress("features") as progress:
        return imagesets.set_features_many(handle, imageset, layers, progress=progress)


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def cmd_filters(args: argparse.Namespace) -> int:
    from . import anatomy

    handle = _handle(args)
    grid = anatomy.first_layer_filters(handle)
    out = _out(args)
    png = out / f"filters_{_safe(handle.name)}.png"
    io.write_bytes_atomic(png, images.to_png_bytes(grid.grid))
    record = {"model": handle.name, "layer": grid.layer, "shape": list(grid.shape), "png": str(png)}
    io.write_json_atomic(out / f"filters_{_safe(handle.name)}.json", record)
    print(json.dumps(record))
    return 0


def cmd_activations(args: argparse.Namespace) -> int:
    from . import anatomy, plots

    handle = _handle(args)
    _, x = _image_tensor(args, handle)
    layer = handle.layer(args.layer).name
    acts = anatomy.image_activations(handle, x, layer)
    shown = acts.order[:args.count]
    tiles = [plots.enlarge(plots.scaled_map(acts.maps[c]), max(1, 48 // acts.maps.shape[1])) for c in shown]
    out = _out(args)
    png = out / f"activations_{_safe(layer)}.png"
    io.write_bytes_atomic(png, images.to_png_bytes(plots.tile(tiles, min(8, len(tiles)))))
    print(json.dumps({"layer": layer, "channels": [int(c) for c in shown],
                      "strength": [round(float(acts.strength[c]), 5) for c in shown], "png": str(png)}))
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from . import anatomy

    handle = _handle(args)
    imageset = _image_set(args, handle)
    layer = handle.layer(args.layer).name
    patches = anatomy.top_patches(handle, imageset, _features(handle, imageset, [layer])[layer], args.unit, k=args.k)
    out = _out(args)
    png = out / f"patches_{_safe(layer)}_unit{args.unit}.png"
    io.write_bytes_atomic(png, patches_png(patches))
    record = {**patches_record(patches, model=handle.name, set_name=imageset.name), "png": str(png)}
    io.write_json_atomic(out / f"patches_{_safe(layer)}_unit{args.unit}.json", record)
    print(json.dumps(record))
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    from . import anatomy

    handle = _handle(args)
    imageset = _image_set(args, handle)
    layers = anatomy.tour_layers(handle)
    stops = anatomy.tour(handle, imageset, _features(handle, imageset, layers), k=args.k)
    out = _out(args)
    record = {"model": handle.name, "set": imageset.name, "stops": []}
    for stop in stops:
        png = out / f"tour_{_safe(stop.layer)}_unit{stop.unit}.png"
        io.write_bytes_atomic(png, patches_png(stop.patches))
        record["stops"].append({"layer": stop.layer, "unit": stop.unit, "field": list(stop.patches.field_size),
                                "png": str(png)})
    io.write_json_atomic(out / "tour.json", record)
    print(json.dumps(record))
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    from . import anatomy, imagesets

    handle = _handle(args)
    imageset = _image_set(args, handle)
    features = _features(handle, imageset, [imagesets.PENULTIMATE])[imagesets.PENULTIMATE]
    view, _ = _image_tensor(args, handle)
    result = anatomy.neighbours_from(anatomy.NeighbourIndex(features.values, metric="cosine"),
                                     anatomy.NeighbourIndex(imagesets.pixel_vectors(imageset), metric="euclidean"),
                                     imagesets.image_features(handle, view), imagesets.pixel_vector(view), args.k,
                                     skip_copy=True)
    record = neighbours_record(result, imageset.labels)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    for kind, rows in record.items():
        print(f"nearest by {kind}:")
        for row in rows:
            print(f"  {row['distance']:.4f}  {row['path']}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from . import anatomy, imagesets

    handle = _handle(args)
    imageset = _image_set(args, handle)
    features = _features(handle, imageset, [imagesets.PENULTIMATE])[imagesets.PENULTIMATE]
    embedding = anatomy.embed(features.values, method=args.method)
    points = embedding_points(embedding, imageset.labels,
                              [handle.class_names[int(c)] for c in features.predicted])
    if args.json:
        print(json.dumps({"method": args.method, "kl": embedding.kl, "points": points}, indent=2))
        return 0
    print(f"{embedding.label} of {len(points)} images ({imageset.name}); {embedding.note}")
    for point in points:
        print(f"  {point['x']:9.3f} {point['y']:9.3f}  {point['predicted']:<24} {point['path']}")
    return 0


def cmd_back(args: argparse.Namespace) -> int:
    from . import anatomy, plots

    handle = _handle(args)
    _, x = _image_tensor(args, handle)
    layer = handle.layer(args.layer).name
    unit = args.unit if args.unit is not None else int(anatomy.image_activations(handle, x, layer).order[0])
    out = _out(args)
    record = {"model": handle.name, "layer": layer, "unit": unit, "files": {}}
    for method in ("deconvnet", "guided", "gradient"):
        result = anatomy.project_back(handle, x, layer, unit, method)
        png = out / f"{method}_{_safe(layer)}_unit{unit}.png"
        io.write_bytes_atomic(png, images.to_png_bytes(plots.signed_picture(result.image)))
        record["files"][method] = str(png)
        record["note"] = result.note
    print(json.dumps(record))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from . import distributed, imagesets

    distributed.init_from_env()
    try:
        handle = _handle(args)
        imageset = _image_set(args, handle)
        found = _features(handle, imageset, args.layer or [imagesets.PENULTIMATE])
        if distributed.is_lead():
            for layer, features in found.items():
                print(f"{layer}: {features.count} images × {features.values.shape[1]} values ({imageset.name}), "
                      f"{features.seconds:.1f} s on {distributed.world_size()} process(es)")
    finally:
        distributed.shutdown()
    return 0
