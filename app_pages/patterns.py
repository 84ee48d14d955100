"""Patterns: paint class patterns onto garments (Chaplygin & Chacksfield's conditional GAN).

Three modes. **Generate** paints with a trained generator; its passes (the mix and every class side by
side) and the classifier's reading are cached in :mod:`engine.cache`. **Train** runs a training job in
its own process; everything it shows is read back from the run folder, so a reload (or a restarted
server) finds the run again. **Quick mode** optimises one garment as a job whose key is built from
settings that live in the URL, so a reload finds the same job.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from engine import cache, images, jobs, models, plots
from engine.errors import GlassboxError
from engine.patterns import generate, quick, runs, substrates, training
from engine.patterns.cli import parse_weights
from engine.patterns.losses import PatternLossWeights
from streamlit_app import (dump_bool, page_header, parse_bool, set_url_value, show_job, start_job, url_value,
                           url_widget, use_as_image_button, watch)

MODES = {"generate": "Generate", "quality": "Quality report", "classic": "Fig. 2: classic GAN",
         "train": "Train a generator", "quick": "Quick mode (no GAN)"}
DEFAULT_CLASSES = ["goldfish", "zebra", "flamingo", "jaguar", "giant panda", "tabby"]
SUBSTRATE_SOURCES = {"garment": "A generated garment", "heldout": "A held-out garment",
                     "upload": "Your own garment photo"}
UNSEEN_NETWORK = "efficientnet_lite2"  # never a critic of the shipped generator: its top-5 is the test of a pattern
GENERATE_PRESETS = {  # label -> held-out garment, classes and weights (the shipped generator's classes)
    "Zebra on a tote bag": ("tote-bag-1", (("zebra", 1.0),)),
    "Tabby on a mitten": ("mitten-2", (("tabby", 1.0),)),
    "Jaguar on a backpack": ("backpack-2", (("jaguar", 1.0),)),
    "Flamingo on a poncho": ("poncho-1", (("flamingo", 1.0),)),
    "Giant panda on a cap": ("cap-1", (("giant panda", 1.0),)),
    "Zebra + goldfish mixed": ("jumpsuit-1", (("zebra", 1.0), ("goldfish", 0.6))),
}
DEFAULT_COLOUR = "#5a78c8"
QUICK_SIZES = [128, 256]
NEW_RUN = "(new run)"
RECIPES = {  # the new-run form's settings for each recipe (session-state keys without "train_")
    "paper": dict(batch=2, lr=2e-4, weights="3, 10, 50, 150", noise=True, grey=True, ensemble=False, eot=False,
                  varied=False, crops=3),
    # the shipped generator's last phase (it started at 3, 100, 50, 10: assets/patterns/README.md)
    "shipped": dict(batch=1, lr=5e-4, weights="3, 200, 75, 20, 100", noise=False, grey=False, ensemble=True, eot=True,
                    varied=True, crops=1),
}
ENSEMBLE_CRITIC = "efficientnet_lite1"
RECIPE_LABELS = {"paper": "The paper's settings (sec. 3)",
                 "shipped": "The shipped generator's (faster on a CPU; assets/patterns/README.md)"}
TRAINING_SOURCES = {"generated": "Generated garments (8 kinds, the paper's augmentations)",
                    "upload": "Upload your own (several images)",
                    "folder": "A folder on this machine"}


# --- Settings ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneratorChoice:
    """A loaded generator and its identity (path and modification time, or the upload's digest)."""

    loaded: generate.LoadedGenerator
    identity: str


@dataclass(frozen=True)
class GenerateSettings:
    substrate: substrates.Substrate | None  # None: nothing usable yet (a sentence says why)
    weights: tuple[tuple[str, float], ...]  # class name -> mixing weight, in the order picked
    seed: int
    grey: bool  # the classifier reads the pattern in grey


@dataclass(frozen=True)
class QuickSettings:
    size: int
    substrate: substrates.Substrate | None
    weights: tuple[tuple[str, float], ...]
    steps: int
    grey: bool


@dataclass(frozen=True)
class NewRunSettings:
    """What the new-run form chose; ``problems`` are the sentences that keep it from starting."""

    run_name: str
    classes: tuple[str, ...]
    size: int
    steps: int
    batch: int
    lr: float
    weights: PatternLossWeights | None
    grey: bool
    class_noise: bool
    gradcam: bool
    ensemble: bool
    eot: bool
    varied: bool
    crops: int
    source: str
    uploads: tuple[Any, ...]
    folder: str
    problems: tuple[str, ...]


# --- Shared controls --------------------------------------------------------------------------------------

def bound_widget(widget: Callable[..., Any], label: str, *, key: str, param: str | None, default: Any,
                 parse: Callable[[str], Any] = str, dump: Callable[[Any], str] = str, **kwargs: Any) -> Any:
    """``widget`` kept in the URL as ``param`` (see :func:`streamlit_app.url_widget`), or, with
    ``param=None``, a plain widget starting at ``default``."""
    if param is not None:
        return url_widget(widget, label, key=key, param=param, default=default, parse=parse, dump=dump, **kwargs)
    st.session_state.setdefault(key, default)
    return widget(label, key=key, **kwargs)


def parse_colour(text: str) -> str:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        raise ValueError(text)
    return text


def substrate_controls(size: int, key: str, *, in_url: bool = False) -> substrates.Substrate | None:
    """A generated garment or an uploaded photo; None with a sentence when the upload is unusable.
    With ``in_url`` the choice lives in the URL (``substrate``, ``garment``, ``colour``)."""
    source = bound_widget(st.radio, "Substrate", key=f"{key}_source", param="substrate" if in_url else None,
                          default="garment", options=list(SUBSTRATE_SOURCES), horizontal=True,
                          format_func=SUBSTRATE_SOURCES.get)
    if source == "heldout":
        from engine.patterns.quality import HELD_OUT_GARMENTS

        files = sorted(p.stem for p in HELD_OUT_GARMENTS.glob("*.png"))
        if not files:
            st.error(f"The held-out garments are missing ({HELD_OUT_GARMENTS}); run tools/make_heldout_garments.py.")
            return None
        name = bound_widget(st.selectbox, "Held-out garment (a shape the generator never trained on)",
                            key=f"{key}_heldout", param="heldout" if in_url else None, default=files[0], options=files)
        picture = np.asarray(images.decode_image((HELD_OUT_GARMENTS / f"{name}.png").read_bytes()))
        return substrates.substrate_from_picture(picture, size, name=name)
    if source == "garment":
        c1, c2 = st.columns([2, 1])
        with c1:
            garment = bound_widget(st.selectbox, "Garment", key=f"{key}_garment", param="garment" if in_url else None,
                                   default=substrates.GARMENTS[0], options=substrates.GARMENTS)
        with c2:
            colour = bound_widget(st.color_picker, "Colour", key=f"{key}_colour", param="colour" if in_url else None,
                                  default=DEFAULT_COLOUR, parse=parse_colour)
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return substrates.draw_substrate(garment, size, rgb)
    upload = st.file_uploader("A garment on a white background", type=["png", "jpg", "jpeg", "webp"],
                              key=f"{key}_upload")
    if upload is None:
        st.info("Upload a photo of a garment on white; its near-white pixels count as background.")
        return None
    try:
        return substrates.substrate_from_picture(np.asarray(images.decode_image(upload.getvalue())), size)
    except GlassboxError as error:
        st.error(f"{upload.name}: {error}")
        return None


def class_mix_controls(names: list[str], default: list[str], key: str, *,
                       handle: models.ModelHandle | None = None) -> tuple[tuple[str, float], ...]:
    """Up to three classes and their mixing weights. With ``handle`` (whose class names ``names`` are)
    they live in the URL: ``classes`` as class ids, ``weights`` in the same order."""
    default = [d for d in default if d in names]
    chosen_key = f"{key}_classes"
    if chosen_key in st.session_state and not set(st.session_state[chosen_key]) <= set(names):
        st.session_state[chosen_key] = default  # another generator or model: start from its defaults
    fresh = chosen_key not in st.session_state
    in_url = handle is not None
    chosen = bound_widget(st.multiselect, "Classes (up to three, mixed)", key=chosen_key,
                          param="classes" if in_url else None, default=default,
                          parse=lambda text: class_names_from_ids(handle, text),
                          dump=lambda chosen: ",".join(str(handle.class_index(name)) for name in chosen),
                          options=names, max_selections=3)
    url_weights = weights_from_url(len(chosen)) if in_url and fresh else []
    weights = []
    columns = st.columns(max(len(chosen), 1))
    for index, (column, name) in enumerate(zip(columns, chosen)):
        slider_key = f"{key}_w_{name}"
        if slider_key not in st.session_state:
            st.session_state[slider_key] = url_weights[index] if index < len(url_weights) else 1.0
        weights.append((name, column.slider(f"weight of {name}", min_value=0.0, max_value=1.0, step=0.05,
                                            key=slider_key)))
    if in_url:
        set_url_value("weights", None if all(w == 1.0 for _, w in weights) else ",".join(f"{w:g}" for _, w in weights))
    return tuple(weights)


def class_names_from_ids(handle: models.ModelHandle, text: str) -> list[str]:
    """A link's ``classes`` (ids, comma-separated, at most three) as class names; ValueError otherwise."""
    try:
        chosen = [handle.class_names[handle.class_index(token)] for token in text.split(",")]
    except GlassboxError as error:
        raise ValueError(text) from error
    if len(chosen) > 3:
        raise ValueError(text)
    return chosen


def weights_from_url(count: int) -> list[float]:
    """A link's mixing ``weights`` (one per class, each 0 to 1), or none with a sentence."""
    raw = url_value("weights")
    if raw is None:
        return []
    try:
        weights = [float(token) for token in raw.split(",")]
        if len(weights) != count or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError(raw)
    except ValueError:
        st.warning(f"The link's weights={raw!r} is not a valid setting here; using 1 instead.")
        return []
    return weights


def render_top5(handle: models.ModelHandle, picture: np.ndarray, *, highlight: int | None, title: str, key: str,
                grey: bool = False) -> None:
    prediction = cache.pattern_prediction(handle.name, images.image_digest(picture.tobytes()), picture, grey)
    st.plotly_chart(plots.topk_bar(prediction, highlight=highlight, title=title), width="stretch", key=key)


# --- Generate ---------------------------------------------------------------------------------------------

def file_generator(path: Path) -> GeneratorChoice:
    stamp = path.stat().st_mtime_ns
    return GeneratorChoice(cache.pattern_generator_file(str(path), stamp), f"{path}@{stamp}")


def generator_controls() -> GeneratorChoice | None:
    """The shipped generator, a run trained here or an upload; None with a sentence when none loads."""
    runs_with_checkpoints = [p for p in runs.list_runs() if (p / "checkpoint.pt").is_file()]
    sources = ["shipped"] + [f"run:{p.name}" for p in runs_with_checkpoints] + ["upload"]
    labels = {"shipped": "Shipped generator", "upload": "Upload a checkpoint",
              **{f"run:{p.name}": f"Run '{p.name}' trained here" for p in runs_with_checkpoints}}
    source = st.selectbox("Generator", sources, format_func=labels.get, key="gen_generator")
    try:
        if source == "shipped":
            if not generate.SHIPPED.is_file():
                st.error(f"The shipped generator is missing ({generate.SHIPPED}); reinstall, or train one in *Train*.")
                return None
            return file_generator(generate.SHIPPED)
        if source == "upload":
            upload = st.file_uploader("checkpoint.pt of a run, or a generator exported with `python -m engine patterns "
                                      "export`", type=["pt"], key="gen_checkpoint")
            if upload is None:
                st.info("Upload a checkpoint to generate.")
                return None
            data = upload.getvalue()
            digest = images.image_digest(data)
            return GeneratorChoice(cache.pattern_generator_upload(digest, upload.name, data), f"upload:{digest}")
        return file_generator(runs.runs_root() / source.removeprefix("run:") / "checkpoint.pt")
    except GlassboxError as error:
        st.error(str(error))
        return None


def generate_controls(loaded: generate.LoadedGenerator) -> GenerateSettings:
    substrate = substrate_controls(loaded.size, "gen")
    weights = class_mix_controls(list(loaded.class_names), [loaded.class_names[0]], "gen")
    seed = st.number_input("Noise seed (f(t) is sampled)", 0, 10_000, 0, key="gen_seed") if loaded.class_noise else 0
    grey = loaded.grayscale and st.radio(
        "The classifier sees", [True, False], horizontal=True, key="gen_grey",
        format_func={True: "grey, as in training", False: "colour"}.get,
        help="This generator was trained with a grey classifier input (sec. 4): its patterns are meant to be "
             "read in grey. In colour the garment's own colour also counts.")
    return GenerateSettings(substrate, weights, int(seed), bool(grey))


def use_pattern_button(picture: np.ndarray, *, name: str, key: str) -> None:
    """"Use as the image" under a painted garment. The garment is not the sidebar's image, so the
    pattern becomes a new image of its own (kept by its hash in the link, with no original to compare)."""
    use_as_image_button(picture, name=name, operation=name, key=key, from_current=False,
                        help="Make this painted garment the image of every page, e.g. to see on Saliency where the "
                             "classifier looks. It was not made from the sidebar's image, so it starts a chain of its "
                             "own.")


def mix_name(weights: tuple[tuple[str, float], ...], garment: str) -> str:
    return f"{' + '.join(name for name, _ in weights)} pattern on a {garment}"


def render_generated(handle: models.ModelHandle, loaded: generate.LoadedGenerator, settings: GenerateSettings,
                     made: generate.GeneratedPatterns) -> None:
    c1, c2, c3 = st.columns(3)
    c1.image(settings.substrate.image, caption="substrate", width="stretch")
    c2.image(made.pattern, caption=" + ".join(f"{n} × {w:g}" for n, w in settings.weights), width="stretch")
    c3.image(made.change, caption="what G changed (× 3, grey = nothing)", width="stretch")
    with c2:
        use_pattern_button(made.pattern, name=mix_name(settings.weights, settings.substrate.garment),
                           key="use_pattern_gen")
    strongest = max(settings.weights, key=lambda pair: pair[1])[0]
    target = loaded.class_ids[loaded.class_names.index(strongest)]
    render_top5(handle, made.pattern, highlight=target, key="gen_top5", grey=settings.grey,
                title="The classifier on the pattern" + (" (in grey)" if settings.grey else ""))
    if handle.name != UNSEEN_NETWORK and UNSEEN_NETWORK not in (loaded.model, *loaded.critics):
        render_top5(cache.get_handle(UNSEEN_NETWORK), made.pattern, highlight=target, key="gen_top5_unseen",
                    title="A network the generator never saw")
    st.download_button("Pattern PNG", lambda: images.to_png_bytes(made.pattern), "pattern.png", "image/png")


def render_every_class(loaded: generate.LoadedGenerator, made: generate.GeneratedPatterns) -> None:
    st.markdown("**Every class of this generator on this garment**")
    for column, name, picture in zip(st.columns(len(made.per_class)), loaded.class_names, made.per_class):
        column.image(picture, caption=name, width="stretch")


def apply_generate_preset(label: str, names: tuple[str, ...]) -> None:
    garment, mix = GENERATE_PRESETS[label]
    st.session_state.update(gen_source="heldout", gen_heldout=garment,
                            gen_classes=[n for n, _ in mix if n in names])
    for name, weight in mix:
        st.session_state[f"gen_w_{name}"] = weight


def generate_presets(loaded: generate.LoadedGenerator) -> None:
    """One click each: a class (or a mix) of the generator on a held-out garment."""
    usable = [label for label, (_, mix) in GENERATE_PRESETS.items() if all(n in loaded.class_names for n, _ in mix)]
    if not usable:
        return
    for column, label in zip(st.columns(len(usable)), usable):
        column.button(label, key=f"gen_preset_{label}", on_click=apply_generate_preset,
                      args=(label, loaded.class_names), width="stretch")


def generate_view(handle: models.ModelHandle) -> None:
    choice = generator_controls()
    if choice is None:
        return
    loaded = choice.loaded
    generate_presets(loaded)
    st.caption(f"A {loaded.size} px generator for {', '.join(loaded.class_names)}, trained {loaded.steps} steps "
               f"against {loaded.model or 'a classifier'}.")
    notice = generate.check_classifier(loaded, handle)
    if notice:
        st.info(notice)
    left, right = st.columns([1, 2])
    with left:
        settings = generate_controls(loaded)
    if settings.substrate is None:
        return
    if not settings.weights or not any(w for _, w in settings.weights):
        right.info("Pick at least one class with a weight above 0.")
        return
    mix = tuple((loaded.class_names.index(name), float(weight)) for name, weight in settings.weights)
    picture = settings.substrate.image
    try:
        made = cache.generated_patterns(choice.identity, loaded, images.image_digest(picture.tobytes()), picture,
                                        loaded.size, mix, settings.seed)
    except GlassboxError as error:
        right.error(str(error))
        return
    with right:
        render_generated(handle, loaded, settings, made)
    render_every_class(loaded, made)


# --- Train ------------------------------------------------------------------------------------------------

def run_job(folder: Path) -> jobs.JobStatus | None:
    """The latest training job of this run folder, if this server still remembers one: how a reload
    (which knows the run from the URL) finds a running training again."""
    prefix = f"pattern-train|{folder}|"
    mine = [s for s in jobs.registry("training").list() if (s.key or "").startswith(prefix)]
    return mine[-1] if mine else None


def start_training(folder: Path, config: training.TrainConfig | None, steps: int, *,
                   resume: bool) -> jobs.JobStatus | None:
    """A training job in its own process (the training pool); None with a sentence when it is refused.

    The job records this server (pid, boot id) in the run's state.json, so other server processes
    sharing the cache see who trains it, and its process stops by itself if this server is killed.
    A run another server process trains is refused here (its trainer would refuse it anyway)."""
    activity = runs.run_activity(folder)
    if activity.elsewhere:
        st.error(activity.busy_sentence())
        return None
    start = 0 if not resume else (runs.view_run(folder).checkpoint_steps or 0)
    return start_job(f"pattern-train|{folder}|{start}->{steps}|{time.time():.0f}", runs.train_run, str(folder), config,
                     int(steps), resume=resume, sample_every=25, checkpoint_every=100, server=runs.server_owner(),
                     title=f"Training '{folder.name}'", pool="training", kind="process")


def run_control() -> str:
    """The run to show: a run folder's name, or :data:`NEW_RUN`; kept in the URL as ``run``."""
    names = [NEW_RUN] + [p.name for p in runs.list_runs()]
    wanted = url_value("run")
    if st.session_state.get("_train_select") in names:
        st.session_state.train_run = st.session_state.pop("_train_select")
    if "train_run" not in st.session_state or st.session_state.train_run not in names:
        st.session_state.train_run = wanted if wanted in names else (NEW_RUN if len(names) == 1 else names[1])
    chosen = st.selectbox("Run", names, key="train_run", help=f"Runs are kept in {runs.runs_root()}.")
    set_url_value("run", None if chosen == NEW_RUN else chosen)
    return chosen


def train_view(handle: models.ModelHandle) -> None:
    chosen = run_control()
    if chosen == NEW_RUN:
        settings = new_run_controls(handle)
        if st.button("Start training", type="primary", disabled=bool(settings.problems)):
            start_new_run(handle, settings)
    else:
        render_run(runs.runs_root() / chosen)


def apply_recipe() -> None:
    recipe = RECIPES[st.session_state.train_recipe]
    st.session_state.update({f"train_{name}": value for name, value in recipe.items()})


def new_run_controls(handle: models.ModelHandle) -> NewRunSettings:
    if "train_recipe" not in st.session_state:  # on a CPU, the recipe that shows patterns in a few thousand steps
        st.session_state.train_recipe = "shipped" if handle.device.type == "cpu" else "paper"
        apply_recipe()
    st.radio("Start from", list(RECIPES), horizontal=True, key="train_recipe", on_change=apply_recipe,
             format_func=RECIPE_LABELS.get)
    c1, c2, c3 = st.columns([2, 1, 1])
    name = c1.text_input("Name", "six-classes", key="train_name")
    size = c2.select_slider("Size (px)", [64, 128, 256, 512], value=128, key="train_size",
                            help="The paper trains at 512 on a GPU; 128 is the CPU default.")
    steps = c3.number_input("Steps", 10, 200_000, 2000, 100, key="train_steps")
    classes = st.multiselect("Classes (1 to 24)", list(handle.class_names),
                             default=[c for c in DEFAULT_CLASSES if c in handle.class_names] or [handle.class_names[0]],
                             key="train_classes", max_selections=24)
    paper_net = training.default_classifier() == "vgg16" and handle.name != "vgg16"
    st.caption(f"The critic is the sidebar's model, {handle.name}."
               + (" VGG16, the paper's classifier, is on this machine: pick it in the sidebar to train as the paper did."
                  if paper_net else ""))
    c1, c2, c3, c4 = st.columns(4)
    batch = c1.number_input("Batch", 1, 8, key="train_batch", help="The paper: 1-3.")
    lr = c2.number_input("Learning rate", 1e-5, 1e-2, format="%.5f", key="train_lr", help="The paper: 0.0002.")
    weights_text = c3.text_input("Loss weights cGAN, mask, classifier, substrate[, colour]", key="train_weights",
                                 help="The paper: 3 L_cGAN + 10 L_m + 50 L_VGG + 150 L_s. An optional fifth weight is "
                                      "our colour term: the garment's colour, averaged over 16 px blocks, should "
                                      "survive while the pattern (finer than a block) is free.")
    crops = c3.number_input("Crops for the other classes", 1, 8, key="train_crops",
                            help="The paper: three random crops must show none of the other classes.")
    grey = c4.toggle("Grey to the classifier", key="train_grey", help="Sec. 4: the paper found grey better.")
    noise = c4.toggle("Sample f(t) as the paper", key="train_noise",
                      help="The paper draws each active class tile from N(1, 2) ∪ N(-1, 2), which has mean 0: G can "
                           "only tell the class from the draw's spread, and on a CPU budget it learns one pattern for "
                           "all classes. Off: constant tiles, which G picks up in a few thousand steps.")
    gradcam = c4.toggle("Grad-CAM masking", False, key="train_gradcam",
                        help="The extension at the end of sec. 4: the substrate loss is relaxed where Grad-CAM sees "
                             "the class, so the pattern separates from the garment.")
    ensemble = c1.toggle(f"Also {ENSEMBLE_CRITIC} as a critic", key="train_ensemble",
                         disabled=handle.name == ENSEMBLE_CRITIC or not models.lite_available(ENSEMBLE_CRITIC),
                         help="A critic ensemble: the classifier loss is averaged over both networks, so the pattern "
                              "must convince more than one (our extension, issue 15).")
    eot = c2.toggle("Random views (EOT)", key="train_eot",
                    help="Each critic sees the pattern randomly zoomed, shifted, flipped and recoloured: what holds "
                         "up is a pattern rather than noise tuned to one view (our extension).")
    varied = c2.toggle("Varied garment shapes", key="train_varied",
                       help="Generated substrates also include random shapes, sizes, places and shading.")
    source = st.radio("Substrates", list(TRAINING_SOURCES), horizontal=True, key="train_substrates",
                      format_func=TRAINING_SOURCES.get)
    uploads, folder_text = [], ""
    if source == "upload":
        uploads = st.file_uploader(f"Garment photos on white (at least {substrates.MIN_SUBSTRATES})",
                                   accept_multiple_files=True, key="train_uploads") or []
    elif source == "folder":
        folder_text = st.text_input("Folder of garment images", key="train_folder")
    run_name, weights, problems = new_run_problems(name, classes, weights_text, source, uploads, folder_text, int(size))
    for problem in problems:
        st.warning(problem)
    per_step = (0.8 if ensemble else 0.3) * (size / 128) ** 2  # measured on a 2-core CPU (docs/benchmarks.md)
    st.caption(f"On a 2-core CPU one step at {size} px takes about {per_step:.1f} s "
               f"({int(steps) * per_step / 60:.0f} min for {int(steps)} steps); the CLI does the same: "
               f"`python -m engine patterns train --classes … --steps {int(steps)} --size {size} --out DIR`.")
    return NewRunSettings(run_name, tuple(classes), int(size), int(steps), int(batch), float(lr), weights, bool(grey),
                          bool(noise), bool(gradcam), bool(ensemble) and handle.name != ENSEMBLE_CRITIC, bool(eot),
                          bool(varied), int(crops), source, tuple(uploads), folder_text, tuple(problems))


def new_run_problems(name: str, classes: list[str], weights_text: str, source: str, uploads: list, folder_text: str,
                     size: int) -> tuple[str, PatternLossWeights | None, list[str]]:
    """The run's folder name, its loss weights, and every sentence that keeps the form from starting."""
    problems = []
    try:
        run_name = runs.safe_run_name(name)
    except GlassboxError as error:
        problems.append(str(error))
        run_name = ""
    if run_name and (runs.runs_root() / run_name).exists():
        problems.append(f"A run called '{run_name}' exists already; pick it above to resume it, or choose another name.")
    if not classes:
        problems.append("Pick at least one class.")
    try:
        weights = parse_weights(weights_text)
    except GlassboxError as error:
        problems.append(str(error))
        weights = None
    if source == "upload" and len(uploads) < substrates.MIN_SUBSTRATES:
        problems.append(f"Training needs at least {substrates.MIN_SUBSTRATES} substrate images; {len(uploads)} "
                        "uploaded so far.")
    if source == "folder":
        try:
            substrates.load_substrate_folder(Path(folder_text).expanduser(), size) if folder_text else None
        except GlassboxError as error:
            problems.append(str(error))
        if not folder_text:
            problems.append("Give the folder's path.")
    return run_name, weights, problems


def start_new_run(handle: models.ModelHandle, settings: NewRunSettings) -> None:
    """Write the run folder's config, start its training job and switch the page to the run."""
    folder = runs.runs_root() / settings.run_name
    try:
        substrate_dir = None
        if settings.source == "upload":
            runs.save_uploads(folder / "substrates", [(u.name, u.getvalue()) for u in settings.uploads])
            substrate_dir = str(folder / "substrates")
        elif settings.source == "folder":
            substrate_dir = str(Path(settings.folder).expanduser().resolve())
        config = training.TrainConfig(classes=tuple(handle.class_index(c) for c in settings.classes),
                                      model=handle.name, size=settings.size, batch=settings.batch, lr=settings.lr,
                                      weights=settings.weights, grayscale=settings.grey, gradcam_mask=settings.gradcam,
                                      substrates=substrate_dir, class_noise=settings.class_noise,
                                      critics=(ENSEMBLE_CRITIC,) if settings.ensemble else (), eot=settings.eot,
                                      shapes="varied" if settings.varied else "garments", crops=settings.crops)
        config.validate(handle)
        runs.write_run_config(folder, config, list(settings.classes))
    except GlassboxError as error:
        st.error(str(error))
        return
    if start_training(folder, config, settings.steps, resume=False) is None:
        return
    st.session_state._train_select = settings.run_name  # the select box exists already: switch to the run on the rerun
    st.rerun()


def render_run(folder: Path) -> None:
    """A run folder: live while its job runs, else its results, what went wrong, Resume and downloads."""
    status = run_job(folder)
    if status is not None and not status.finished:
        status = show_job(status.key, pool="training", live=lambda _status: render_live_run(folder), idle=None,
                          cancel_label="Stop")
        if status is None:  # still running: the shared fragment shows it, and reruns the page when it ends
            return
    activity = runs.run_activity(folder)  # what the run's own folder says, whichever server trains it
    if activity.elsewhere:
        st.info(activity.busy_sentence())
        watch(partial(render_remote_run, folder), every=2.0)
        return
    view = runs.view_run(folder)
    st.caption(run_summary(view))
    if activity.kind == "interrupted" and not activity.here:
        st.warning(activity.interrupted_sentence())
    elif status is not None and status.state is jobs.JobState.FAILED:
        where = f"step {view.checkpoint_steps}" if view.checkpoint_steps else "no checkpoint yet"
        st.error(f"The training stopped with an error: {status.error} The last checkpoint is at {where}; "
                 "resume below to continue from it.")
    elif status is not None and status.state is jobs.JobState.CANCELLED:
        st.warning("The training was stopped before it saved; resume below from the last checkpoint.")
    elif status is None and view.checkpoint_steps is not None and view.logged_steps > view.checkpoint_steps:
        st.warning(f"This run logged step {view.logged_steps} but its checkpoint is at step {view.checkpoint_steps}: "
                   "it was interrupted (a crash or a server restart). Resume continues from the checkpoint.")
    render_run_results(view)
    if view.checkpoint_steps is None:
        st.info("This run has no checkpoint yet, so it cannot be resumed; start a new run.")
        return
    c1, c2 = st.columns([1, 2])
    target = c1.number_input("Train until step", view.checkpoint_steps + 1, 1_000_000, view.checkpoint_steps + 1000,
                             100, key=f"resume_to_{folder.name}")
    if c2.button("Resume", type="primary", key=f"resume_{folder.name}"):
        if start_training(folder, None, int(target), resume=True) is None:
            return
        st.rerun()
    render_downloads(folder, view)


def render_remote_run(folder: Path) -> bool:
    """A run another server process trains (same cache): its progress from state.json and its files,
    redrawn every 2 s by the frame's watch(); False once it stopped (the page then reruns and offers
    Resume here)."""
    activity = runs.run_activity(folder)
    if not activity.elsewhere:
        return False
    step, steps = activity.step or 0, activity.steps or 0
    heard = time.strftime("%H:%M:%S", time.localtime(activity.heartbeat)) if activity.heartbeat else "?"
    st.progress(min(1.0, step / steps) if steps else 0.0,
                text=f"Training '{folder.name}' in pid {activity.server_pid}: step {step} of {steps} (last heard {heard})")
    view = runs.view_run(folder)
    st.caption(run_summary(view))
    render_run_results(view)
    return True


def render_live_run(folder: Path) -> None:
    """Drawn by the shared polling fragment under the job's progress row, from the run's own files."""
    st.caption("Stop saves a checkpoint at the current step, so the run can be resumed. Reloading the page or "
               "leaving it does not stop the training.")
    view = runs.view_run(folder)
    st.caption(run_summary(view))
    render_run_results(view)


def run_summary(view: runs.RunView) -> str:
    config = view.config or {}
    names = ", ".join(config.get("class_names", [])) or "?"
    saved = f"checkpoint at step {view.checkpoint_steps}" if view.checkpoint_steps is not None else "no checkpoint yet"
    extras = [k for k, on in (("grey", config.get("grayscale")), ("Grad-CAM mask", config.get("gradcam_mask")),
                              ("f(t) sampled", config.get("class_noise", True)),
                              ("own substrates", config.get("substrates"))) if on]
    weights = config.get("weights", {})
    return (f"{names} · {config.get('size', '?')} px · batch {config.get('batch', '?')} · lr {config.get('lr', '?')} · "
            f"weights {', '.join(f'{v:g}' for v in weights.values())}{' · ' + ', '.join(extras) if extras else ''} · "
            f"{saved}")


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def render_run_results(view: runs.RunView) -> None:
    """The latest sample grid, the loss curves and p(target), from the run's own files."""
    config = view.config or {}
    if view.sample is not None:
        names = config.get("class_names", [])
        step = int(view.sample.stem.removeprefix("step_"))
        st.image(str(view.sample), width=min(1000, 150 * (len(names) + 1)),
                 caption=f"Samples at step {step}: each row a fixed substrate, then each class "
                         f"({' · '.join(names)})")
    log = view.log
    if not log or len(log.get("step", ())) <= 1:
        return
    weights = config.get("weights", {})  # view_run gives older runs' weights today's names
    window = max(1, len(log["step"]) // 100)
    terms = {"cGAN (G)": weights.get("cgan", 0) * log["adversarial"], "mask": weights.get("mask", 0) * log["mask"],
             "classifier": weights.get("classifier", 0) * log["classifier"],
             "substrate": weights.get("substrate", 0) * log["substrate"]}
    figure = plots.inversion_loss_figure({k: smoothed(v, window) for k, v in terms.items()},
                                         smoothed(log["total"], window),
                                         target_prob=smoothed(log["target_prob"], window),
                                         target_label="target, batch", steps=log["step"][window - 1:])
    samples = view.sample_probs
    if samples and len(samples.get("step", ())):
        per_class = np.stack([v for k, v in samples.items() if k != "step"], 1)
        figure.add_trace(go.Scatter(x=samples["step"], y=per_class.mean(1), mode="lines+markers",
                                    name="p(target), sample grid (colour)", line=dict(color="#d6336c")),
                         secondary_y=True)
    st.markdown(f"**Weighted losses and p(target) per step** (training batch: moving mean over {window}; "
                "sample grid: the mean over its classes)")
    st.plotly_chart(figure, width="stretch", key=f"curves_{view.folder.name}")


def render_downloads(folder: Path, view: runs.RunView) -> None:
    c1, c2, c3 = st.columns(3)
    checkpoint = folder / "checkpoint.pt"
    c1.download_button("checkpoint.pt (resume elsewhere)", checkpoint.read_bytes, f"{folder.name}-checkpoint.pt",
                       key=f"dl_ck_{folder.name}")
    if (folder / "log.csv").is_file():
        c2.download_button("log.csv", (folder / "log.csv").read_bytes, f"{folder.name}-log.csv", "text/csv",
                           key=f"dl_log_{folder.name}")
    if view.sample is not None:
        c3.download_button("Latest sample grid PNG", view.sample.read_bytes, f"{folder.name}-{view.sample.name}",
                           "image/png", key=f"dl_grid_{folder.name}")


# --- Quick mode -------------------------------------------------------------------------------------------

def quick_controls(handle: models.ModelHandle) -> QuickSettings:
    """Quick mode's settings, every one kept in the URL (they make the job's key)."""
    size = url_widget(st.select_slider, "Size (px)", key="pat_size", param="size", default=QUICK_SIZES[0], parse=int,
                      options=QUICK_SIZES)
    substrate = substrate_controls(size, "quick", in_url=True)
    names = list(handle.class_names)
    weights = class_mix_controls(names, ["zebra"] if "zebra" in names else [names[0]], "quick", handle=handle)
    steps = url_widget(st.slider, "Steps", key="pat_steps", param="steps", default=80, parse=int, min_value=10,
                       max_value=200, step=10)
    grey = url_widget(st.toggle, "Show the classifier grey images (the paper found it better)", key="pat_grey",
                      param="grey", default=False, parse=parse_bool, dump=dump_bool)
    return QuickSettings(int(size), substrate, weights, int(steps), bool(grey))


def quick_job_key(handle: models.ModelHandle, settings: QuickSettings) -> str:
    return "|".join(["patterns-quick", handle.name, str(settings.size), str(settings.steps), str(settings.grey),
                     json.dumps(dict(settings.weights), sort_keys=True),
                     images.image_digest(settings.substrate.image.tobytes())])


def render_quick_result(handle: models.ModelHandle, settings: QuickSettings, result: quick.QuickResult) -> None:
    c1, c2 = st.columns(2)
    c1.image(settings.substrate.image, caption="substrate", width="stretch")
    c2.image(result.image, caption=f"after {len(result.total)} steps · p = {result.target_prob[-1]:.3f}",
             width="stretch")
    with c2:
        use_pattern_button(result.image, name=mix_name(settings.weights, settings.substrate.garment),
                           key="use_pattern_quick")
    render_top5(handle, result.image, highlight=None, title="The classifier on the result", key="quick_bar")
    st.download_button("Pattern PNG", lambda: images.to_png_bytes(result.image), "pattern.png", "image/png")


def quick_view(handle: models.ModelHandle) -> None:
    left, right = st.columns([1, 2])
    with left:
        settings = quick_controls(handle)
    if settings.substrate is None:
        return
    if not settings.weights:
        right.info("Pick at least one class.")
        return
    key = quick_job_key(handle, settings)
    with right:
        st.caption("Optimises this one garment's pixels with the GAN's own losses (classifier on the whole image and "
                   "on crops, substrate, mask), with no generator: quick, but it only ever makes one picture.")
        def start() -> None:
            names = [name for name, _ in settings.weights]
            start_job(key, quick.quick_pattern, handle, settings.substrate.image, settings.substrate.background, names,
                      [weight for _, weight in settings.weights],
                      quick.QuickConfig(steps=settings.steps, grayscale=settings.grey),
                      title=f"Quick pattern: {', '.join(names)}")

        if st.button("Paint", type="primary"):
            start()
        status = show_job(key, idle="Press **Paint** to start.", cancelled="Cancelled. Press **Paint** to start again.",
                          again=start)
        if status is not None:
            render_quick_result(handle, settings, status.result)


# --- Quality report ---------------------------------------------------------------------------------------

def generator_files() -> dict[str, Path]:
    """Label -> generator file: the shipped one and every run trained here."""
    files = {"Shipped generator": generate.SHIPPED}
    for folder in runs.list_runs():
        if (folder / "checkpoint.pt").is_file():
            files[f"Run '{folder.name}' trained here"] = folder / "checkpoint.pt"
    return files


def quality_view(handle: models.ModelHandle) -> None:
    from engine.patterns import quality

    st.markdown("Each class of a generator painted on garments of **shapes it never trained on** (a tote bag, a "
                "scarf, a cap, …, in colour), then scored as issue 15 asks: how much it changes the garment, how "
                "little the white background, how sure its own critic is, and how often networks read the class "
                "in their top 5 — above all one the generator **never saw**.")
    files = generator_files()
    c1, c2 = st.columns([1, 1])
    label = c1.selectbox("Generator", list(files), key="quality_generator")
    folder = c2.text_input("Garment folder (empty: the shipped held-out garments)", "", key="quality_folder",
                           help="Images of garments on a white background; near-white pixels count as background.")
    path = files[label]
    if not path.is_file():
        st.error(f"There is no generator at {path}.")
        return
    key = f"pattern-quality|{path}@{path.stat().st_mtime_ns}|{folder.strip()}"
    def start() -> None:
        start_job(key, quality.quality_run, str(path), folder.strip() or None, title=f"Scoring {label}")

    if st.button("Score", type="primary", key="quality_run"):
        start()
    status = show_job(key, idle="Press **Score** to paint every class on every garment and score them (about a "
                                "minute on a CPU).", again=start)
    if status is not None:
        render_quality(status.result)


def render_quality(result: dict) -> None:
    from engine.patterns.quality import GOALS

    mean = result["mean"]
    unseen = list(mean["top5"])[-1] if mean["top5"] else None
    checks = [("Change inside the garment", mean["change_inside"], f"≥ {GOALS['change_inside']}",
               mean["change_inside"] >= GOALS["change_inside"]),
              ("Change of the background", mean["change_outside"], f"≤ {GOALS['change_outside']}",
               mean["change_outside"] <= GOALS["change_outside"]),
              (f"p(target), {result['critic']}", mean["critic_prob"], f"≥ {GOALS['critic_prob']}",
               mean["critic_prob"] >= GOALS["critic_prob"])]
    if unseen:
        checks.append((f"{unseen} top-5", mean["top5"][unseen], f"≥ {GOALS['unseen_top5']:.0%}",
                       mean["top5"][unseen] >= GOALS["unseen_top5"]))
    for column, (name, value, goal, met) in zip(st.columns(len(checks)), checks):
        shown = f"{value:.0%}" if "top-5" in name else f"{value:.3f}"
        column.metric(name, shown, f"goal {goal}: {'met' if met else 'not met'}", delta_color="normal" if met else "inverse",
                      delta_arrow="off")
    st.caption(f"Means over {len(result['classes'])} classes × {len(result['garments'])} garments; changes are in "
               "units of the full range (0.10 ≈ 26 of 255 levels).")
    st.markdown(result["markdown"])
    st.image(result["gallery"], caption="The first garments (rows): the bare garment, then each class: "
             + ", ".join(result["class_names"]), width="stretch")
    report = {k: v for k, v in result.items() if k not in ("gallery", "markdown")}
    st.download_button("Report JSON", json.dumps(report, indent=1), "pattern-quality.json", "application/json")


# --- Fig. 2: the classic GAN -------------------------------------------------------------------------------

def classic_view(handle: models.ModelHandle) -> None:
    from engine.patterns import classic

    st.markdown("**The paper's Fig. 2.** A *classic* GAN draws the image from noise alone; the conditional GAN "
                "starts from the garment. Both are asked the same thing by the classifier. The paper found the "
                "classic GAN \"unable to restore a distribution of unknown nature\": without a substrate nothing "
                "ties the picture to a garment, and what convinces the classifier is not a print you could wear.")
    if not classic.SHIPPED_CLASSIC.is_file():
        st.info(f"No classic GAN is shipped ({classic.SHIPPED_CLASSIC.name} is missing). Train one with "
                "`python -m engine patterns classic --classes zebra tabby --steps 2000 --out runs/classic "
                "--export assets/patterns/classic-gan.pt`.")
        return
    try:
        made = cache.classic_comparison(str(classic.SHIPPED_CLASSIC), classic.SHIPPED_CLASSIC.stat().st_mtime_ns,
                                        str(generate.SHIPPED), generate.SHIPPED.stat().st_mtime_ns)
    except GlassboxError as error:
        st.error(str(error))
        return
    st.caption(f"Classic GAN: {made['steps']} steps against {made['model']}, from noise; cGAN: the shipped "
               f"generator on a held-out garment. p = {made['model']}'s probability of the class.")
    for row in made["rows"]:
        cells = st.columns([1.2] + [1] * (len(row["classic"]) + 1) + [1.5])[:len(row["classic"]) + 2]
        cells[0].markdown(f"**{row['name']}**")
        for cell, (picture, prob) in zip(cells[1:], row["classic"]):
            cell.image(picture, caption=f"classic GAN, p = {prob:.2f}", width="stretch")
        if row["cgan"] is not None:
            picture, prob = row["cgan"]
            cells[-1].image(picture, caption=f"cGAN on a garment, p = {prob:.2f}", width="stretch")


# --- The page ---------------------------------------------------------------------------------------------

def mode_control() -> str:
    return url_widget(st.segmented_control, "Mode", key="pat_mode", param="mode", default="generate",
                      options=list(MODES), format_func=MODES.get, required=True)


def main() -> None:
    selection, handle = page_header(
        "Patterns", "Chaplygin & Chacksfield (2019): a conditional GAN learns to paint what the classifier believes a "
        "class looks like onto a blank garment. The classifier is the critic: the whole image must show the "
        "wanted class, random crops must show none of the others, and the garment and its white background "
        "should survive.")
    mode = mode_control()
    {"generate": generate_view, "quality": quality_view, "classic": classic_view, "train": train_view,
     "quick": quick_view}[mode](handle)


main()
