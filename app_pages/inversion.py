"""Class inversion: change the photo until it strongly is the target class (Anosheh, Kapadia & Rulison)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import streamlit as st

from engine import cache, classify, images, jobs, plots
from engine import inversion as I
from engine.errors import GlassboxError
from engine.relabel import difference_image
from streamlit_app import class_picker, ensure_frame, job_row, require_model, set_url_value, url_value

selection = ensure_frame()
handle = require_model(selection)

st.title("Class inversion")
st.caption("Anosheh, Kapadia & Rulison: optimise the photo itself so the model calls it the target class, while "
           "content, style, total-variation and colour losses (sec. 2.2) keep the change meaningful: stripes for a "
           "tiger rather than noise. A mask limits where it may change and jitter shifts it at every step (sec. 2.3).")

TIGER = 292
TERM_LABELS = {"content": "Content", "style": "Style", "tv": "Total variation", "colour": "Colour"}
MASK_KINDS = {"none": "No mask", "ellipse": "Ellipse", "rectangle": "Rectangle", "paint": "Paint it",
              "upload": "Upload a mask"}
OPTIMIZERS = {"lbfgs": "L-BFGS (the paper's; no jitter)", "adam": "Adam", "gd": "Gradient descent"}


DEFAULT_WEIGHTS = I.PRESETS["tiger-face"].paper_weights  # the paper's tiger row, as InversionConfig's default


def format_weight(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def parse_weight(text: str) -> float | None:
    try:
        value = float(text.strip().replace("−", "-"))
    except ValueError:
        return None
    return value if np.isfinite(value) else None


@st.cache_resource
def live_records() -> dict:
    """Per-step records of running jobs, by job key: a reloaded page still draws the live curve."""
    return {}


def apply_preset(preset: I.Preset) -> None:
    st.session_state["_next_sample"] = preset.image
    st.session_state.pop(f"_class_target_{handle.name}", None)
    set_url_value("target", str(preset.target))
    set_url_value("mode", "class")
    st.session_state["inv_mode"] = "class"
    for term, value in zip(TERM_LABELS, preset.paper_weights):
        st.session_state[f"inv_w_{term}"] = format_weight(value)
    st.session_state["inv_optimizer"] = preset.optimizer
    st.session_state["inv_jitter"] = preset.jitter
    st.session_state["inv_steps"] = preset.steps
    st.session_state["inv_noise"] = False
    if preset.mask is None:
        st.session_state["inv_mask_kind"] = "none"
    else:
        shape, (left, top, right, bottom) = I.CHELSEA_MASKS[preset.mask]
        st.session_state["inv_mask_kind"] = shape
        st.session_state["inv_box_x"] = (round(100 * left), round(100 * right))
        st.session_state["inv_box_y"] = (round(100 * top), round(100 * bottom))
    st.session_state["inv_preset"] = preset.name


with st.expander("The paper's results as presets (one click each)", icon=":material/school:"):
    st.caption("Each row of the paper's figure: new class (content, style, TV, colour weights as printed). The weights "
               "are entered in the paper's Caffe units and converted (see *How the weights are converted* below). "
               "The paper's dog photo is not shipped, so its rows run on the cat photo.")
    columns = st.columns(3)
    for i, preset in enumerate(I.PRESETS.values()):
        with columns[i % 3]:
            if st.button(preset.label, key=f"preset_{preset.name}", width="stretch", help=preset.note or None):
                apply_preset(preset)
                st.rerun()

if "inv_mode" not in st.session_state:
    st.session_state["inv_mode"] = "features" if url_value("mode") == "features" else "class"
mode = st.segmented_control("What to run", ["class", "features"], key="inv_mode", required=True,
                            format_func={"class": "Change the class (Anosheh et al.)",
                                         "features": "Rebuild from one layer (Mahendran & Vedaldi)"}.get)
set_url_value("mode", mode)

view = classify.model_view(handle, selection.image())
x = images.to_tensor(view, device=handle.device)
ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
content_default, style_default = I.default_layers(handle)


def digest_of(array: np.ndarray | None) -> str:
    return "none" if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def job_key(kind: str, settings: dict, mask: np.ndarray | None) -> str:
    return "|".join(["inversion", kind, handle.name, selection.digest, json.dumps(settings, sort_keys=True, default=str),
                     digest_of(mask)])


def submit(fn, key: str, title: str, *args, **kwargs) -> None:
    status = jobs.registry().find(key)
    if status is None or status.state in ("failed", "cancelled"):
        records: list = []
        live_records()[key] = records
        jobs.registry().submit(fn, *args, observer=records, title=title, key=key, **kwargs)


@st.fragment(run_every=0.7)
def live(job_id: str, key: str, label: str) -> None:
    current = jobs.registry().status(job_id)
    job_row(current)
    records = list(live_records().get(key) or [])
    if records:
        shots = [r for r in records if "image" in r]
        left, right = st.columns([1, 2])
        if shots:
            left.image(shots[-1]["image"], caption=f"step {shots[-1]['step']}", width="stretch")
        names = [n for n in records[-1] if n not in ("step", "total", "target", "top1", "image")]
        right.plotly_chart(plots.inversion_loss_figure({n: [r.get(n, np.nan) for r in records] for n in names},
                                                       [r["total"] for r in records],
                                                       target_prob=[r["target"] for r in records], target_label=label),
                           width="stretch", key=f"live_{job_id}_{len(records)}")
    if current.finished:
        st.rerun()


def snapshots_zip(result: I.InversionResult, stem: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for step, pixels in result.snapshots:
            archive.writestr(f"{stem}_step{step:04d}.png", images.to_png_bytes(pixels))
    return buffer.getvalue()


def show_outcome(result: I.InversionResult, target_label: str | None) -> None:
    if result.outcome == "diverged":
        st.warning(result.message)
    elif result.target is not None:
        p = float(result.final_probs[result.target])
        if result.reached_target:
            st.success(f"After {result.steps} steps the model calls it a **{target_label}** (p = {p:.3f}); "
                       f"{result.evaluations} forward+backward passes.")
        else:
            st.warning(f"After {result.steps} steps the model still says **{handle.class_names[result.final_class]}**; "
                       f"{target_label} reached p = {p:.3f}. Run more steps, lower the constraint weights or widen the mask.")
        if result.outcome == "stalled":
            st.info(result.message)


def show_result(result: I.InversionResult, *, name: str, stem: str, key: str, preset: str | None,
                mask: np.ndarray | None) -> None:
    target_label = handle.class_names[result.target] if result.target is not None else None
    show_outcome(result, target_label)
    rebuilt = result.target is None  # feature inversion: the run starts from noise and aims at the photo
    c1, c2, c3 = st.columns(3)
    c1.image(result.original, caption=f"{'the photo' if rebuilt else 'before'} · {handle.class_names[result.original_class]}",
             width="stretch")
    c2.image(result.image, width="stretch", caption=f"{'rebuilt' if rebuilt else 'after'} in {result.steps} steps · "
                                                    f"{handle.class_names[result.final_class]}")
    c3.image(difference_image(result.image, result.original, gain=4.0), width="stretch",
             caption=f"{'rebuilt minus the photo' if rebuilt else 'the change'} × 4, around mid-grey")
    if result.target is not None:
        after = handle.classify(images.to_tensor(result.image, device=handle.device))
        b1, b2 = st.columns(2)
        b1.plotly_chart(plots.topk_bar(ranking.top(5), highlight=result.target, title="Before"), width="stretch",
                        key=f"before_{key}")
        b2.plotly_chart(plots.topk_bar(after, highlight=result.target, title="After"), width="stretch", key=f"after_{key}")
    log = st.toggle("Log scale", key=f"log_{key}", help="Useful when one term is orders of magnitude above the others "
                    "(only positive values show).")
    st.plotly_chart(plots.inversion_loss_figure(result.terms, result.total, target_prob=result.target_prob,
                                                target_label=target_label or "", log=log),
                    width="stretch", key=f"losses_{key}")
    steps = [step for step, _ in result.snapshots]
    if len(steps) > 1:
        chosen = st.select_slider("Snapshots: step", steps, value=steps[-1], key=f"snap_{key}")
        s1, s2, s3 = st.columns(3)
        s1.image(dict(result.snapshots)[chosen], caption=f"step {chosen}", width="stretch")
        s2.image(difference_image(dict(result.snapshots)[chosen], result.original, gain=4.0), width="stretch",
                 caption=f"{'minus the photo' if rebuilt else 'change from the start'} at step {chosen} × 4")
        at = min(chosen, len(result.total) - 1)
        if result.target is not None:
            s3.metric(f"p({target_label}) at step {chosen}", f"{result.target_prob[at]:.3f}")
            s3.metric("top-1 at that step", handle.class_names[int(result.top1[at])])
        s3.metric("total loss", f"{result.total[at]:.4g}")
    record = I.manifest(result, handle, image_name=name, preset=preset,
                        mask_pixels=None if mask is None else int(mask.sum()))
    d1, d2, d3, d4 = st.columns(4)
    d1.download_button("Final PNG", images.to_png_bytes(result.image), f"{stem}.png", "image/png", key=f"png_{key}")
    d2.download_button("Snapshots (ZIP)", snapshots_zip(result, stem), f"{stem}_snapshots.zip", "application/zip",
                       key=f"zip_{key}")
    d3.download_button("Loss log (CSV)", I.loss_log_csv(result), f"{stem}_losses.csv", "text/csv", key=f"csv_{key}")
    d4.download_button("Manifest (JSON)", json.dumps(record, indent=2), f"{stem}.json", "application/json",
                       key=f"json_{key}")


def show_job(key: str, label: str, **result_options) -> I.InversionResult | None:
    status = jobs.registry().find(key)
    if status is None:
        return None
    if not status.finished:
        live(status.id, key, label)
    elif status.state == "done":
        return status.result
    elif status.error:
        st.error(status.error)
    elif status.state == "cancelled":
        st.info("Cancelled. Press **Run** to start again.")
    return None


# ---------------------------------------------------------------------------------------------
# Feature inversion

if mode == "features":
    st.markdown("Start from noise and change it until the chosen layer's features match the photo's "
                "(normalised Euclidean loss, with an α-norm and a TV^β prior). Early layers give the photo back; "
                "deep ones keep what the network needs and lose the rest.")
    layer_names = [layer.name for layer in handle.layers]
    if not layer_names:
        st.error("This model has no spatial layer to invert.")
        st.stop()
    with st.form("features_settings", border=False):
        f1, f2 = st.columns([2, 1])
        layer = f1.selectbox("Layer", layer_names, index=layer_names.index(content_default) if content_default in layer_names else 0)
        steps = f2.number_input("Steps (Adam)", 10, 2000, 200, 10)
        g1, g2 = st.columns(2)
        alpha_weight = g1.number_input("α-norm weight λα", 0.0, 10.0, 1e-3, format="%.0e")
        tv_weight = g2.number_input("TV^β weight λV", 0.0, 10.0, 1e-2, format="%.0e")
        run = st.form_submit_button("Run", type="primary")
    config = I.FeatureInversionConfig(layer=layer, steps=int(steps), alpha_weight=float(alpha_weight), tv_weight=float(tv_weight))
    key = job_key("features", config.as_dict(), None)
    if run:
        try:
            submit(I.invert_features, key, f"Rebuild from {layer}", handle, x, config)
        except GlassboxError as error:
            st.error(str(error))
    result = show_job(key, "")
    if result is not None:
        show_result(result, name=selection.image_name, stem=f"{selection.image_name}_features_{layer}", key="features",
                    preset=None, mask=None)
    elif jobs.registry().find(key) is None:
        st.info("Press **Run** to start.")
    st.stop()

# ---------------------------------------------------------------------------------------------
# Class inversion

left, right = st.columns([3, 2], gap="large")
with left:
    target = class_picker(handle, label="Change this image into a:", key="target", default=TIGER,
                          help="Type to search the class names.")
    st.markdown("**Loss weights** in the paper's units (classification is always × 1; negative values are allowed)")
    w = st.columns(4)
    paper_weights, weight_errors = [], []
    for i, (term, label) in enumerate(TERM_LABELS.items()):
        st.session_state.setdefault(f"inv_w_{term}", format_weight(DEFAULT_WEIGHTS[i]))
        text = w[i].text_input(label, key=f"inv_w_{term}", help="A number such as 1e-7, -6e-11 or 0.")
        value = parse_weight(text)
        if value is None:
            weight_errors.append(f"The {label.lower()} weight '{text}' is not a number; write it like 1e-7 or 0.")
        paper_weights.append(value or 0.0)
    for sentence in weight_errors:
        st.error(sentence)
    weights = I.LossWeights.from_paper(*paper_weights, std=handle.spec.std)
    with st.expander("How the weights are converted"):
        st.markdown(
            "The paper ran Caffe's VGG-19 on 0–255 images; the losses here are the same sums on [0, 1] images. "
            "TV is linear in the pixel scale, so its weight × 255; colour is quadratic, × 255². Features of a "
            f"ReLU net scale with its input (one input unit here is 255 × std = {255 * float(np.mean(handle.spec.std)):.1f} levels), "
            "so content takes that factor squared and style (a Gram matrix, squared again) to the fourth power; "
            f"style then gets a measured gain of {I.FEATURE_GAIN['style']} on the bundled model "
            "(without it the paper's tiger row is stuck on the style term).\n\n"
            f"Weights used: content {weights.content:.3g} · style {weights.style:.3g} · TV {weights.tv:.3g} · "
            f"colour {weights.colour:.3g}")
with right:
    if "inv_optimizer" not in st.session_state:
        st.session_state["inv_optimizer"] = "lbfgs"
    optimizer = st.radio("Optimiser", list(OPTIMIZERS), key="inv_optimizer", format_func=OPTIMIZERS.get)
    st.session_state.setdefault("inv_jitter", 0)
    jitter = st.slider("Jitter (px)", 0, 32, key="inv_jitter", disabled=optimizer == "lbfgs",
                       help="A random shift of up to this many pixels before each step (the paper: 16). L-BFGS "
                            "cannot take it: its line search needs the same function at every try.")
    if optimizer == "lbfgs":
        jitter = 0
    st.session_state.setdefault("inv_steps", 40)
    steps = st.number_input("Steps", 1, 1000, key="inv_steps")
    noise = st.toggle("Start from noise (sec. 6)", key="inv_noise",
                      help="The losses then refer to the noise image; the result is the model's idea of the class.")

st.markdown("**Mask** (sec. 2.3): only the bright area may change")
if "inv_mask_kind" not in st.session_state:
    st.session_state["inv_mask_kind"] = "none"
m1, m2 = st.columns([2, 3], gap="large")
with m1:
    mask_kind = st.radio("Mask", list(MASK_KINDS), key="inv_mask_kind", format_func=MASK_KINDS.get,
                         label_visibility="collapsed", horizontal=True)
mask, mask_error = None, None
size = handle.input_size
try:
    with m1:
        if mask_kind in ("ellipse", "rectangle"):
            st.session_state.setdefault("inv_box_x", (25, 75))
            st.session_state.setdefault("inv_box_y", (20, 80))
            bx = st.slider("Left – right (%)", 0, 100, key="inv_box_x")
            by = st.slider("Top – bottom (%)", 0, 100, key="inv_box_y")
            box = (bx[0] / 100, by[0] / 100, bx[1] / 100, by[1] / 100)
            mask = I.ellipse_mask(size, box) if mask_kind == "ellipse" else I.rectangle_mask(size, box)
        elif mask_kind == "paint":
            stroke = st.slider("Brush size", 5, 60, 25, key="inv_brush")
            st.caption("Paint over the area that may change. The canvas shows the model's view.")
        elif mask_kind == "upload":
            upload = st.file_uploader("Mask image (white = may change)", type=["png", "jpg", "jpeg", "bmp", "webp"],
                                      key="inv_mask_upload")
            if upload is not None:
                decoded = images.decode_image(upload.getvalue())
                mask = I.mask_from_pixels(np.asarray(decoded.convert("L")), size)
    if mask_kind == "paint":
        with m2:
            from streamlit_drawable_canvas import st_canvas

            canvas = st_canvas(fill_color="rgba(255, 80, 0, 0.4)", stroke_width=stroke, stroke_color="rgba(255, 80, 0, 0.6)",
                               background_image=images.to_png_bytes(view), height=size * 2 if size <= 160 else size,
                               width=size * 2 if size <= 160 else size, drawing_mode="freedraw", return_image_data=True,
                               key=f"inv_canvas_{selection.digest[:8]}")
            painted = canvas.image_data
            if st.session_state.get("inv_painted_for", selection.digest) != selection.digest:
                st.session_state.pop("inv_painted_mask", None)  # a new image starts with a clean canvas
            if painted is not None and painted[..., 3].any():
                st.session_state["inv_painted_mask"] = I.mask_from_pixels(painted, size)
                st.session_state["inv_painted_for"] = selection.digest
        mask = st.session_state.get("inv_painted_mask")
        if mask is None:
            raise GlassboxError("The mask is empty: paint over the area that may change, then press Run.")
        if mask.shape != (size, size):  # painted for a model with another input size
            mask = I.mask_from_pixels((np.asarray(mask) * 255).astype(np.uint8), size)
        mask = I.validate_mask(mask, size)
except GlassboxError as error:
    mask, mask_error = None, str(error)
if mask_error:
    st.error(mask_error)
elif mask is not None and mask_kind != "paint":
    with m2:
        st.image(plots.mask_preview(view, mask), caption=f"may change: {100 * mask.mean():.0f} % of the image", width=260)
compare = mask is not None and st.checkbox("Also run without the mask, to compare side by side", key="inv_compare")

config = I.InversionConfig(weights=weights, optimizer=optimizer, steps=int(steps or 40), jitter=int(jitter),
                           start="noise" if noise else "image")
settings = {"target": int(target), **config.as_dict()}
key = job_key("class", settings, mask)
unmasked_key = job_key("class", settings, None)
already = ranking.indices[0] == target and not noise
preset = st.session_state.get("inv_preset")
target_label = handle.class_names[target]

run = st.button("Run", type="primary", disabled=bool(mask_error or weight_errors))
if already:
    st.info(f"The model already calls this image a {target_label}: pick another class to change it into.")
elif run and not mask_error:
    try:
        submit(I.invert, key, f"{selection.image_name} → {target_label}", handle, x, int(target), config, mask=mask)
        if compare:
            submit(I.invert, unmasked_key, f"{selection.image_name} → {target_label}, no mask", handle, x, int(target), config)
    except GlassboxError as error:
        st.error(str(error))

if not already:
    result = show_job(key, target_label)
    if result is not None:
        stem = f"{selection.image_name}_{target_label.replace(' ', '_')}"
        if compare:
            other = jobs.registry().find(unmasked_key)
            if other is not None and other.state == "done":
                st.subheader("Masked and unmasked, side by side")
                s1, s2 = st.columns(2)
                for column, run_result, title in ((s1, result, "masked"), (s2, other.result, "unmasked")):
                    p = float(run_result.final_probs[target])
                    column.image(run_result.image, width="stretch",
                                 caption=f"{title} · {handle.class_names[run_result.final_class]} · p({target_label}) = {p:.3f}")
            else:
                show_job(unmasked_key, target_label)
        show_result(result, name=selection.image_name, stem=stem, key="class", preset=preset, mask=mask)
    elif jobs.registry().find(key) is None:
        st.info("Press **Run** to start. The default weights are the paper's tiger row; the presets above set the others.")
