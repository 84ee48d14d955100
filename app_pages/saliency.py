"""Saliency: which pixels made the model decide? Methods side by side, scored for faithfulness."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from engine import cache, classify, images, jobs, plots
from engine import saliency as S
from engine.errors import GlassboxError
from streamlit_app import class_picker, ensure_frame, job_row, require_model, set_url_value, url_value

selection = ensure_frame()
handle = require_model(selection)

st.title("Saliency")
st.caption("Which parts of the image played the most important role in the network's decision? White-box "
           "methods follow the gradient of the class score; black-box methods hide parts of the image and "
           "watch the probability change. Each map explains one class.")

FAST = [k for k, cls in S.METHODS.items() if not cls.slow]
SLOW = [k for k, cls in S.METHODS.items() if cls.slow]
DEFAULT_METHODS = ["gradcam", "gradcampp", "gradient", "occlusion"]
offered = S.available_methods(handle)
view = classify.model_view(handle, selection.image())
x = images.to_tensor(view, device=handle.device)
ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)


def method_label(key: str) -> str:
    return S.METHODS[key].label + (" (slow)" if S.METHODS[key].slow else "")


# --- presets a teacher can open with one click ---------------------------------------------------

with st.expander("Presets from the lecture", icon=":material/school:"):
    st.caption("Each sets the image, the classes and the methods; the sidebar model stays as it is.")
    preset_columns = st.columns(3)
    PRESETS = {
        "Pixel saliency is class dependent": dict(sample="chelsea", methods="gradcam,occlusion", cls="285", cls2="282",
                                                  text="One photo, two classes (Egyptian cat vs tiger cat), like the lecture's sheep vs cow."),
        "White box vs black box": dict(sample="coffee", methods="gradient,gradcam,occlusion,rise", cls="967", cls2="968",
                                       text="Gradients against masking on the espresso photo."),
        "Slide a square occluder": dict(sample="motorcycle_left", methods="occlusion", cls=None, cls2=None,
                                        text="The class probability as a function of the occluder's position."),
    }
    for column, (name, preset) in zip(preset_columns, PRESETS.items()):
        with column:
            if st.button(name, key=f"preset_{name}", width="stretch"):
                st.session_state["_next_sample"] = preset["sample"]  # the sidebar applies it on the rerun
                for key, value in (("methods", preset["methods"]), ("class", preset["cls"]), ("class2", preset["cls2"])):
                    set_url_value(key, value)
                for key in [k for k in st.session_state if str(k).startswith(("_class_", "sal_methods"))]:
                    del st.session_state[key]
                st.rerun()
            st.caption(preset["text"])

# --- controls ------------------------------------------------------------------------------------

if "sal_methods" not in st.session_state:
    wanted = [m for m in (url_value("methods") or ",".join(DEFAULT_METHODS)).split(",") if m in offered]
    st.session_state["sal_methods"] = wanted or [m for m in DEFAULT_METHODS if m in offered]
if len(offered) < len(S.METHODS):
    st.info("This model has no convolutional layer with a spatial output, so the Grad-CAM methods are not offered.")

top_left, top_mid, top_right = st.columns([3, 2, 2], gap="medium")
with top_left:
    chosen = st.multiselect("Methods", offered, key="sal_methods", format_func=method_label)
    set_url_value("methods", ",".join(chosen))
with top_mid:
    target = class_picker(handle, label="Explain the class", default=ranking.indices[0],
                          help="Defaults to the top-1 class; type to search.")
    st.caption(f"p = {100 * ranking.probs[ranking.rank_of(target)]:.1f} %, rank {ranking.rank_of(target) + 1}")
with top_right:
    layer = None
    if any(S.METHODS[m].uses_layer for m in chosen):
        names = [info.name for info in handle.layers]
        if "sal_layer" not in st.session_state:
            wanted = url_value("layer", handle.default_layer)
            st.session_state["sal_layer"] = wanted if wanted in names else handle.default_layer
        layer = st.selectbox("Layer (Grad-CAM methods)", names, key="sal_layer",
                             format_func=lambda n: f"{n} · {handle.layer(n).channels}×{handle.layer(n).height}×{handle.layer(n).width}",
                             help="Later layers are coarser but more class-specific. Default: the last feature map.")
        set_url_value("layer", layer)

show_left, show_mid, show_right = st.columns([3, 2, 2], gap="medium")
with show_left:
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="sal_opacity")
with show_mid:
    shared = st.radio("Colour scale", ["per map", "shared"], horizontal=True, key="sal_shared",
                      help="Shared puts every map on one range: right for maps in the same units, e.g. one method for two classes.") == "shared"
with show_right:
    signed = st.radio("Values", ["absolute", "signed"], horizontal=True, key="sal_signed",
                      help="Signed keeps negative evidence (blue) for methods that have it: integrated gradients, occlusion.") == "signed"

SLOW_DEFAULTS = {"patch": 32, "stride": 16, "fill": "grey", "masks": 1000, "grid": 7, "keep": 0.5,
                 "steps": 32, "baseline": "black"}


def slow_settings_from_url() -> dict:
    """The slow methods' settings kept in the link (``slow=patch:24,stride:8,...``), else defaults."""
    settings = dict(SLOW_DEFAULTS)
    for item in (url_value("slow") or "").split(","):
        name, _, value = item.partition(":")
        if name in settings and value:
            try:
                settings[name] = type(SLOW_DEFAULTS[name])(value)
            except ValueError:
                pass  # a hand-edited link with a bad number keeps the default
    return settings


