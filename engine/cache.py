"""The one engine file that imports streamlit: process-wide caches for handles and results.

Handles are keyed by model *name*, never by the model object. Results are keyed by content: the
sha256 of the image bytes (Streamlit's own hashing of large arrays samples them, so two images
differing in one pixel could collide), the model name and the settings.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from . import classify, images, models


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def get_handle(name: str) -> models.ModelHandle:
    return models.load_model(name)


@st.cache_data(show_spinner=False, max_entries=16)
def decoded_image(digest: str, _data: bytes) -> np.ndarray:
    """The uploaded/sample image as uint8 RGB; ``digest`` is the cache key, the bytes are not hashed."""
    return np.asarray(images.decode_image(_data))


@st.cache_data(show_spinner=False, max_entries=64)
def model_view(model_name: str, digest: str, _data: bytes) -> np.ndarray:
    """The square crop the model sees (uint8, its input size): what every page shows, explains,
    attacks or inverts. One cache for every page, keyed by model name and image digest."""
    from PIL import Image

    return classify.model_view(get_handle(model_name), Image.fromarray(decoded_image(digest, _data)))


@st.cache_data(show_spinner=False, max_entries=512)
def prediction(model_name: str, digest: str, _data: bytes, top_k: int = 5) -> models.Prediction:
    """The image's ``top_k`` classes (pages ask for every class: one forward serves any k)."""
    handle = get_handle(model_name)
    return handle.classify(images.to_tensor(model_view(model_name, digest, _data), device=handle.device), top_k=top_k)


# Entry counts are sized by what one entry holds, so a server's memory levels off after a class's
# first minutes (the soak test, bench/bench_soak.py): a map with its overlay is ~280 KB, a decoded
# upload up to 40 megapixels.
@st.cache_data(show_spinner=False, max_entries=64)
def explanation(model_name: str, digest: str, _data: bytes, method: str, target: int, config_key: str):
    """A fast saliency method's map (the slow ones run as jobs). ``config_key`` is the config as JSON."""
    import json

    from . import saliency

    handle = get_handle(model_name)
    config = saliency.method_class(method).Config(**json.loads(config_key))
    view = model_view(model_name, digest, _data)
    return saliency.explain(handle, images.to_tensor(view, device=handle.device), method, target, config)


# ---------------------------------------------------------------------------------------------
# Relabel and attacks
# A run's start image is named by its digest and bytes; no bytes means sec. 3.2's Gaussian image.


@st.cache_data(show_spinner=False, max_entries=64)
def relabel_start(model_name: str, digest: str, _data: bytes | None) -> np.ndarray:
    """The image a relabel run starts from, as the model sees it (uint8): the photo's square crop,
    or, with no bytes, the Gaussian image of sec. 3.2 (``digest`` names it, e.g. gaussian-seed-0)."""
    from . import relabel

    if _data is None:
        return images.to_uint8(relabel.gaussian_start(get_handle(model_name).input_size, seed=relabel.GAUSSIAN_SEED))
    return model_view(model_name, digest, _data)


def _relabel_input(model_name: str, digest: str, data: bytes | None):
    handle = get_handle(model_name)
    return handle, images.to_tensor(relabel_start(model_name, digest, data), device=handle.device)


@st.cache_data(show_spinner=False, max_entries=64)
def relabel_ranking(model_name: str, digest: str, _data: bytes | None) -> models.Prediction:
    """Every class of the start image, most likely first (a photo's is the one every page shares)."""
    handle = get_handle(model_name)
    if _data is not None:
        return prediction(model_name, digest, _data, handle.num_classes)
    return handle.classify(images.to_tensor(relabel_start(model_name, digest, None), device=handle.device),
                           top_k=handle.num_classes)


@st.cache_data(show_spinner=False, max_entries=64)
def attack_target(model_name: str, digest: str, _data: bytes | None, attack_key: str) -> int:
    """The target an attack picks for itself on the start image (least-likely: the argmin class)."""
    from . import attacks

    handle, x = _relabel_input(model_name, digest, _data)
    return attacks.get_attack(attack_key).choose_target(handle, x, None)


