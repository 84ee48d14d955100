"""Saliency: which pixels made the model decide? Methods side by side, scored for faithfulness.

Every setting that goes into a job's key (methods, class, layer, the slow methods' settings, the
compared method and second class, the faithfulness settings) lives in the page's link, so a reload
or a second tab finds the running or finished slow maps and the faithfulness scores by itself.

When the current image was made from another ("Use as the image" on a relabelled photo, ...), the
page adds "Compare with the original": one quick method, one class, on both images, on one colour
scale, so "the model now says half-track: where is it looking?" has an answer on one screen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable

import numpy as np
import streamlit as st

from engine import cache, images, io, models, plots, saliency
from engine.errors import GlassboxError
from engine.jobs import JobStatus
from streamlit_app import (Selection, class_picker, find_job, page_header, set_url_value, show_job, show_jobs,
                           start_job, url_value, url_widget)

DEFAULT_METHODS = ("gradcam", "gradcampp", "gradient", "occlusion")
PRESETS = {
    "Pixel saliency is class dependent": dict(sample="chelsea", methods="gradcam,occlusion", cls="285", cls2="282",
                                              text="One photo, two classes (Egyptian cat vs tiger cat), like the lecture's sheep vs cow."),
    "White box vs black box": dict(sample="coffee", methods="gradient,gradcam,occlusion,rise", cls="967", cls2="968",
                                   text="Gradients against masking on the espresso photo."),
    "Slide a square occluder": dict(sample="motorcycle_left", methods="occlusion", cls=None, cls2=None,
                                    text="The class probability as a function of the occluder's position."),
}
FILLS = ("grey", "black", "blur")
BASELINES = ("black", "grey")
DELETION_FILLS = ("black", "grey", "blur")
INSERTION_FILLS = ("blur", "black", "grey")
SLOW_LIMITS = {"patch": (4, 224), "stride": (2, 224), "masks": (50, 8000), "grid": (2, 16), "keep": (0.1, 0.9),
               "steps": (2, 300)}  # the widgets' ranges: a link's value is clamped into them
SLOW_CHOICES = {"fill": FILLS, "baseline": BASELINES}
RUN_SLOW = "Run the slow methods"
RUNNING = "Running… progress is shown below the maps."
IDLE_SLOW = "A slow method: open *Settings of the slow methods* and press **Run the slow methods**."
ORIGINAL_CLASSES = ("current", "original")  # which image's top class the original-vs-current maps explain


# ---------------------------------------------------------------------------------------------
# What the controls chose (frozen: each one keys a job or a cached map)


@dataclass(frozen=True)
class SlowSettings:
    """The slow methods' settings, kept in the link as ``slow=patch:24,stride:8,...`` (defaults left out)."""

    patch: int = 32
    stride: int = 16
    fill: str = "grey"
    masks: int = 1000
    grid: int = 7
    keep: float = 0.5
    steps: int = 32
    baseline: str = "black"

    @classmethod
    def from_url(cls, text: str | None) -> "SlowSettings":
        """A hand-edited link with a bad value keeps that value's default; numbers are clamped to the widgets."""
        values = asdict(cls())
        for item in (text or "").split(","):
            name, _, raw = item.partition(":")
            if name not in values or not raw:
                continue
            try:
                value = type(values[name])(raw)
            except ValueError:
                continue
            if name in SLOW_LIMITS:
                low, high = SLOW_LIMITS[name]
                value = type(values[name])(min(max(value, low), high))
            if name in SLOW_CHOICES and value not in SLOW_CHOICES[name]:
                continue
            values[name] = value
        return cls(**values)

    def url_text(self) -> str | None:
        default = SlowSettings()
        changed = [f"{item.name}:{getattr(self, item.name)}" for item in fields(self)
                   if getattr(self, item.name) != getattr(default, item.name)]
        return ",".join(changed) or None


@dataclass(frozen=True)
class MapSettings:
    methods: tuple[str, ...]
    target: int
    layer: str | None  # None: no CAM method is chosen (the CAM methods then use the default layer)