saved = slow_settings_from_url()
with st.expander("Settings of the slow methods", icon=":material/tune:", expanded=False):
    with st.form("slow_settings", border=False):
        c1, c2, c3 = st.columns(3)
        fills, baselines = ["grey", "black", "blur"], ["black", "grey"]
        with c1:
            st.markdown("**Occlusion**")
            patch = st.number_input("Patch size (px)", 4, 224, min(max(saved["patch"], 4), 224), 4)
            stride = st.number_input("Stride (px)", 2, 224, min(max(saved["stride"], 2), 224), 2)
            fill = st.selectbox("Fill", fills, index=fills.index(saved["fill"]) if saved["fill"] in fills else 0)
        with c2:
            st.markdown("**RISE**")
            masks = st.number_input("Masks", 50, 8000, min(max(saved["masks"], 50), 8000), 50)
            grid = st.number_input("Grid cells per side", 2, 16, min(max(saved["grid"], 2), 16))
            keep = st.slider("Keep probability", 0.1, 0.9, min(max(saved["keep"], 0.1), 0.9), 0.05)
        with c3:
            st.markdown("**Integrated gradients**")
            steps = st.number_input("Steps", 2, 300, min(max(saved["steps"], 2), 300), 2)
            baseline = st.selectbox("Baseline", baselines,
                                    index=baselines.index(saved["baseline"]) if saved["baseline"] in baselines else 0)
        run_slow = st.form_submit_button("Run the slow methods", type="primary")
if run_slow:  # keep the settings in the link, so a reload finds the same jobs again
    chosen_settings = dict(patch=int(patch), stride=int(stride), fill=fill, masks=int(masks), grid=int(grid),
                           keep=float(keep), steps=int(steps), baseline=baseline)
    changed = {k: v for k, v in chosen_settings.items() if v != SLOW_DEFAULTS[k]}
    set_url_value("slow", ",".join(f"{k}:{v}" for k, v in changed.items()) or None)

slow_configs = {
    "occlusion": S.OcclusionConfig(patch=int(patch), stride=int(stride), fill=fill),
    "rise": S.RISEConfig(masks=int(masks), grid=int(grid), keep=float(keep)),
    "ig": S.IntegratedGradientsConfig(steps=int(steps), baseline=baseline),
}


def config_for(method: str, layer_name: str | None):
    if S.METHODS[method].uses_layer:
        return S.CAMConfig(layer=layer_name)
    return slow_configs.get(method, S.METHODS[method].Config())


SCANS = ("occlusion", "rise")  # one scan holds every class's map: the job does not depend on the class


def job_key(method: str, cls: int, config) -> str:
    scope = "any class" if method in SCANS else str(cls)
    return "|".join(["saliency", handle.name, selection.digest, method, scope, json.dumps(config.as_dict(), sort_keys=True)])


def slow_job(method: str, cls: int, *, start: bool):
    """The registry's job for this request (started when asked); its status or None."""
    key = job_key(method, cls, config_for(method, layer))
    status = jobs.registry().find(key)
    if start and (status is None or status.state in ("failed", "cancelled")):
        jobs.registry().submit(S.explain, handle, x, method, cls, config_for(method, layer),
                               title=f"{S.METHODS[method].label} · {handle.class_names[cls]}", key=key)
        status = jobs.registry().find(key)
    return status