@st.cache_data(show_spinner=False, max_entries=12)
def relabel_first_gradients(model_name: str, digest: str, _data: bytes | None,
                            target: int) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3: the first step's raw gradient and its sign on the start image."""
    from . import relabel

    handle, x = _relabel_input(model_name, digest, _data)
    return relabel.first_gradients(handle, x, target)


@st.cache_data(show_spinner=False, max_entries=64)
def attack_manifest(model_name: str, job_id: str, image_name: str, image_sha256: str | None, _result) -> dict:
    """A finished attack's manifest (its quality figures include SSIM), made once per job."""
    from . import attacks

    return attacks.manifest(_result, get_handle(model_name), image_name=image_name, image_sha256=image_sha256)


@st.cache_data(show_spinner="Checking the limits…", max_entries=64)
def relabel_limit_checks(model_name: str, second_name: str, digest: str, _relabelled: np.ndarray, target: int,
                         original_class: int) -> list:
    """Sec. 3.1's limits of a relabelled image (``digest`` is its pixels' sha256): crop, shift and
    mirror on this model, and the image untouched on ``second_name``."""
    from . import relabel

    return relabel.limit_checks(get_handle(model_name), _relabelled, target, original_class, get_handle(second_name))


# ---------------------------------------------------------------------------------------------
# Class inversion

INVERSION_MASKS_KEPT = 32  # painted/uploaded masks remembered by digest (about 200 kB each at 224 px)


class _MaskStore:
    """Painted and uploaded inversion masks by digest, newest last, at most INVERSION_MASKS_KEPT.

    A mask cannot live in a link; its digest can. A reload (or a second tab) on the same server
    finds the mask by the digest in its link; after a server restart it is gone and the page says so.
    """

    def __init__(self) -> None:
        import collections
        import threading

        self._masks: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, digest: str, mask: np.ndarray) -> None:
        with self._lock:
            if digest not in self._masks:
                kept = np.array(mask, dtype=np.float32)
                kept.setflags(write=False)
                self._masks[digest] = kept
            self._masks.move_to_end(digest)
            while len(self._masks) > INVERSION_MASKS_KEPT:
                self._masks.popitem(last=False)

    def get(self, digest: str) -> np.ndarray | None:
        with self._lock:
            return self._masks.get(digest)


@st.cache_resource(show_spinner=False)
def _inversion_masks() -> _MaskStore:
    return _MaskStore()


def remember_inversion_mask(mask: np.ndarray) -> str:
    """Keep a painted/uploaded mask for reloads; returns its digest (the name a link carries)."""
    from . import inversion

    digest = inversion.mask_digest(mask)
    _inversion_masks().put(digest, mask)
    return digest


def recall_inversion_mask(digest: str | None) -> np.ndarray | None:
    """The mask remembered under ``digest``, or None (never seen, pushed out, or the server restarted)."""
    return _inversion_masks().get(digest) if digest else None