@dataclass(frozen=True)
class DisplaySettings:
    opacity: float
    shared: bool
    signed: bool


@dataclass(frozen=True)
class OriginalSettings:
    """The "Compare with the original" section: one quick method, and whose top class it explains."""

    method: str
    whose: str  # one of ORIGINAL_CLASSES


@dataclass(frozen=True)
class PairSettings:
    method: str
    second: int


@dataclass(frozen=True, eq=False)
class Subject:
    """The model and image every map on the page explains."""

    handle: models.ModelHandle
    selection: Selection
    view: np.ndarray  # uint8, the square crop the model sees
    ranking: models.Prediction

    def tensor(self):
        return images.to_tensor(self.view, device=self.handle.device)


@dataclass(frozen=True)
class MapRequest:
    """One map the page shows: a method's map of one class with one config."""

    method: str
    target: int
    config: saliency.MethodConfig

    @property
    def slow(self) -> bool:
        return saliency.METHODS[self.method].slow

    def job_key(self, subject: Subject) -> str:
        """One scan holds every class's map, so a scan's job does not depend on the class."""
        scope = "any class" if saliency.METHODS[self.method].covers_every_class else str(self.target)
        return "|".join(["saliency", subject.handle.name, subject.selection.digest, self.method, scope,
                         json.dumps(self.config.as_dict(), sort_keys=True)])


@dataclass(frozen=True)
class MapOutcome:
    result: saliency.Explanation | None = None
    running: bool = False
    error: str | None = None


def method_label(key: str) -> str:
    return saliency.METHODS[key].label + (" (slow)" if saliency.METHODS[key].slow else "")


def map_request(method: str, target: int, layer: str | None, slow: SlowSettings) -> MapRequest:
    """The method's config from the page's flat settings (each config takes the fields it has)."""
    return MapRequest(method, target, saliency.config_from(method, {"layer": layer, **asdict(slow)}))


# ---------------------------------------------------------------------------------------------
# Controls


def preset_controls() -> None:
    """Presets a teacher can open with one click: they set the link and rerun."""
    with st.expander("Presets from the lecture", icon=":material/school:"):
        st.caption("Each sets the image, the classes and the methods; the sidebar model stays as it is.")
        for column, (name, preset) in zip(st.columns(3), PRESETS.items()):
            with column:
                if st.button(name, key=f"preset_{name}", width="stretch"):
                    apply_preset(preset)
                st.caption(preset["text"])


def apply_preset(preset: dict) -> None:
    st.session_state["_next_sample"] = preset["sample"]  # the sidebar applies it on the rerun
    for key, value in (("methods", preset["methods"]), ("class", preset["cls"]), ("class2", preset["cls2"])):
        set_url_value(key, value)
    for key in [k for k in st.session_state if str(k).startswith(("_class_", "sal_methods"))]:
        del st.session_state[key]
    st.rerun()


def methods_widget(offered: list[str]) -> list[str]:
    """The methods multiselect, bound to ``methods=`` in the link."""
    def parse(text: str) -> list[str]:
        chosen = [method for method in text.split(",") if method in offered]
        if text and not chosen:
            raise ValueError(text)
        return chosen

    def multiselect(label: str, **kwargs) -> list[str]:
        return st.multiselect(label, offered, format_func=method_label, **kwargs)

    default = [method for method in DEFAULT_METHODS if method in offered]
    return url_widget(multiselect, "Methods", key="sal_methods", param="methods", default=default,
                      parse=parse, dump=",".join)


def layer_widget(handle: models.ModelHandle) -> str:
    names = [info.name for info in handle.layers]
    if st.session_state.get("sal_layer") not in (None, *names):  # the previous model's layer
        del st.session_state["sal_layer"]
        set_url_value("layer", None)

    def describe(name: str) -> str:
        info = handle.layer(name)
        return f"{name} · {info.channels}×{info.height}×{info.width}"

    return url_widget(st.selectbox, "Layer (Grad-CAM methods)", key="sal_layer", param="layer",
                      default=handle.default_layer, options=names, format_func=describe,
                      help="Later layers are coarser but more class-specific. Default: the last feature map.")