def explanation(method: str, cls: int, *, start_slow: bool = False):
    """(Explanation or None, job status or None, error sentence or None)."""
    if not S.METHODS[method].slow:
        try:
            config = config_for(method, layer)
            return cache.explanation(handle.name, selection.digest, selection.image_bytes, method, cls,
                                     json.dumps(config.as_dict(), sort_keys=True)), None, None
        except GlassboxError as error:
            return None, None, str(error)
    try:
        status = slow_job(method, cls, start=start_slow)
    except GlassboxError as error:
        return None, None, str(error)
    if status is not None and status.state == "done":
        result = status.result
        if result.target != cls:  # a scan made for another class: re-read it, no new passes
            result = result.for_class(cls, handle.class_names[cls])
        return result, status, None
    return None, status, status.error if status is not None else None


# --- the grid of maps ------------------------------------------------------------------------------

results = {m: explanation(m, target, start_slow=run_slow) for m in chosen}
running = [status for _, status, _ in results.values() if status is not None and not status.finished]
drawn = {m: plots.display_map(r.saliency, signed=signed and r.signed) for m, (r, _, _) in results.items() if r is not None}
ranges = dict(zip(drawn, plots.colour_range(list(drawn.values()), signed=signed, shared=shared)))


def downloads(result, overlay: np.ndarray, key: str) -> None:
    stem = S.file_stem(result, selection.image_name)
    record = S.manifest(result, handle, image_sha256=selection.digest, image_name=selection.image_name)
    with st.popover("Files", icon=":material/download:", width="stretch"):
        st.download_button("Overlay (PNG)", images.to_png_bytes(overlay), f"{stem}.png", "image/png", key=f"png_{key}")
        st.download_button("Raw map (.npy)", S.npy_bytes(result.saliency), f"{stem}.npy", "application/octet-stream", key=f"npy_{key}")
        st.download_button("Manifest (JSON)", json.dumps(record, indent=2), f"{stem}.json", "application/json", key=f"json_{key}")


def draw_card(method: str, result, status, error) -> None:
    with st.container(border=True):
        if result is None:
            st.markdown(f"**{S.METHODS[method].label}**")
            if error:
                st.error(error)
            elif status is not None and not status.finished:
                st.info("Running… progress is shown below the maps.")
            else:
                st.info("A slow method: open *Settings of the slow methods* and press **Run the slow methods**.")
            return
        values = drawn[method]
        zmin, zmax = ranges[method]
        scale = plots.SIGNED_SCALE if zmin < 0 else plots.UNSIGNED_SCALE
        title = f"{result.label} · {result.target_label}" + (f" · {result.layer}" if result.layer else "")
        st.plotly_chart(plots.saliency_figure(view, values, title=title, zmin=zmin, zmax=zmax, opacity=opacity, scale=scale),
                        width="stretch", config={"displayModeBar": False}, key=f"map_{method}")
        if result.occlusion is not None:
            with st.popover("Probability vs occluder position", icon=":material/grid_on:"):
                scan = result.occlusion
                st.plotly_chart(plots.occlusion_figure(scan.probability_map(result.target), scan.ys, scan.xs, scan.patch,
                                                       title=f"p({result.target_label}) with the occluder centred here"),
                                width="stretch", key=f"occ_{method}")
        left, right = st.columns([1, 1])
        left.caption(f"{result.seconds:.2f} s · {'signed' if result.signed else 'non-negative'}")
        with right:
            downloads(result, plots.overlay_rgb(view, values, zmin=zmin, zmax=zmax, opacity=opacity, scale=scale), method)


if not chosen:
    st.info("Pick one or more methods above.")
columns = st.columns(3)
for i, method in enumerate(chosen):
    with columns[i % 3]:
        draw_card(method, *results[method])


@st.fragment(run_every=1.0)
def progress_panel(job_ids: list[str]) -> None:
    """Polls the running jobs; a widget click or reload does not stop them (they live in the registry)."""
    statuses = [jobs.registry().status(job_id) for job_id in job_ids]
    for status in statuses:
        job_row(status)
    if all(status.finished for status in statuses):
        st.rerun()


