"""Lecture: the lecture's story, one step per screen, each a live demo on the sidebar's image.

The lecture ("What has been learned by ConvNets?" then "Fooling ConvNets") goes: what the network says,
where it looks, what its units detect, what it has learned, how easily it is fooled, and a network
built to be harder to fool. Each step here runs the real engine on the current image through the same
caches and job keys as its full page, so a result computed here opens at once on that page and the
other way round. Steps whose page does not exist are left out. The step lives in the link
(``?step=relabel`` or ``?step=6``); with ``?present=1`` (streamlit_app.presenter_mode) each step
shows only its essential control, in large type for a projector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import streamlit as st

from engine import attacks, cache, dissection, images, jobs, models, plots, saliency
from engine.errors import GlassboxError
from streamlit_app import (PAGES, Selection, class_picker, enter_presenter_mode, ensure_frame, leave_presenter_mode,
                           presenter_mode, require_model, set_url_value, show_job, start_job, url_value, url_widget)

TITLE = "Lecture"
HALF_TRACK = 586  # Robinson & Graham's Fig. 1: the cat becomes a half-track
RELABEL_CAP, RELABEL_STEPS = 0.01, 300  # the Relabel page's defaults, so the two share the job
DISSECT_IMAGES = 200  # this step's own small run: enough for the top 0.5 % at a 7x7 layer, seconds on a CPU
DISSECT_PAGE_IMAGES, DISSECT_SIZE = 1000, 224  # the Dissection page's default set, read from disk when it ran
UAP_SETTINGS = {"method": "sgd", "norm": "inf", "xi": 10.0, "max_passes": 5, "target_fooling": 0.8}  # the lab's preset
UAP_TRAIN, UAP_HELDOUT = "bundled", "heldout"
MINDS_EYE_BACKGROUND, MINDS_EYE_THETA = 3, 0.45  # the Mind's Eye page's defaults
CHART = {"displayModeBar": False}


@dataclass(frozen=True)
class Step:
    """One screen of the lecture: its name in the link, its paragraph, and the demo that draws it."""

    key: str  # the URL's name of the step
    title: str
    page: str  # the full page's file: the step is shown only when that page exists
    story: str  # one short paragraph of the lecture's story
    render: Callable[[Selection, models.ModelHandle, bool], None]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the steps


def chart(figure, key: str, present: bool, *, height: int | None = None) -> None:
    """A plotly figure, its type enlarged for a projector (and ``height`` px tall there, to fit the screen)."""
    if present and height:
        figure.update_layout(height=height)
    if present:
        # Streamlit's plotly theme sizes ticks and legends itself, so each is set here, not only the layout font.
        figure.update_layout(font=dict(size=20), title_font_size=22, hoverlabel_font_size=20, legend_font_size=18)
        figure.update_xaxes(tickfont_size=18, title_font_size=18)
        figure.update_yaxes(tickfont_size=18, title_font_size=18)
    st.plotly_chart(figure, width="stretch", config=CHART, key=key)


def view_of(selection: Selection, handle: models.ModelHandle) -> np.ndarray:
    return cache.model_view(handle.name, selection.digest, selection.image_bytes)


def ranking_of(selection: Selection, handle: models.ModelHandle) -> models.Prediction:
    return cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)


def picture(column, pixels: np.ndarray, caption: str, present: bool) -> None:
    """An image; on a projector at most 300 px wide, so a step's demo fits a 720 px screen under its text."""
    column.image(pixels, width=300 if present else "stretch", caption=caption)


def run_button(label: str, key: str) -> bool:
    return st.button(label, type="primary", key=key)


# ---------------------------------------------------------------------------------------------
# 1. Classify