def map_controls(subject: Subject, offered: list[str]) -> MapSettings:
    handle, ranking = subject.handle, subject.ranking
    top_left, top_mid, top_right = st.columns([3, 2, 2], gap="medium")
    with top_left:
        chosen = methods_widget(offered)
    with top_mid:
        target = class_picker(handle, label="Explain the class", default=ranking.indices[0],
                              help="Defaults to the top-1 class; type to search.")
        st.caption(f"p = {100 * ranking.probs[ranking.rank_of(target)]:.1f} %, rank {ranking.rank_of(target) + 1}")
    layer = None
    with top_right:
        if any(saliency.METHODS[method].uses_layer for method in chosen):
            layer = layer_widget(handle)
    return MapSettings(tuple(chosen), target, layer)


def display_controls() -> DisplaySettings:
    left, mid, right = st.columns([3, 2, 2], gap="medium")
    with left:
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="sal_opacity")
    with mid:
        shared = st.radio("Colour scale", ["per map", "shared"], horizontal=True, key="sal_shared",
                          help="Shared puts every map on one range: right for maps in the same units, e.g. one method for two classes.") == "shared"
    with right:
        signed = st.radio("Values", ["absolute", "signed"], horizontal=True, key="sal_signed",
                          help="Signed keeps negative evidence (blue) for methods that have it: integrated gradients, occlusion.") == "signed"
    return DisplaySettings(opacity, shared, signed)


def slow_controls() -> tuple[SlowSettings, bool]:
    """The slow methods' settings form, seeded from the link; (settings, Run pressed)."""
    for name, value in asdict(SlowSettings.from_url(url_value("slow"))).items():
        st.session_state.setdefault(f"sal_slow_{name}", value)
    with st.expander("Settings of the slow methods", icon=":material/tune:", expanded=False):
        with st.form("slow_settings", border=False):
            occlusion, rise, integrated = st.columns(3)
            with occlusion:
                st.markdown("**Occlusion**")
                patch = st.number_input("Patch size (px)", 4, 224, step=4, key="sal_slow_patch")
                stride = st.number_input("Stride (px)", 2, 224, step=2, key="sal_slow_stride")
                fill = st.selectbox("Fill", FILLS, key="sal_slow_fill")
            with rise:
                st.markdown("**RISE**")
                masks = st.number_input("Masks", 50, 8000, step=50, key="sal_slow_masks")
                grid = st.number_input("Grid cells per side", 2, 16, key="sal_slow_grid")
                keep = st.slider("Keep probability", 0.1, 0.9, step=0.05, key="sal_slow_keep")
            with integrated:
                st.markdown("**Integrated gradients**")
                steps = st.number_input("Steps", 2, 300, step=2, key="sal_slow_steps")
                baseline = st.selectbox("Baseline", BASELINES, key="sal_slow_baseline")
            run = st.form_submit_button(RUN_SLOW, type="primary")
    settings = SlowSettings(patch=int(patch), stride=int(stride), fill=fill, masks=int(masks), grid=int(grid),
                            keep=float(keep), steps=int(steps), baseline=baseline)
    set_url_value("slow", settings.url_text())  # a reload computes the same job keys from the link
    return settings, run


def pair_controls(subject: Subject, offered: list[str]) -> PairSettings:
    options = [m for m in offered if not saliency.METHODS[m].slow] + [m for m in offered if saliency.METHODS[m].slow]
    left, mid, _ = st.columns([2, 3, 2])
    method = url_widget(left.selectbox, "Method", key="sal_compare_method", param="compare", default=options[0],
                        options=options, format_func=method_label)
    with mid:
        second = class_picker(subject.handle, label="Second class", key="class2", default=subject.ranking.indices[1])
    return PairSettings(method, second)