if running:
    progress_panel([status.id for status in running])

# --- two classes side by side ------------------------------------------------------------------

st.subheader("Pixel saliency is class dependent")
st.caption("The same method for two classes of the same photo, on one colour scale.")
pair_left, pair_mid, _ = st.columns([2, 3, 2])
compare_method = pair_left.selectbox("Method", [m for m in offered if not S.METHODS[m].slow] + [m for m in offered if S.METHODS[m].slow],
                                     key="sal_compare_method", format_func=method_label)
with pair_mid:
    second = class_picker(handle, label="Second class", key="class2", default=ranking.indices[1])
pair = [explanation(compare_method, cls, start_slow=run_slow) for cls in (target, second)]
ready = [r for r, _, _ in pair if r is not None]
if len(ready) == 2:
    pair_maps = [plots.display_map(r.saliency, signed=signed and r.signed) for r in ready]
    pair_ranges = plots.colour_range(pair_maps, signed=signed and ready[0].signed, shared=True)
    for column, result, values, (zmin, zmax) in zip(st.columns(2), ready, pair_maps, pair_ranges):
        p = ranking.probs[ranking.rank_of(result.target)]
        column.plotly_chart(plots.saliency_figure(view, values, title=f"{result.label} · {result.target_label} ({100 * p:.1f} %)",
                                                  zmin=zmin, zmax=zmax, opacity=opacity,
                                                  scale=plots.SIGNED_SCALE if zmin < 0 else plots.UNSIGNED_SCALE),
                            width="stretch", config={"displayModeBar": False}, key=f"pair_{result.target}_{compare_method}")
else:
    errors = [e for _, _, e in pair if e]
    if errors:
        st.error(errors[0])
    else:
        st.info(f"{S.METHODS[compare_method].label} is slow: press **Run the slow methods** to compute both classes.")

# --- faithfulness --------------------------------------------------------------------------------

st.subheader("Faithfulness: deletion and insertion")
st.caption("Remove the most salient pixels first (deletion) or add them to a blurred copy first (insertion) and "
           "watch the target probability (Petsiuk et al. 2018). A faithful map makes the deletion curve fall "
           "fast (low AUC) and the insertion curve rise fast (high AUC).")
finished = {m: results[m][0] for m in chosen if results[m][0] is not None}
with st.form("faithfulness_form", border=False):
    f1, f2, f3 = st.columns(3)
    steps_f = f1.number_input("Steps", 4, 224, 32, 4)
    deletion_fill = f2.selectbox("Deleted pixels become", ["black", "grey", "blur"])
    insertion_fill = f3.selectbox("Insertion starts from", ["blur", "black", "grey"])
    score = st.form_submit_button(f"Score the {len(finished)} maps shown", disabled=not finished)
faith_config = S.FaithfulnessConfig(steps=int(steps_f), deletion_fill=deletion_fill, insertion_fill=insertion_fill)


def score_all(handle_, x_, maps: dict, cls: int, config, progress=None):
    """One job for all maps, so the progress bar covers the whole scoring."""
    out = {}
    for i, (label, saliency_map) in enumerate(maps.items()):
        share = (lambda f, m, i=i: progress((i + f) / len(maps), f"{label}: {m}")) if progress else None
        out[label] = S.deletion_insertion(handle_, x_, saliency_map, cls, config, share)
    return out


faith_key = "|".join(["faithfulness", handle.name, selection.digest, str(target), json.dumps(faith_config.as_dict()),
                      *[f"{m}:{json.dumps(r.config, sort_keys=True)}" for m, r in finished.items()]])
faith = jobs.registry().find(faith_key)
if score and finished:
    jobs.registry().submit(score_all, handle, x, {r.label: r.saliency for r in finished.values()}, target, faith_config,
                           title="Deletion and insertion", key=faith_key)
    faith = jobs.registry().find(faith_key)
if faith is not None and faith.state == "done":
    st.plotly_chart(plots.faithfulness_figure(faith.result), width="stretch", key="faith_plot")
    st.dataframe([{"method": label, "deletion AUC ↓": round(r.deletion_auc, 4), "insertion AUC ↑": round(r.insertion_auc, 4)}
                  for label, r in faith.result.items()], hide_index=True)
elif faith is not None and not faith.finished:
    progress_panel([faith.id])
elif faith is not None and faith.error:
    st.error(faith.error)