@st.cache_data(show_spinner=False, max_entries=64)
def inversion_shape_mask(shape: str, size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """An ellipse or rectangle mask (sec. 2.3) at the model's size."""
    from . import inversion

    return inversion.shape_mask(shape, size, box)


@st.cache_data(show_spinner=False, max_entries=64)
def inversion_after(model_name: str, job_id: str, _pixels: np.ndarray) -> models.Prediction:
    """The top-5 classes of a finished run's final image (the job id names the result)."""
    handle = get_handle(model_name)
    return handle.classify(images.to_tensor(_pixels, device=handle.device))


@st.cache_data(show_spinner=False, max_entries=32)
def inversion_downloads(model_name: str, job_id: str, image_name: str, stem: str, preset: str | None,
                        mask_pixels: int | None, _result) -> dict[str, bytes | str]:
    """A finished run's downloads (final PNG, snapshots ZIP, loss CSV, manifest JSON), built once per job."""
    from . import io, inversion

    record = inversion.manifest(_result, get_handle(model_name), image_name=image_name, preset=preset,
                                mask_pixels=mask_pixels)
    return {"png": images.to_png_bytes(_result.image), "zip": inversion.snapshots_zip(_result, stem),
            "csv": inversion.loss_log_csv(_result), "json": io.manifest_json(record)}


# ---------------------------------------------------------------------------------------------
# Dissection


@st.cache_resource(max_entries=4, show_spinner=False)
def concept_set(spec: str, n: int | None = None, size: int | None = None):
    """A concept set, opened once per process: ``"bundled"`` draws (or reads from disk) ``n`` images
    of ``size`` px with masks at half; a folder (Broden, or images/ + masks/) is checked and read
    at its own sizes (``n`` and ``size`` are not used)."""
    from . import concepts

    if spec == "bundled":
        return concepts.bundled_concepts(n, size=size, mask_size=size // 2)
    return concepts.open_concepts(spec)


@st.cache_data(show_spinner=False, max_entries=32)
def unit_maps_on_set(model_name: str, spec: str, n: int | None, size: int | None, dataset_key: str, layer: str,
                     unit: int, indices: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``indices`` of a concept set fitted to the model's input, and one unit's activation map on
    each (upsampled): ``(N, S, S, 3)`` uint8 and ``(N, S, S)`` float32. ``dataset_key`` (the set's
    content key) names the pictures, so a changed folder is not served from the cache."""
    from . import dissection

    handle = get_handle(model_name)
    data = concept_set(spec, n, size)
    pictures = np.stack([images.fit_square(data.sample(i).image, handle.input_size) for i in indices])
    maps = dissection.unit_maps_on(handle, list(pictures), layer, unit)
    return pictures, np.stack(maps).astype(np.float32)


@st.cache_data(show_spinner=False, max_entries=64)
def unit_map_on_image(model_name: str, digest: str, _data: bytes, layer: str, unit: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The image as the model sees it (uint8) and one unit's activation map on it (float32, same size)."""
    from . import dissection

    handle = get_handle(model_name)
    view = model_view(model_name, digest, _data)
    return view, dissection.unit_maps_on(handle, [view], layer, unit)[0].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Patterns


@st.cache_resource(max_entries=8, show_spinner=False)
def pattern_generator_file(path: str, stamp: int):
    """A pattern generator (or a run's checkpoint) on disk, loaded once per path and modification time
    (``stamp``, ns): a run that saves a newer checkpoint is read again."""
    from pathlib import Path

    from .patterns import generate

    return generate.load_generator_file(Path(path))


@st.cache_resource(max_entries=4, show_spinner=False)
def pattern_generator_upload(digest: str, name: str, _data: bytes):
    """An uploaded pattern generator, keyed by the sha256 of its bytes (``name`` is for sentences)."""
    from .patterns import generate

    return generate.load_generator_bytes(_data, name)


@st.cache_data(show_spinner=False, max_entries=64)
def generated_patterns(generator_id: str, _loaded, substrate_digest: str, _substrate: np.ndarray, size: int,
                       mix: tuple[tuple[int, float], ...], seed: int):
    """The Patterns page's N + 1 generator passes (the mix, and every class alone), as numpy.

    Keyed by the generator's identity (path and modification time, or the upload's digest), the
    substrate's digest, the mix (class index -> weight), the size and the noise seed.
    """
    from .patterns import generate

    return generate.generate_all(_loaded, _substrate, dict(mix), seed=seed)


@st.cache_data(show_spinner=False, max_entries=256)
def pattern_prediction(model_name: str, digest: str, _picture: np.ndarray, grey: bool) -> models.Prediction:
    """The classifier's top 5 on a pattern (uint8), in grey when ``grey``; ``digest`` keys the pixels."""
    from .patterns import generate

    return generate.classify_pattern(get_handle(model_name), _picture, grayscale=grey)


@st.cache_data(show_spinner=False, max_entries=4)
def classic_comparison(classic_file: str, classic_stamp: int, cgan_file: str, cgan_stamp: int) -> dict:
    """Fig. 2 of the patterns paper beside the cGAN (:func:`engine.patterns.classic.comparison`),
    keyed by both files and their modification times."""
    from pathlib import Path

    from .patterns import classic

    return classic.comparison(Path(classic_file), Path(cgan_file))


# ---------------------------------------------------------------------------------------------
# Mind's Eye (Berntsen et al.): the networks, the explorer's single image, Table 1, sweeps, Fig. 5.
# Every entry is keyed by the weights folder (None: the shipped weights) and a stamp of its files,
# so a retrained or newly exported network is read again.


def minds_eye_stamp(folder: str | None) -> tuple:
    """(file name, mtime ns, size) of every weight file in use: cheap, and it changes with retraining."""
    from .minds_eye import weights

    stamp = []
    for net in weights.FILES:
        path = weights.weight_file(net, folder)
        if path is not None:
            info = path.stat()
            stamp.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(stamp)


@st.cache_resource(max_entries=2, show_spinner="Loading the Mind's Eye networks…")
def minds_eye_contenders(folder: str | None, stamp: tuple) -> dict:
    """The four contenders (three direct nets and the triple-staged one); ModelError names a missing one."""
    from .minds_eye import weights

    weights.forget()  # a new stamp means new files: the engine's own cache is stale too
    return weights.contenders(folder)


@st.cache_data(show_spinner=False, max_entries=4)
def minds_eye_digest(folder: str | None, stamp: tuple) -> str:
    """The engine's digest of the weight files (it names the on-disk Table 1 cache and the job keys)."""
    from .minds_eye import evaluate

    return evaluate.weights_digest(folder)


@st.cache_data(show_spinner=False, max_entries=256)
def minds_eye_test_image(index: int) -> tuple[np.ndarray, int, tuple[float, float, float]]:
    """Test image ``index``: (uint8 64×64, its class id, its true angles)."""
    from .minds_eye import data

    batch = data.make_batch("test", [int(index)])
    return ((batch.image[0, 0] * 255).round().byte().numpy(), int(batch.label[0]),
            tuple(round(float(a), 4) for a in batch.angles[0]))


@st.cache_data(show_spinner=False, max_entries=256)
def minds_eye_composed(name: str, angles: tuple[float, float, float], background: int) -> np.ndarray:
    """The explorer's query: ``name`` (an object, or "none") at ``angles`` over test background
    ``background``, composited and 8-bit quantised (uint8 64×64)."""
    import torch

    from .minds_eye import data, render

    back = data.background_only("test", int(background))
    if name == "none":
        grey, alpha = torch.zeros_like(back), torch.zeros_like(back)
    else:
        g, a = render.render_one(name, angles)
        grey, alpha = torch.as_tensor(g)[None, None], torch.as_tensor(a)[None, None]
    return (data.compose(grey, alpha, back)[0, 0] * 255).round().byte().numpy()


@st.cache_data(show_spinner=False, max_entries=256)
def minds_eye_explore(folder: str | None, stamp: tuple, digest: str, _image: np.ndarray) -> dict[str, np.ndarray]:
    """Every network on one image (uint8 64×64, named by ``digest``), as numpy: the triple-staged
    net's ``scores`` (3,), ``angles`` (3, 3), ``drawing`` and ``alpha`` (3, 64, 64), ``similarity``
    and ``weight`` (3, 55, 55), and each direct net's softmax as ``direct:<key>`` (4,)."""
    import torch

    nets = minds_eye_contenders(folder, stamp)
    x = torch.as_tensor(_image, dtype=torch.float32)[None, None] / 255.0
    with torch.inference_mode():
        out = nets["triple"](x)
        view = {name: getattr(out, name)[0].numpy() for name in ("scores", "angles", "alpha", "similarity", "weight")}
        view["drawing"] = out.image[0].numpy()
        for key in ("direct", "direct_params", "direct_adv"):
            view[f"direct:{key}"] = torch.softmax(nets[key](x)["logits"], 1)[0].numpy()
    return view


@st.cache_data(show_spinner="Reading the test set's scores…", max_entries=8)
def minds_eye_scores(folder: str | None, digest: str, n_per_class: int):
    """Table 1's scores, once :func:`engine.minds_eye.evaluate.scores_path` exists (else computed inline)."""
    from .minds_eye import evaluate

    return evaluate.test_scores(int(n_per_class), folder=folder)


@st.cache_data(show_spinner=False, max_entries=8)
def minds_eye_curve(digest: str, n_per_class: int, _scores, points: int = 100) -> dict[str, np.ndarray]:
    """Error against Θ (missed and wrong) over [0, 1) for the scores named by (digest, n)."""
    return _scores.curve(np.linspace(0.0, 0.99, points))


@st.cache_data(show_spinner=False, max_entries=16)
def minds_eye_sweep_file(kind: str, path: str, mtime_ns: int) -> tuple[dict | None, dict[str, np.ndarray] | None]:
    """A shipped sweep (Fig. 4 or 6): its JSON and its images (the .npz beside it), or None for each."""
    import json
    from pathlib import Path

    from .minds_eye import evaluate

    json_path = Path(path)
    if not json_path.is_file():
        return None, None
    return json.loads(json_path.read_text()), evaluate.load_sweep_images(json_path)


@st.cache_data(show_spinner=False, max_entries=512)
def minds_eye_believed(folder: str | None, stamp: tuple, key: str, theta: float, digest: str,
                       _image: np.ndarray) -> tuple[int, np.ndarray | None]:
    """Fig. 5's bottom row for one adversarial image (``digest`` names its pixels): the verdict and
    what the network believes, drawn over the image (uint8), or None."""
    from .minds_eye import evaluate

    minds_eye_contenders(folder, stamp)  # the engine's cache then holds these weights
    verdict, picture = evaluate.believed_drawing(key, _image, theta, folder=folder)
    return verdict, None if picture is None else (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)


def minds_eye_live_attack(nets: dict, attacked: str, image: np.ndarray, target: int, theta: float, *,
                          max_steps: int, snapshot_every: int = 1, progress=None, observer=None):
    """The Attack-live job: §3.2's sign steps on one uint8 image against ``nets[attacked]``, every
    contender watching (the triple-staged one at ``theta``)."""
    import torch

    from .minds_eye import attack

    contenders = {key: attack.Contender(key, net, attack.check_thetas([theta]) if key == "triple" else (None,))
                  for key, net in nets.items()}
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None, None] / 255.0
    return attack.live_attack(contenders, attacked, x, int(target), max_steps=int(max_steps),
                              snapshot_every=int(snapshot_every), progress=progress, observer=observer)


# ---------------------------------------------------------------------------------------------
# Anatomy (the lecture's "What has been learned by ConvNets?")


@st.cache_resource(max_entries=8, show_spinner="Opening the image set…")
def image_set(spec: str, size: int):
    """An image set opened once per process from its ``spec`` (:func:`engine.imagesets.open_set`):
    ``"bundled"``, ``"concepts"``, ``"zip:<digest>"`` (a ZIP already unpacked by
    :func:`zip_image_set`) or a folder; the pictures are fitted to ``size``."""
    from . import imagesets

    return imagesets.open_set(spec, size=size)


def zip_image_set(data: bytes, filename: str) -> str:
    """Unpack and check an uploaded ZIP once (kept on disk by its digest); the spec that reopens it."""
    return _zip_spec(images.image_digest(data), data, filename)


@st.cache_data(show_spinner="Reading the ZIP…", max_entries=16)
def _zip_spec(digest: str, _data: bytes, filename: str) -> str:
    from . import imagesets

    return imagesets.zip_set(_data, filename).key


def stored_set_features(model_name: str, spec: str, set_key: str, size: int, layers: tuple[str, ...]) -> dict | None:
    """The layers' features when every one of them is already on disk (no forward pass), else None.
    The files are looked for on every call (cheap), so a run that just wrote them is found."""
    from . import imagesets

    handle = get_handle(model_name)
    imageset = image_set(spec, size)
    paths = [imagesets.features_dir() / f"{imagesets.features_key(handle, imagesets.resolve_layer(handle, layer), imageset)}.npz"
             for layer in layers]
    try:
        stamps = tuple(path.stat().st_mtime_ns for path in paths)
    except OSError:
        return None
    return _stored_set_features(model_name, spec, set_key, size, layers, stamps)


@st.cache_data(show_spinner="Reading the set's features…", max_entries=16)
def _stored_set_features(model_name: str, spec: str, set_key: str, size: int, layers: tuple[str, ...],
                         stamps: tuple[int, ...]) -> dict:
    from . import imagesets

    return imagesets.set_features_many(get_handle(model_name), image_set(spec, size), list(layers))


def run_set_features(handle: models.ModelHandle, spec: str, size: int, layers: tuple[str, ...], progress=None) -> dict:
    """The features job: every layer's :class:`engine.imagesets.SetFeatures` over the set, in one pass
    (each cached on disk, so a second visit only reads them)."""
    from . import imagesets

    return imagesets.set_features_many(handle, imagesets.open_set(spec, size=size), list(layers), progress=progress)


@st.cache_data(show_spinner=False, max_entries=16)
def first_layer_filters(model_name: str):
    from . import anatomy

    return anatomy.first_layer_filters(get_handle(model_name))


@st.cache_data(show_spinner=False, max_entries=32)
def image_activations(model_name: str, digest: str, _data: bytes, layer: str):
    from . import anatomy

    handle = get_handle(model_name)
    x = images.to_tensor(model_view(model_name, digest, _data), device=handle.device)
    return anatomy.image_activations(handle, x, layer)


@st.cache_data(show_spinner="Projecting back to the pixels…", max_entries=64)
def projection(model_name: str, digest: str, _data: bytes, layer: str, unit: int, method: str):
    from . import anatomy

    handle = get_handle(model_name)
    x = images.to_tensor(model_view(model_name, digest, _data), device=handle.device)
    return anatomy.project_back(handle, x, layer, unit, method)


@st.cache_data(show_spinner="Cutting the patches…", max_entries=64)
def top_patches(model_name: str, spec: str, set_key: str, layer: str, unit: int, k: int, _features):
    """``set_key`` (the set's content key) and the layer name the features; they are not hashed."""
    from . import anatomy

    handle = get_handle(model_name)
    return anatomy.top_patches(handle, image_set(spec, handle.input_size), _features, unit, k=k)


@st.cache_data(show_spinner="Choosing the tour's units…", max_entries=16)
def tour(model_name: str, spec: str, set_key: str, layers: tuple[str, ...], k: int, _features_by_layer: dict):
    from . import anatomy

    handle = get_handle(model_name)
    return anatomy.tour(handle, image_set(spec, handle.input_size), _features_by_layer, k=k)


@st.cache_data(show_spinner=False, max_entries=64)
def image_vector(model_name: str, digest: str, _data: bytes) -> np.ndarray:
    """The current image's penultimate features (the same function that computes the set's)."""
    from . import imagesets

    handle = get_handle(model_name)
    return imagesets.image_features(handle, model_view(model_name, digest, _data))


@st.cache_resource(max_entries=8)
def neighbour_indexes(model_name: str, set_key: str, _features, spec: str, size: int):
    """Pre-normalised feature and pixel indexes of a set (built once, then each query is one product)."""
    from . import anatomy, imagesets

    pixels = imagesets.pixel_vectors(image_set(spec, size))
    return anatomy.NeighbourIndex(_features.values, metric="cosine"), anatomy.NeighbourIndex(pixels, metric="euclidean")


@st.cache_data(show_spinner=False, max_entries=64)
def neighbours(model_name: str, digest: str, _data: bytes, spec: str, set_key: str, k: int, _features):
    from . import anatomy, imagesets

    handle = get_handle(model_name)
    by_features, by_pixels = neighbour_indexes(model_name, set_key, _features, spec, handle.input_size)
    query_pixels = imagesets.pixel_vector(model_view(model_name, digest, _data))
    return anatomy.neighbours_from(by_features, by_pixels, image_vector(model_name, digest, _data), query_pixels, k,
                                   skip_copy=True)


@st.cache_data(show_spinner="Embedding…", max_entries=16)
def embedding(model_name: str, set_key: str, method: str, _features):
    from . import anatomy

    return anatomy.embed(_features.values, method=method)


@st.cache_data(show_spinner=False, max_entries=4096)
def set_thumbnail(spec: str, set_key: str, index: int, size: int) -> np.ndarray:
    return image_set(spec, size).image(index)


@st.cache_data(show_spinner="Drawing thumbnails…", max_entries=8)
def set_thumbnails(spec: str, set_key: str, size: int, side: int) -> list[str]:
    """Every image of the set (opened at ``size``) as a ``side`` px PNG data URI, for the embedding."""
    import base64

    from PIL import Image

    imageset = image_set(spec, size)
    uris = []
    for index in range(len(imageset)):
        small = np.asarray(Image.fromarray(imageset.image(index)).resize((side, side), Image.BILINEAR))
        uris.append("data:image/png;base64," + base64.b64encode(images.to_png_bytes(small)).decode())
    return uris


def set_image_png(spec: str, size: int, index: int) -> bytes:
    """One image of the set (as the set holds it, at ``size``) as PNG bytes, to become the current image."""
    return images.to_png_bytes(image_set(spec, size).image(index))