def original_controls(subject: Subject, original: models.Prediction, offered: list[str]) -> OriginalSettings:
    """Quick methods only: a scan (occlusion, RISE) would be two jobs, and this section is a glance."""
    quick = [method for method in offered if not saliency.METHODS[method].slow]
    names = {"current": f"{subject.ranking.labels[0]} (the current image's top class)",
             "original": f"{original.labels[0]} (the original's top class)"}
    left, right = st.columns([2, 3], gap="medium")
    method = url_widget(left.selectbox, "Method", key="sal_orig_method", param="orig_method",
                        default="gradcam" if "gradcam" in quick else quick[0], options=quick, format_func=method_label)
    whose = url_widget(right.radio, "Explain the class", key="sal_orig_class", param="orig_class",
                       default=ORIGINAL_CLASSES[0], options=ORIGINAL_CLASSES, format_func=names.get, horizontal=True)
    return OriginalSettings(method, whose)


def faithfulness_controls(count: int) -> tuple[saliency.FaithfulnessConfig, bool]:
    """Steps and fills, bound to the link (they key the scoring job); (config, Score pressed)."""
    with st.form("faithfulness_form", border=False):
        steps_column, deletion_column, insertion_column = st.columns(3)
        steps = url_widget(steps_column.number_input, "Steps", key="sal_faith_steps", param="faith_steps",
                           default=32, parse=int, min_value=4, max_value=224, step=4)
        deletion_fill = url_widget(deletion_column.selectbox, "Deleted pixels become", key="sal_deletion_fill",
                                   param="deletion", default=DELETION_FILLS[0], options=DELETION_FILLS)
        insertion_fill = url_widget(insertion_column.selectbox, "Insertion starts from", key="sal_insertion_fill",
                                    param="insertion", default=INSERTION_FILLS[0], options=INSERTION_FILLS)
        score = st.form_submit_button(f"Score the {count} maps shown", disabled=not count)
    config = saliency.FaithfulnessConfig(steps=int(steps), deletion_fill=deletion_fill, insertion_fill=insertion_fill)
    return config, score


# ---------------------------------------------------------------------------------------------
# Maps: fast ones from the cache, slow ones as jobs


def fast_outcome(subject: Subject, request: MapRequest) -> MapOutcome:
    try:
        result = cache.explanation(subject.handle.name, subject.selection.digest, subject.selection.image_bytes,
                                   request.method, request.target, json.dumps(request.config.as_dict(), sort_keys=True))
    except GlassboxError as error:
        return MapOutcome(error=str(error))
    return MapOutcome(result=result)


def slow_statuses(subject: Subject, requests: list[MapRequest], *, start: bool) -> dict[str, JobStatus | None]:
    """Each slow request's job by key: found, or started when Run was pressed."""
    statuses: dict[str, JobStatus | None] = {}
    for request in requests:
        key = request.job_key(subject)
        if key in statuses:
            continue
        if start:
            handle = subject.handle
            statuses[key] = start_job(key, saliency.explain, handle, subject.tensor(), request.method, request.target,
                                      request.config,
                                      title=f"{saliency.METHODS[request.method].label} · {handle.class_names[request.target]}")
        else:
            statuses[key] = find_job(key)
    return statuses


def slow_outcome(subject: Subject, request: MapRequest, status: JobStatus | None) -> MapOutcome:
    if status is None:
        return MapOutcome()
    if status.done:
        result = status.result
        if result.target != request.target:  # a scan made for another class: re-read it, no new passes
            result = result.for_class(request.target, subject.handle.class_names[request.target])
        return MapOutcome(result=result)
    return MapOutcome(running=not status.finished, error=status.error)