def render_classify(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    ranking = ranking_of(selection, handle)
    left, right = st.columns([1, 2], gap="large")
    picture(left, view_of(selection, handle), f"{selection.image_name}: what {handle.name} sees "
            f"({handle.input_size} px)", present)
    with right:
        chart(plots.topk_bar(ranking.top(5), title="Top-5 classes", height=330 if present else None), "lec_top5",
              present)


# ---------------------------------------------------------------------------------------------
# 2. Saliency (Grad-CAM) and 3. occlusion


def class_control(handle: models.ModelHandle, ranking: models.Prediction) -> int:
    """One of the image's five most likely classes (by rank, so a new image keeps the choice valid)."""
    names = handle.class_names
    rank = url_widget(st.radio, "Explain the class", key="lec_rank", param="rank", default=0, parse=int,
                      options=list(range(5)),
                      format_func=lambda r: f"{names[ranking.indices[r]]} ({100 * ranking.probs[r]:.0f} %)")
    return int(ranking.indices[rank])


def render_saliency(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    ranking = ranking_of(selection, handle)
    choice, left, right = st.columns([1, 1.2, 1.4], gap="large")
    with choice:
        target = class_control(handle, ranking)
    config = json.dumps(saliency.CAMConfig().as_dict(), sort_keys=True)
    try:
        result = cache.explanation(handle.name, selection.digest, selection.image_bytes, "gradcam", target, config)
    except GlassboxError as error:
        st.error(str(error))
        return
    view = view_of(selection, handle)
    picture(left, view, selection.image_name, present)
    values = plots.display_map(result.saliency, signed=False)
    (zmin, zmax), = plots.colour_range([values], signed=False, shared=False)
    with right:
        chart(plots.saliency_figure(view, values, title=f"Grad-CAM · {result.target_label} · {result.layer}",
                                    zmin=zmin, zmax=zmax), "lec_gradcam", present)


def occlusion_key(handle: models.ModelHandle, selection: Selection, config: saliency.OcclusionConfig) -> str:
    """The Saliency page's key for the same scan (one scan covers every class), so the job is shared."""
    return "|".join(["saliency", handle.name, selection.digest, "occlusion", "any class",
                     json.dumps(config.as_dict(), sort_keys=True)])


def render_occlusion(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    ranking = ranking_of(selection, handle)
    target = int(ranking.indices[0])
    patch = 32 if present else url_widget(st.select_slider, "Occluder size (px)", key="lec_patch", param="patch",
                                          default=32, parse=int, options=[16, 24, 32, 48, 64])
    config = saliency.OcclusionConfig(patch=int(patch), stride=max(8, int(patch) // 2))
    key = occlusion_key(handle, selection, config)
    view = view_of(selection, handle)
    if run_button("Slide the occluder", "lec_occ_run"):
        start_job(key, saliency.explain, handle, images.to_tensor(view, device=handle.device), "occlusion", target,
                  config, title=f"Occlusion · {handle.class_names[target]}")
    status = show_job(key, idle=f"Press **Slide the occluder**: a {config.patch} px grey square at every "
                                f"{config.stride} px, one forward pass each.",
                      cancelled="Cancelled. Press **Slide the occluder** to start again.")
    if status is None:
        return
    scan = status.result.occlusion
    name = handle.class_names[target]
    left, right = st.columns(2, gap="large")
    with left:
        chart(plots.occlusion_figure(scan.probability_map(target), scan.ys, scan.xs, scan.patch,
                                     title=f"p({name}) with the occluder centred here"), "lec_occ_map", present)
    with right:
        result = status.result if status.result.target == target else status.result.for_class(target, name)
        values = plots.display_map(result.saliency, signed=False)
        (zmin, zmax), = plots.colour_range([values], signed=False, shared=False)
        chart(plots.saliency_figure(view, values, title=f"Occlusion importance · {name}", zmin=zmin, zmax=zmax),
              "lec_occ_overlay", present)


# ---------------------------------------------------------------------------------------------
# 4. Dissection


def dissect_small(handle: models.ModelHandle, layer: str, count: int, progress=None) -> dissection.DissectionResult:
    """The step's job: the bundled concept set's first ``count`` images (drawn once, kept on disk), dissected
    at ``layer`` with NetDissect's defaults; the result is cached on disk by the engine."""
    from engine import concepts

    drawing = None if progress is None else (lambda fraction, message: progress(0.0, message))
    data = concepts.bundled_concepts(count, size=DISSECT_SIZE, mask_size=DISSECT_SIZE // 2, progress=drawing)
    return dissection.dissect(handle, data, layer, dissection.DissectionConfig(), progress=progress)


def stored_dissection(handle: models.ModelHandle, layer: str, count: int) -> dissection.DissectionResult | None:
    """A finished dissection of the bundled set of ``count`` images at ``layer``, from the engine's disk cache,
    without drawing the set (its key is all the cache needs)."""
    from engine.concepts.bundled import bundled_key

    key = bundled_key(count, size=DISSECT_SIZE, mask_size=DISSECT_SIZE // 2)
    return dissection.cached_result(handle, SimpleNamespace(key=key), layer)


def render_dissection(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    try:
        layer = dissection.spatial_layer(handle, None).name
    except GlassboxError as error:
        st.error(str(error))
        return
    result = stored_dissection(handle, layer, DISSECT_PAGE_IMAGES) or stored_dissection(handle, layer, DISSECT_IMAGES)
    if result is None:
        key = f"lecture-dissect|{handle.name}|{layer}|{DISSECT_IMAGES}"
        if run_button(f"Dissect {layer} on {DISSECT_IMAGES} images", "lec_dis_run"):
            start_job(key, dissect_small, handle, layer, DISSECT_IMAGES, title=f"Dissect {layer}")
        status = show_job(key, idle=f"Press **Dissect {layer} on {DISSECT_IMAGES} images**: the bundled concept "
                                    "set (colours, textures, shapes drawn on photos, with exact masks).",
                          cancelled="Cancelled. Press the button to start again.")
        if status is None:
            return
        result = status.result
    st.caption(f"On **{result.images} images** of the bundled concept set ({len(result.concept_names)} concepts: "
               "colours, textures and shapes drawn on photos, with exact masks), not Broden's labelled photos; "
               f"the units of {result.layer}, top {100 * result.config['quantile']:g} % of each unit's values.")
    chart(plots.detector_histogram(result.detector_counts(), units=result.units, layer=result.layer,
                                   threshold=result.config["iou_threshold"]), "lec_dis_hist", present, height=400)


# ---------------------------------------------------------------------------------------------
# 5. Anatomy


def render_anatomy(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    layers = [info.name for info in handle.layers]
    if not layers:
        st.error("This model has no layer with a spatial output to look at.")
        return
    default = handle.default_layer if handle.default_layer in layers else layers[-1]
    layer = default if present else url_widget(st.selectbox, "Layer", key="lec_layer", param="layer",
                                               default=default, options=layers)
    try:
        acts = cache.image_activations(handle.name, selection.digest, selection.image_bytes, layer)
        grid = cache.first_layer_filters(handle.name)
    except GlassboxError as error:
        st.error(str(error))
        return
    shown = acts.strongest(16)
    left, right = st.columns([2, 3], gap="large")
    picture(left, plots.enlarge(grid.grid, max(1, 360 // grid.grid.shape[1])),
            f"first layer ({grid.layer}): {grid.shape[0]} filters of {grid.shape[2]}×{grid.shape[3]}", present)
    with right:
        st.caption(f"The 16 strongest of {len(acts.order)} channels of **{layer}** on {selection.image_name} "
                   "(bright = strong)")
        figure = plots.channel_grid(acts.maps[shown], list(map(int, shown)), acts.strength[shown], tile_px=56)
        if present:  # channel numbers are too small to read on a projector; hovering still shows them
            figure.update_traces(mode="markers", selector=dict(type="scatter"))
        chart(figure, "lec_channels", present)


# ---------------------------------------------------------------------------------------------
# 6. Relabel (Robinson & Graham)


def relabel_key(handle: models.ModelHandle, selection: Selection, target: int, config) -> str:
    """The Relabel page's key for the same run (its default method, cap and step limit)."""
    return "|".join(["relabel", handle.name, selection.digest, str(target), attacks.Relabel.key,
                     json.dumps(config.as_dict(), sort_keys=True)])


def relabel_live(handle: models.ModelHandle, target: int, cap: float, present: bool, height: int | None = None):
    def live(status: jobs.JobStatus) -> None:
        records = status.records
        if records:
            names = handle.class_names
            figure = plots.relabel_steps_figure(
                [r["target"] for r in records], [r["original"] for r in records], [r["distortion"] for r in records],
                target_label=names[target], original_label=names[records[0]["top1"]], cap=cap)
            chart(figure, f"lec_rl_live_{status.id}_{len(records)}", present, height=height)
    return live


def render_relabel(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    names = handle.class_names
    pick, limit, go = st.columns([3, 1, 2], vertical_alignment="bottom")
    with pick:
        target = class_picker(handle, label="Relabel into", key="lec_target", default=min(HALF_TRACK, len(names) - 1),
                              help="Any ImageNet class; the lecture's example is the cat becoming a half-track.")
    ranking = ranking_of(selection, handle)
    if int(ranking.indices[0]) == target:
        st.info(f"The model already calls this image a {names[target]}: pick another class.")
        return
    cap = RELABEL_CAP if present else url_widget(
        limit.number_input, "Distortion cap", key="lec_cap", param="cap", default=RELABEL_CAP, parse=float,
        min_value=0.001, max_value=0.1, step=0.001, format="%.3f",
        help="Eq. 3: the run stops when the target wins or the distortion reaches this cap (the paper's 0.01).")
    config = attacks.Relabel.make_config(cap=float(cap), max_steps=RELABEL_STEPS)
    key = relabel_key(handle, selection, target, config)
    with go:
        pressed = run_button(f"Relabel into {names[target]}", "lec_rl_run")
    if pressed:
        start_job(key, attacks.Relabel.run, handle, images.to_tensor(view_of(selection, handle), device=handle.device),
                  target, config, title=f"Relabel → {names[target]}", records=True)
    status = show_job(key, live=relabel_live(handle, target, float(cap), present),
                      idle=f"Press **Relabel into {names[target]}**: small sign steps up the target's gradient.",
                      cancelled="Cancelled. Press the button to start again.")
    if status is None:
        return
    result: attacks.AttackResult = status.result
    verdict = attacks.Relabel.verdict(result, names)
    c1, c2, c3 = st.columns([1, 1, 2], gap="medium")
    c1.image(result.original, width="stretch", caption=f"before · {names[result.original_class]}")
    c2.image(result.image, width="stretch", caption=f"after · {names[result.final_class]}")
    with c3:
        {"success": st.success, "warning": st.warning}.get(verdict.tone, st.info)(verdict.text)
        if status.records:
            relabel_live(handle, target, float(cap), present, height=250)(status)


# ---------------------------------------------------------------------------------------------
# 7. Universal perturbation (the Attacks lab's engine)


def uap_key(handle: models.ModelHandle, train_key: str, held_key: str) -> str:
    """The Attacks lab's key for its default preset, so a perturbation made there is found here."""
    return "|".join(["lab-uap", handle.name, train_key, held_key, json.dumps(UAP_SETTINGS, sort_keys=True)])


def render_universal(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    from engine import lab_runs

    try:
        train = cache.image_set(UAP_TRAIN, handle.input_size)
        held = cache.image_set(UAP_HELDOUT, handle.input_size)
    except GlassboxError as error:
        st.error(str(error))
        return
    key = uap_key(handle, train.key, held.key)
    if run_button("Compute the perturbation", "lec_uap_run"):
        start_job(key, lab_runs.uap_run, handle, UAP_TRAIN, UAP_HELDOUT, dict(UAP_SETTINGS),
                  title=f"Universal perturbation on {len(train)} images")
    status = show_job(key, idle=f"Press **Compute the perturbation**: one ℓ∞ perturbation (ξ = 10 levels) fitted "
                                f"on the {len(train)} bundled photos, measured on {len(held)} held-out photos; "
                                "kept on disk, so the next time opens at once.",
                      cancelled="Cancelled. Press **Compute the perturbation** to start again.")
    if status is None:
        return
    record = status.result
    perturbation = np.asarray(record["perturbation"], dtype=np.float32)
    view = view_of(selection, handle)
    attacked = np.clip(np.round((view / 255.0 + perturbation) * 255), 0, 255).astype(np.uint8)
    before = ranking_of(selection, handle)
    after = handle.classify(images.to_tensor(attacked, device=handle.device), top_k=1)
    names = handle.class_names
    c1, c2, c3, numbers = st.columns([1, 1, 1, 1.2])
    c1.image(lab_runs.perturbation_png(perturbation), width="stretch",
             caption=f"the perturbation, stretched (at most {255 * float(np.abs(perturbation).max()):.0f} levels)")
    c2.image(view, width="stretch", caption=f"{selection.image_name} · {names[before.indices[0]]}")
    c3.image(attacked, width="stretch", caption=f"plus the perturbation · {names[after.indices[0]]}")
    with numbers:
        if int(after.indices[0]) != int(before.indices[0]):
            st.success(f"Fooled: {names[before.indices[0]]} → {names[after.indices[0]]}, by a perturbation that "
                       "never saw this image.")
        else:
            st.warning(f"Not fooled: still {names[before.indices[0]]}. A universal perturbation fools most "
                       "images, not all.")
        st.caption("Fooling rate: the share of photos whose label changes")
        m1, m2 = st.columns(2)
        m1.metric("training", f"{100 * record['fooling_rate_train']:.0f} %",
                  help=f"the {record['n_train']} photos it was fitted on")
        m2.metric("held-out", f"{100 * record['fooling_rate_heldout']:.0f} %",
                  help=f"{record['n_heldout']} photos it never saw")


# ---------------------------------------------------------------------------------------------
# 8. The Mind's Eye (not on the current image)


def render_minds_eye(selection: Selection, handle: models.ModelHandle, present: bool) -> None:
    from engine.minds_eye import data, nets, weights

    objects = list(data.CLASSES[:data.NONE])
    c1, c2, c3 = st.columns([1, 1, 1.2], gap="large")
    name = url_widget(c3.selectbox, "Object", key="lec_object", param="object", default="monkey", options=objects)
    theta = MINDS_EYE_THETA if present else url_widget(
        c3.slider, "Threshold Θ", key="lec_theta", param="theta", default=MINDS_EYE_THETA, parse=float,
        min_value=0.0, max_value=0.99, step=0.01, help="The triple-staged net names an object only above Θ.")
    folder = weights.default_folder()
    try:
        stamp = cache.minds_eye_stamp(folder)
        cache.minds_eye_contenders(folder, stamp)
        pixels = cache.minds_eye_composed(name, (0.0, 0.0, 0.0), MINDS_EYE_BACKGROUND)
        view = cache.minds_eye_explore(folder, stamp, images.image_digest(pixels.tobytes()), pixels)
    except GlassboxError as error:
        st.error(str(error))
        return
    said = int(nets.verdict_array(view["scores"], theta))
    direct = view["direct:direct"]
    direct_said = int(np.argmax(direct))
    drawn = said if said != data.NONE else int(np.argmax(view["scores"]))
    picture(c1, np.kron(pixels, np.ones((4, 4), dtype=np.uint8)), f"the image: a {name} (not your photo)", present)
    drawing = (np.clip(view["drawing"][drawn], 0, 1) * 255).round().astype(np.uint8)
    picture(c2, np.kron(drawing, np.ones((4, 4), dtype=np.uint8)),
            f"the triple-staged net's drawing of a {data.CLASSES[drawn]}", present)
    with c3:
        st.metric("Triple-staged says", data.CLASSES[said], help=f"score {float(view['scores'][drawn]):.2f}, "
                                                                 f"Θ = {theta:.2f}")
        st.metric("Direct network says", data.CLASSES[direct_said], help=f"p = {float(direct[direct_said]):.2f}")


# ---------------------------------------------------------------------------------------------
# The story


STEPS: tuple[Step, ...] = (
    Step("classify", "Classify", "app_pages/classify.py",
         "A ConvNet maps an image to a probability for each of the 1000 ImageNet classes. It works remarkably "
         "well, yet \"it's a black box\": the rest of the lecture opens it.", render_classify),
    Step("saliency", "Saliency", "app_pages/saliency.py",
         "Which parts of the image played the most important role in the decision? A white-box answer uses the "
         "gradients: Grad-CAM weighs the last feature maps by how much they push the class score.",
         render_saliency),
    Step("occlusion", "Occlusion", "app_pages/saliency.py",
         "A black-box answer needs no gradients: slide a grey square across the image and watch the class "
         "probability. Where it drops, the network was looking.", render_occlusion),
    Step("dissection", "Dissection", "app_pages/dissection.py",
         "Do single units stand for concepts? Network Dissection thresholds each unit's strongest activations and "
         "measures their overlap (IoU) with concept masks; the lecture found 81 of 256 AlexNet conv5 units to be "
         "detectors.", render_dissection),
    Step("anatomy", "Anatomy", "app_pages/anatomy.py",
         "What has been learned? The first layer's filters can be drawn directly: edges and colour contrasts. "
         "Deeper layers are shown by what excites them: here, the channels that respond most to this image.",
         render_anatomy),
    Step("relabel", "Relabel", "app_pages/relabel.py",
         "Are these networks robust? Small sign steps up the gradient of a target class (Robinson & Graham) make the "
         "network call the photo anything we like, while it looks unchanged to us.",
         render_relabel),
    Step("universal", "Universal perturbation", "app_pages/attacks_lab.py",
         "Worse: one image-independent perturbation, fitted on a set of photos, fools the network on most images, "
         "even ones it never saw (Moosavi-Dezfooli et al.). Here it is added to the current image.", render_universal),
    Step("minds_eye", "The Mind's Eye", "app_pages/minds_eye.py",
         "A network that must explain what it sees is harder to fool: the triple-staged network estimates the "
         "object's pose, draws it, and compares its drawing with the image (Berntsen et al.). This step does not "
         "use the sidebar's image: these networks see 64 px grey renders of three 3D objects over photos.",
         render_minds_eye),
)


def available_steps() -> list[Step]:
    """The steps whose full page exists: a step is never faked for a page that is not there."""
    pages = {entry.path for entry in PAGES}
    return [step for step in STEPS if step.page in pages]


def step_from_url(steps: list[Step]) -> int:
    """The link's step (a name or a number from 1); a bad one gets a sentence and step 1."""
    raw = url_value("step")
    if raw is None:
        return 0
    names = [step.key for step in steps]
    if raw in names:
        return names.index(raw)
    if raw.isdigit() and 1 <= int(raw) <= len(steps):
        return int(raw) - 1
    st.warning(f"The link's step={raw!r} is not a step of this lecture (use 1 to {len(steps)} or one of "
               f"{', '.join(names)}); starting at step 1.")
    return 0


def go_to(index: int, steps: list[Step]) -> None:
    st.session_state["lec_step"] = index
    set_url_value("step", steps[index].key)


def navigation_controls(index: int, steps: list[Step], present: bool) -> None:
    """Back, the step indicator and Next; the buttons move by callbacks, so the new step draws in the same run."""
    step = steps[index]
    back, middle, forward = st.columns([1, 4, 1], vertical_alignment="center")
    back.button("Back", icon=":material/arrow_back:", key="lec_back", disabled=index == 0,
                on_click=go_to, args=(index - 1, steps), width="stretch")
    size = "1.6rem" if present else "1.15rem"
    middle.markdown(f"<div style='text-align:center;font-size:{size}'><b>{index + 1} / {len(steps)} · "
                    f"{step.title}</b></div>", unsafe_allow_html=True)
    forward.button("Next", icon=":material/arrow_forward:", key="lec_next", disabled=index == len(steps) - 1,
                   on_click=go_to, args=(index + 1, steps), width="stretch", type="primary")


def main() -> None:
    selection = ensure_frame()
    handle = require_model(selection)
    present = presenter_mode()
    steps = available_steps()
    if "lec_step" not in st.session_state:
        st.session_state["lec_step"] = step_from_url(steps)
    index = min(int(st.session_state["lec_step"]), len(steps) - 1)
    step = steps[index]
    set_url_value("step", step.key)
    if not present:
        st.title(TITLE)
        st.caption("The lecture's story, one step per screen, each a live demo on the sidebar's image. Add "
                   "`?present=1` to the link (or press **Presenter mode**) to project it.")
    navigation_controls(index, steps, present)
    st.markdown(step.story)
    try:
        step.render(selection, handle, present)
    except GlassboxError as error:
        st.error(str(error))
    entry = next(entry for entry in PAGES if entry.path == step.page)
    links, mode = st.columns([3, 1], vertical_alignment="center")
    with links:
        st.page_link(entry.path, label=f"Open the {entry.title} page for all the settings", icon=entry.icon)
    if present:
        mode.button("Leave presenter mode", key="lec_leave", on_click=leave_presenter_mode)
    else:
        mode.button("Presenter mode", icon=":material/co_present:", key="lec_present", on_click=enter_presenter_mode)


main()