def map_outcomes(subject: Subject, requests: list[MapRequest], *, start_slow: bool,
                 progress_area) -> dict[MapRequest, MapOutcome]:
    """Every request's outcome; the running slow jobs are polled in ``progress_area``."""
    slow = [request for request in requests if request.slow]
    with progress_area:  # a refused start is said here, where the progress rows go
        statuses = slow_statuses(subject, slow, start=start_slow)
        running = [key for key, status in statuses.items() if status is not None and not status.finished]
        statuses.update(show_jobs(running, idle=None))  # jobs that ended meanwhile come back done
        for request in {request.job_key(subject): request for request in slow}.values():
            if statuses.get(request.job_key(subject)) is None:  # says so if a server restart lost it
                show_job(request.job_key(subject), idle=None,
                         again=lambda request=request: slow_statuses(subject, [request], start=True))
    return {request: (slow_outcome(subject, request, statuses[request.job_key(subject)]) if request.slow
                      else fast_outcome(subject, request)) for request in dict.fromkeys(requests)}


# ---------------------------------------------------------------------------------------------
# Drawing


def display_values(result: saliency.Explanation, display: DisplaySettings) -> np.ndarray:
    return plots.display_map(result.saliency, signed=display.signed and result.signed)


def render_downloads(subject: Subject, result: saliency.Explanation, overlay: Callable[[], np.ndarray],
                     key: str) -> None:
    """The card's files, each made when its button is pressed (not on every rerun of the page)."""
    selection = subject.selection
    stem = saliency.file_stem(result, selection.image_name)

    def manifest() -> str:
        return io.manifest_json(saliency.manifest(result, subject.handle, image_sha256=selection.digest,
                                                  image_name=selection.image_name))

    with st.popover("Files", icon=":material/download:", width="stretch"):
        st.download_button("Overlay (PNG)", lambda: images.to_png_bytes(overlay()), f"{stem}.png", "image/png",
                           key=f"png_{key}")
        st.download_button("Raw map (.npy)", lambda: saliency.npy_bytes(result.saliency), f"{stem}.npy",
                           "application/octet-stream", key=f"npy_{key}")
        st.download_button("Manifest (JSON)", manifest, f"{stem}.json", "application/json", key=f"json_{key}")


def render_waiting_card(method: str, outcome: MapOutcome) -> None:
    st.markdown(f"**{saliency.METHODS[method].label}**")
    if outcome.error:
        st.error(outcome.error)
    elif outcome.running:
        st.info(RUNNING)
    else:
        st.info(IDLE_SLOW)


def render_map_card(subject: Subject, method: str, outcome: MapOutcome, values: np.ndarray | None,
                    colour_range: tuple[float, float] | None, display: DisplaySettings) -> None:
    with st.container(border=True):
        result = outcome.result
        if result is None:
            render_waiting_card(method, outcome)
            return
        zmin, zmax = colour_range
        scale = plots.SIGNED_SCALE if zmin < 0 else plots.UNSIGNED_SCALE
        title = f"{result.label} · {result.target_label}" + (f" · {result.layer}" if result.layer else "")
        st.plotly_chart(plots.saliency_figure(subject.view, values, title=title, zmin=zmin, zmax=zmax,
                                              opacity=display.opacity, scale=scale),
                        width="stretch", config={"displayModeBar": False}, key=f"map_{method}")
        if result.occlusion is not None:
            render_occluder_popover(result, method)
        left, right = st.columns([1, 1])
        left.caption(f"{result.seconds:.2f} s · {'signed' if result.signed else 'non-negative'}")
        with right:
            render_downloads(subject, result, partial(plots.overlay_rgb, subject.view, values, zmin=zmin, zmax=zmax,
                                                      opacity=display.opacity, scale=scale), method)


def render_occluder_popover(result: saliency.Explanation, method: str) -> None:
    scan = result.occlusion
    with st.popover("Probability vs occluder position", icon=":material/grid_on:"):
        st.plotly_chart(plots.occlusion_figure(scan.probability_map(result.target), scan.ys, scan.xs, scan.patch,
                                               title=f"p({result.target_label}) with the occluder centred here"),
                        width="stretch", key=f"occ_{method}")


def render_grid(subject: Subject, outcomes: dict[str, MapOutcome], display: DisplaySettings) -> None:
    drawn = {method: display_values(outcome.result, display) for method, outcome in outcomes.items()
             if outcome.result is not None}
    ranges = dict(zip(drawn, plots.colour_range(list(drawn.values()), signed=display.signed, shared=display.shared)))
    if not outcomes:
        st.info("Pick one or more methods above.")
    columns = st.columns(3)
    for i, (method, outcome) in enumerate(outcomes.items()):
        with columns[i % 3]:
            render_map_card(subject, method, outcome, drawn.get(method), ranges.get(method), display)


def render_pair(subject: Subject, method: str, pair: list[MapOutcome], display: DisplaySettings) -> None:
    ready = [outcome.result for outcome in pair if outcome.result is not None]
    if len(ready) < 2:
        errors = [outcome.error for outcome in pair if outcome.error]
        if errors:
            st.error(errors[0])
        else:
            st.info(f"{saliency.METHODS[method].label} is slow: press **Run the slow methods** to compute both classes.")
        return
    ranking = subject.ranking
    values = [display_values(result, display) for result in ready]
    ranges = plots.colour_range(values, signed=display.signed and ready[0].signed, shared=True)
    for column, result, shown, (zmin, zmax) in zip(st.columns(2), ready, values, ranges):
        probability = ranking.probs[ranking.rank_of(result.target)]
        column.plotly_chart(plots.saliency_figure(subject.view, shown,
                                                  title=f"{result.label} · {result.target_label} ({100 * probability:.1f} %)",
                                                  zmin=zmin, zmax=zmax, opacity=display.opacity,
                                                  scale=plots.SIGNED_SCALE if zmin < 0 else plots.UNSIGNED_SCALE),
                            width="stretch", config={"displayModeBar": False}, key=f"pair_{result.target}_{method}")


def original_section(subject: Subject, offered: list[str], layer: str | None, slow: SlowSettings,
                     display: DisplaySettings) -> None:
    """The original and the current (derived) image side by side: one method, one class, one shared
    colour range, and each image's probability of that class. Nothing when the image has no parent."""
    parent = subject.selection.parent()
    if parent is None:
        return
    handle, selection = subject.handle, subject.selection
    name, data, digest = parent
    st.subheader("Compare with the original")
    try:
        original = cache.prediction(handle.name, digest, data, handle.num_classes)
        original_view = cache.model_view(handle.name, digest, data)
    except GlassboxError as error:
        st.error(f"The original image ({name}) could not be read: {error}")
        return
    settings = original_controls(subject, original, offered)
    target = (subject.ranking if settings.whose == "current" else original).indices[0]
    config_key = json.dumps(map_request(settings.method, target, layer, slow).config.as_dict(), sort_keys=True)
    try:
        maps = [cache.explanation(handle.name, digest, data, settings.method, target, config_key),
                cache.explanation(handle.name, selection.digest, selection.image_bytes, settings.method, target,
                                  config_key)]
    except GlassboxError as error:
        st.error(str(error))
        return
    signed = display.signed and maps[0].signed
    values = [display_values(result, display) for result in maps]
    (zmin, zmax), _ = plots.colour_range(values, signed=signed, shared=True)
    label = handle.class_names[target]
    sides = ((f"Original · {name}", original_view, original), (f"Now · {selection.image_name}", subject.view,
                                                               subject.ranking))
    for column, (title, view, ranking), shown, side in zip(st.columns(2), sides, values, ("original", "current")):
        probability = ranking.probs[ranking.rank_of(target)]
        column.plotly_chart(plots.saliency_figure(view, shown, title=f"{title} · p({label}) {100 * probability:.1f} %",
                                                  zmin=zmin, zmax=zmax, opacity=display.opacity,
                                                  scale=plots.SIGNED_SCALE if zmin < 0 else plots.UNSIGNED_SCALE),
                            width="stretch", config={"displayModeBar": False}, key=f"orig_map_{side}")
    st.caption(f"{maps[0].label} of **{label}** on both images, on one colour scale ({zmin:.3g} to {zmax:.3g}, "
               "the range over both maps), not each map stretched to its own maximum: a weaker map looks weaker. "
               f"p({label}): {100 * original.probs[original.rank_of(target)]:.1f} % on the original, "
               f"{100 * subject.ranking.probs[subject.ranking.rank_of(target)]:.1f} % now.")


def render_faithfulness(scores: dict[str, saliency.Faithfulness]) -> None:
    st.plotly_chart(plots.faithfulness_figure(scores), width="stretch", key="faith_plot")
    st.dataframe([{"method": label, "deletion AUC ↓": round(r.deletion_auc, 4), "insertion AUC ↑": round(r.insertion_auc, 4)}
                  for label, r in scores.items()], hide_index=True)


def faithfulness_key(subject: Subject, target: int, config: saliency.FaithfulnessConfig,
                     finished: dict[str, saliency.Explanation]) -> str:
    return "|".join(["faithfulness", subject.handle.name, subject.selection.digest, str(target),
                     json.dumps(config.as_dict()),
                     *[f"{m}:{json.dumps(r.config, sort_keys=True)}" for m, r in finished.items()]])


def faithfulness_section(subject: Subject, target: int, finished: dict[str, saliency.Explanation]) -> None:
    st.subheader("Faithfulness: deletion and insertion")
    st.caption("Remove the most salient pixels first (deletion) or add them to a blurred copy first (insertion) and "
               "watch the target probability (Petsiuk et al. 2018). A faithful map makes the deletion curve fall "
               "fast (low AUC) and the insertion curve rise fast (high AUC).")
    config, score = faithfulness_controls(len(finished))
    key = faithfulness_key(subject, target, config, finished)
    if score and finished:
        start_job(key, saliency.score_maps, subject.handle, subject.tensor(),
                  {result.label: result.saliency for result in finished.values()}, target, config,
                  title="Deletion and insertion")
    done = show_job(key, idle=None, cancelled="Cancelled. Press **Score the maps shown** to start again.")
    if done is not None:
        render_faithfulness(done.result)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    selection, handle = page_header(
        "Saliency", "Which parts of the image played the most important role in the network's decision? White-box "
        "methods follow the gradient of the class score; black-box methods hide parts of the image and "
        "watch the probability change. Each map explains one class.")
    try:
        ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
    except GlassboxError as error:
        st.error(str(error))
        return
    subject = Subject(handle, selection, cache.model_view(handle.name, selection.digest, selection.image_bytes),
                      ranking)
    offered = saliency.available_methods(handle)
    preset_controls()
    if len(offered) < len(saliency.METHODS):
        st.info("This model has no convolutional layer with a spatial output, so the Grad-CAM methods are not offered.")
    chosen = map_controls(subject, offered)
    display = display_controls()
    slow, run_slow = slow_controls()
    grid_area, progress_area = st.container(), st.container()
    original_section(subject, offered, chosen.layer, slow, display)

    st.subheader("Pixel saliency is class dependent")
    st.caption("The same method for two classes of the same photo, on one colour scale.")
    pair = pair_controls(subject, offered)

    grid_requests = {method: map_request(method, chosen.target, chosen.layer, slow) for method in chosen.methods}
    pair_requests = [map_request(pair.method, cls, chosen.layer, slow) for cls in (chosen.target, pair.second)]
    outcomes = map_outcomes(subject, [*grid_requests.values(), *pair_requests], start_slow=run_slow,
                            progress_area=progress_area)
    grid = {method: outcomes[request] for method, request in grid_requests.items()}
    with grid_area:
        render_grid(subject, grid, display)
    render_pair(subject, pair.method, [outcomes[request] for request in pair_requests], display)

    finished = {method: outcome.result for method, outcome in grid.items() if outcome.result is not None}
    faithfulness_section(subject, chosen.target, finished)


main()
