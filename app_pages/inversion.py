"""Class inversion: change the photo until it strongly is the target class (Anosheh, Kapadia & Rulison).

Every setting that goes into a run's job key lives in the page's link, so a reload or a second tab
finds the running or finished run by itself. A painted or uploaded mask cannot live in a link: the
link carries its digest and the mask waits in ``engine.cache`` (bounded), so a reload on the same
server finds it; after a server restart the page asks for it again. Shape masks live in the link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

import numpy as np
import streamlit as st

from engine import cache, images, inversion, jobs, models, plots
from engine.errors import GlassboxError
from streamlit_app import (Selection, class_picker, dump_bool, page_header, parse_bool, set_url_value, show_job,
                           start_job, url_value, url_widget, use_as_image_button)

TIGER = 292
TERM_LABELS = {"content": "Content", "style": "Style", "tv": "Total variation", "colour": "Colour"}
MASK_KINDS = {"none": "No mask", "ellipse": "Ellipse", "rectangle": "Rectangle", "paint": "Paint it",
              "upload": "Upload a mask"}
HOLE_KINDS = {kind: label for kind, label in MASK_KINDS.items() if kind != "none"}
OPTIMIZERS = {"lbfgs": "L-BFGS (the paper's; no jitter)", "adam": "Adam", "gd": "Gradient descent"}
MODES = {"class": "Change the class (Anosheh et al.)", "hole": "Fill a hole (the paper's results)",
         "features": "Rebuild from one layer (Mahendran & Vedaldi)"}
FILL_LABELS = {"smooth": "Surroundings, blurred in", "grey": "Mid-grey", "noise": "Noise"}
CONTENT_LOSS_LABELS = {"mse": "Feature MSE (Gatys; the paper's code)", "gram": "Gram distance (the paper's text)"}
CONTENT_LOSS_HELP = ("Sec. 2.2's text describes the content loss as the distance between the Gram matrices at the "
                     "content layer; the paper's code (Liu's port of Gatys) computes the feature MSE, 1/2 Σ (F − P)². "
                     "Every preset uses the feature MSE.")
DEFAULT_WEIGHTS = inversion.PRESETS["tiger-face"].paper_weights  # the paper's tiger row, as InversionConfig's default
DEFAULT_BOX_X, DEFAULT_BOX_Y = (25, 75), (20, 80)
DEFAULT_STEPS, DEFAULT_FEATURE_STEPS = 40, 200
IDLE_CLASS = "Press **Run** to start. The default weights are the paper's tiger row; the presets above set the others."
IDLE_HOLE = ("Press **Run** to erase the hole and fill it so the model sees the target class. Outside the hole the "
             "photo stays exactly as it is.")
LIVE_FIELDS = ("step", "total", "target", "top1", "image")  # record fields that are not loss terms
MASK_DIGEST_PARAMS = {"paint": "painted", "upload": "uploaded"}  # the link names such a mask by its digest


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True, eq=False)
class MaskChoice:
    """The mask the controls chose (None: the whole image may change), or why there is none."""

    kind: str
    mask: np.ndarray | None = None
    error: str | None = None
    box: tuple[tuple[int, int], tuple[int, int]] | None = None  # a shape's (left, right), (top, bottom) in %

    @property
    def digest(self) -> str:
        return inversion.mask_digest(self.mask)

    @property
    def pixels(self) -> int | None:
        return None if self.mask is None else int(self.mask.sum())


@dataclass(frozen=True, eq=False)
class ClassSettings:
    """What the class-inversion controls chose; ``paper_weights`` in the paper's Caffe units."""

    target: int
    paper_weights: tuple[float, float, float, float]
    weight_errors: tuple[str, ...]
    optimizer: str
    jitter: int
    steps: int
    noise: bool
    mask: MaskChoice  # hole-filling: the hole
    compare: bool
    content_loss: str = "mse"
    hole: bool = False  # hole-filling: erase ``mask`` and refill it
    fill: str = "smooth"

    def weights(self, handle: models.ModelHandle) -> inversion.LossWeights:
        return inversion.LossWeights.from_paper(*self.paper_weights, std=handle.spec.std,
                                                content_loss=self.content_loss)

    def config(self, handle: models.ModelHandle) -> inversion.InversionConfig:
        return inversion.InversionConfig(weights=self.weights(handle), optimizer=self.optimizer, steps=self.steps,
                                         jitter=self.jitter, start="noise" if self.noise else "image",
                                         content_loss=self.content_loss)

    @property
    def runnable(self) -> bool:
        return not (self.mask.error or self.weight_errors)


@dataclass(frozen=True)
class FeatureSettings:
    """What the feature-inversion form submitted."""

    layer: str
    steps: int
    alpha_weight: float
    tv_weight: float

    def config(self) -> inversion.FeatureInversionConfig:
        return inversion.FeatureInversionConfig(layer=self.layer, steps=self.steps, alpha_weight=self.alpha_weight,
                                                tv_weight=self.tv_weight)


def job_key(kind: str, handle: models.ModelHandle, selection: Selection, settings: dict, mask_digest: str) -> str:
    """The run's key: model, image, settings and mask. Built only from what the link carries."""
    settings_text = json.dumps(settings, sort_keys=True, default=str)
    return "|".join(["inversion", kind, handle.name, selection.digest, settings_text, mask_digest])


# ---------------------------------------------------------------------------------------------
# Parsing what a link or a text box says


def format_weight(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def parse_weight(text: str) -> float | None:
    try:
        value = float(text.strip().replace("−", "-"))
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def parse_range(text: str) -> tuple[int, int]:
    low, high = (int(part) for part in text.split("-"))
    if not 0 <= low <= high <= 100:
        raise ValueError(text)
    return (low, high)


def dump_range(value: tuple[int, int]) -> str:
    return f"{value[0]}-{value[1]}"


# ---------------------------------------------------------------------------------------------
# Presets


def apply_preset(preset: inversion.Preset, handle: models.ModelHandle) -> None:
    """Put a paper row into the widgets; the widgets write it into the link on the next run."""
    st.session_state["_next_sample"] = preset.image
    st.session_state.pop(f"_class_target_{handle.name}", None)
    set_url_value("target", str(preset.target))
    st.session_state["inv_mode"] = preset.mode
    for term, value in zip(TERM_LABELS, preset.paper_weights):
        st.session_state[f"inv_w_{term}"] = format_weight(value)
    st.session_state["inv_content_loss"] = preset.content_loss
    st.session_state["inv_optimizer"] = preset.optimizer
    st.session_state["inv_jitter"] = preset.jitter
    st.session_state["inv_steps"] = preset.steps
    st.session_state["inv_noise"] = False
    kind_key = "inv_hole_kind" if preset.hole else "inv_mask_kind"
    if preset.hole:
        st.session_state["inv_fill"] = preset.fill
    if preset.mask is None:
        st.session_state[kind_key] = "none"
    else:
        shape, box = inversion.CHELSEA_MASKS[preset.mask]
        st.session_state[kind_key] = shape
        st.session_state["inv_box_x"], st.session_state["inv_box_y"] = box_percent(box)
    set_url_value("preset", preset.name)


def preset_controls(handle: models.ModelHandle) -> None:
    with st.expander("The paper's results as presets: all 17 rows, one click each", icon=":material/school:"):
        st.caption("Each row of the paper's figure, in its order: new class (content, style, TV, colour weights as "
                   "printed). The weights are entered in the paper's Caffe units and converted (see *How the weights "
                   "are converted* below); every preset uses the feature MSE as its content loss. Hover over a row "
                   "for its note.")
        for group, title in inversion.PRESET_GROUPS.items():
            rows = [preset for preset in inversion.PRESETS.values() if preset.group == group]
            st.markdown(f"**{title}**")
            if group == "dog":
                st.caption("No photo of a dog under a free licence ships with this app or its packages, so the "
                           "dog photo's six rows start from the cat photo (chelsea), the nearest subject.")
            columns = st.columns(3)
            for i, preset in enumerate(rows):
                with columns[i % 3]:
                    if st.button(preset.label, key=f"preset_{preset.name}", width="stretch",
                                 help=preset.note or None):
                        apply_preset(preset, handle)
                        st.rerun()


def matching_preset(settings: ClassSettings, image_name: str) -> inversion.Preset | None:
    """The preset the link names, while the settings still are that preset's (else None, and the
    link forgets it): a run's manifest names a preset only when it ran as the preset."""
    preset = inversion.PRESETS.get(url_value("preset") or "")
    if preset is not None and not _is_preset(preset, settings, image_name):
        preset = None
    set_url_value("preset", preset.name if preset else None)
    return preset


def _is_preset(preset: inversion.Preset, settings: ClassSettings, image_name: str) -> bool:
    shape, box = inversion.CHELSEA_MASKS[preset.mask] if preset.mask else ("none", None)
    return (image_name == preset.image and settings.target == preset.target and settings.hole == preset.hole
            and settings.paper_weights == tuple(float(w) for w in preset.paper_weights)
            and settings.content_loss == preset.content_loss and (not preset.hole or settings.fill == preset.fill)
            and settings.optimizer == preset.optimizer and settings.jitter == preset.jitter
            and settings.steps == preset.steps and not settings.noise and settings.mask.kind == shape
            and settings.mask.box == (None if box is None else box_percent(box)))


def box_percent(box: tuple[float, float, float, float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """A (left, top, right, bottom) box in fractions as the sliders show it: (left, right), (top, bottom) in %."""
    left, top, right, bottom = box
    return (round(100 * left), round(100 * right)), (round(100 * top), round(100 * bottom))


# ---------------------------------------------------------------------------------------------
# Controls


def mode_controls() -> str:
    return url_widget(st.segmented_control, "What to run", key="inv_mode", param="mode", default="class",
                      options=list(MODES), format_func=MODES.get, required=True)


def weight_controls(handle: models.ModelHandle) -> tuple[tuple[float, ...], tuple[str, ...], str]:
    """The four weights as typed (paper units), a sentence for each that is not a number, the content loss."""
    st.markdown("**Loss weights** in the paper's units (classification is always × 1; negative values are allowed)")
    columns = st.columns(4)
    values, errors = [], []
    for column, (term, label), default in zip(columns, TERM_LABELS.items(), DEFAULT_WEIGHTS):
        text = url_widget(column.text_input, label, key=f"inv_w_{term}", param=f"w_{term}",
                          default=format_weight(default), help="A number such as 1e-7, -6e-11 or 0.")
        value = parse_weight(text)
        if value is None:
            errors.append(f"The {label.lower()} weight '{text}' is not a number; write it like 1e-7 or 0.")
        values.append(value or 0.0)
    for sentence in errors:
        st.error(sentence)
    content_loss = url_widget(st.radio, "Content loss", key="inv_content_loss", param="content_loss", default="mse",
                              options=list(CONTENT_LOSS_LABELS), format_func=CONTENT_LOSS_LABELS.get,
                              horizontal=True, help=CONTENT_LOSS_HELP)
    st.caption("The presets use the feature MSE, as the paper's code did; its text describes a Gram distance.")
    render_weight_conversion(handle, inversion.LossWeights.from_paper(*values, std=handle.spec.std,
                                                                      content_loss=content_loss), content_loss)
    return tuple(values), tuple(errors), content_loss


def optimiser_controls(*, noise_allowed: bool = True) -> tuple[str, int, int, bool]:
    """(optimiser, jitter in px, steps, start from noise); hole-filling offers no noise start."""
    optimizer = url_widget(st.radio, "Optimiser", key="inv_optimizer", param="optimizer", default="lbfgs",
                           options=list(OPTIMIZERS), format_func=OPTIMIZERS.get)
    jitter = url_widget(st.slider, "Jitter (px)", key="inv_jitter", param="jitter", default=0,
                        parse=int, min_value=0, max_value=32, disabled=optimizer == "lbfgs",
                        help="A random shift of up to this many pixels before each step (the paper: 16). L-BFGS "
                             "cannot take it: its line search needs the same function at every try.")
    steps = url_widget(st.number_input, "Steps", key="inv_steps", param="steps", default=DEFAULT_STEPS,
                       parse=int, min_value=1, max_value=1000)
    if not noise_allowed:
        return optimizer, 0 if optimizer == "lbfgs" else int(jitter), int(steps or DEFAULT_STEPS), False
    noise = url_widget(st.toggle, "Start from noise (sec. 6)", key="inv_noise", param="noise", default=False,
                       parse=parse_bool, dump=dump_bool,
                       help="The losses then refer to the noise image; the result is the model's idea of the class.")
    return optimizer, 0 if optimizer == "lbfgs" else int(jitter), int(steps or DEFAULT_STEPS), bool(noise)


def mask_controls(handle: models.ModelHandle, selection: Selection, view: np.ndarray, *, hole: bool = False,
                  fill: str = "smooth") -> MaskChoice:
    """Sec. 2.3: none, a shape (its box in the link), a painting or an upload (their digest in the link).
    Hole-filling: the hole (a shape by default, never none), checked, and the photo with it erased."""
    if hole:
        st.markdown("**Hole**: the bright area is erased, then refilled so the model sees the target class")
        kinds, key, param, default = HOLE_KINDS, "inv_hole_kind", "hole", "ellipse"
    else:
        st.markdown("**Mask** (sec. 2.3): only the bright area may change")
        kinds, key, param, default = MASK_KINDS, "inv_mask_kind", "mask", "none"
    left, right = st.columns([2, 3], gap="large")
    with left:
        kind = url_widget(st.radio, "Hole" if hole else "Mask", key=key, param=param, default=default,
                          options=list(kinds), format_func=kinds.get, label_visibility="collapsed", horizontal=True)
    for other, param in MASK_DIGEST_PARAMS.items():
        if other != kind:
            set_url_value(param, None)
    try:
        if kind in ("ellipse", "rectangle"):
            with left:
                mask, box = shape_mask(kind, handle.input_size)
            choice = MaskChoice(kind, mask, box=box)
        elif kind == "paint":
            choice = MaskChoice(kind, painted_mask(handle, selection, view, left, right))
        elif kind == "upload":
            with left:
                choice = MaskChoice(kind, uploaded_mask(handle))
        else:
            choice = MaskChoice(kind)
        if hole:
            choice = MaskChoice(kind, inversion.hole_mask(choice.mask, handle.input_size), box=choice.box)
    except GlassboxError as error:
        choice = MaskChoice(kind, error=str(error).replace("The mask is empty", "The hole is empty") if hole
                            else str(error))
    if choice.error:
        st.error(choice.error)
    elif hole:
        right.image(erased_view(view, choice.mask, fill), width=260,
                    caption=f"the hole, erased: {100 * choice.mask.mean():.0f} % of the image")
    elif choice.mask is not None and kind != "paint":
        right.image(plots.mask_preview(view, choice.mask), caption=f"may change: {100 * choice.mask.mean():.0f} % of "
                    "the image", width=260)
    return choice


def erased_view(view: np.ndarray, hole: np.ndarray, fill: str) -> np.ndarray:
    """The model's view with the hole erased as the run will start (a blur of a 224 px image: milliseconds)."""
    x = images.to_tensor(view)
    return images.to_uint8(inversion.erase_hole(x, hole, fill))


def shape_mask(kind: str, size: int) -> tuple[np.ndarray, tuple[tuple[int, int], tuple[int, int]]]:
    box_x = url_widget(st.slider, "Left – right (%)", key="inv_box_x", param="box_x", default=DEFAULT_BOX_X,
                       parse=parse_range, dump=dump_range, min_value=0, max_value=100)
    box_y = url_widget(st.slider, "Top – bottom (%)", key="inv_box_y", param="box_y", default=DEFAULT_BOX_Y,
                       parse=parse_range, dump=dump_range, min_value=0, max_value=100)
    box = (box_x[0] / 100, box_y[0] / 100, box_x[1] / 100, box_y[1] / 100)
    return cache.inversion_shape_mask(kind, size, box), (tuple(box_x), tuple(box_y))


def painted_mask(handle: models.ModelHandle, selection: Selection, view: np.ndarray, left, right) -> np.ndarray:
    """The mask painted on the canvas (kept in the session), or the one the link names."""
    from streamlit_drawable_canvas import st_canvas

    size = handle.input_size
    stroke = left.slider("Brush size", 5, 60, 25, key="inv_brush")
    left.caption("Paint over the area that may change. The canvas shows the model's view.")
    with right:
        canvas = st_canvas(fill_color="rgba(255, 80, 0, 0.4)", stroke_width=stroke,
                           stroke_color="rgba(255, 80, 0, 0.6)",
                           background_image=images.to_png_bytes(view), height=size * 2 if size <= 160 else size,
                           width=size * 2 if size <= 160 else size, drawing_mode="freedraw", return_image_data=True,
                           key=f"inv_canvas_{selection.digest[:8]}")
    if st.session_state.get("inv_painted_for", selection.digest) != selection.digest:
        st.session_state.pop("inv_painted_mask", None)  # a new image starts with a clean canvas
        set_url_value(MASK_DIGEST_PARAMS["paint"], None)
    painted = canvas.image_data
    drawn = painted is not None and bool(painted[..., 3].any())
    if drawn:
        st.session_state["inv_painted_mask"] = inversion.mask_from_pixels(painted, size)
    mask = st.session_state.get("inv_painted_mask")
    if mask is None:
        mask = linked_mask("paint", "paint over the area that may change, then press Run")
        st.session_state["inv_painted_mask"] = mask
    st.session_state["inv_painted_for"] = selection.digest
    mask = remembered("paint", inversion.resize_mask(mask, size))
    if not drawn:  # a reload: the canvas starts blank, the mask comes from the link
        right.image(plots.mask_preview(view, mask), width=260,
                    caption="The mask in use (from this link or an earlier painting); paint to replace it.")
    return mask


def uploaded_mask(handle: models.ModelHandle) -> np.ndarray | None:
    """The uploaded mask, or the one the link names (None: no file yet, the whole image may change)."""
    upload = st.file_uploader("Mask image (white = may change)", type=["png", "jpg", "jpeg", "bmp", "webp"],
                              key="inv_mask_upload")
    if upload is None:
        if not url_value(MASK_DIGEST_PARAMS["upload"]):
            return None
        mask = linked_mask("upload", "upload it again")
        st.caption("The uploaded mask from this link; upload another to replace it.")
    else:
        decoded = images.decode_image(upload.getvalue())
        mask = inversion.mask_from_pixels(np.asarray(decoded.convert("L")), handle.input_size)
    return remembered("upload", inversion.resize_mask(mask, handle.input_size))


def linked_mask(kind: str, again: str) -> np.ndarray:
    """The painted/uploaded mask whose digest the link carries (a reload on the same server)."""
    param = MASK_DIGEST_PARAMS[kind]
    mask = cache.recall_inversion_mask(url_value(param))
    if mask is not None:
        return mask
    if url_value(param):
        raise GlassboxError(f"The {param} mask of this link is no longer on this server (masks are kept only while "
                            f"it runs): {again}.")
    raise GlassboxError(f"The mask is empty: {again}.")


def remembered(kind: str, mask: np.ndarray) -> np.ndarray:
    """Keep the mask for reloads and put its digest in the link."""
    set_url_value(MASK_DIGEST_PARAMS[kind], cache.remember_inversion_mask(mask))
    return mask


def class_controls(handle: models.ModelHandle, selection: Selection, view: np.ndarray, *,
                   hole: bool = False) -> ClassSettings:
    """Class inversion's controls; ``hole``: hole-filling's (a hole and its fill instead of a mask,
    no noise start, no unmasked comparison)."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        target = class_picker(handle, label="Fill the hole so the model sees a:" if hole else
                              "Change this image into a:", key="target", default=TIGER,
                              help="Type to search the class names.")
        paper_weights, weight_errors, content_loss = weight_controls(handle)
    with right:
        optimizer, jitter, steps, noise = optimiser_controls(noise_allowed=not hole)
        fill = "smooth"
        if hole:
            fill = url_widget(st.radio, "Erase the hole to", key="inv_fill", param="fill", default="smooth",
                              options=list(inversion.FILLS), format_func=FILL_LABELS.get,
                              help="What the hole holds when the run starts: the colours around it spread in "
                                   "(nothing of the hole's own content), mid-grey, or noise.")
    mask = mask_controls(handle, selection, view, hole=hole, fill=fill)
    compare = not hole and mask.mask is not None and url_widget(
        st.checkbox, "Also run without the mask, to compare side by side", key="inv_compare", param="compare",
        default=False, parse=parse_bool, dump=dump_bool)
    return ClassSettings(target=int(target), paper_weights=paper_weights, weight_errors=weight_errors,
                         optimizer=optimizer, jitter=jitter, steps=steps, noise=noise, mask=mask, compare=bool(compare),
                         content_loss=content_loss, hole=hole, fill=fill)


def feature_controls(handle: models.ModelHandle, layer_names: list[str]) -> tuple[FeatureSettings, bool]:
    """The feature-inversion form: (what it submitted, whether Run was pressed)."""
    content_default = inversion.default_layers(handle)[0]
    default_layer = content_default if content_default in layer_names else layer_names[0]
    with st.form("features_settings", border=False):
        f1, f2 = st.columns([2, 1])
        layer = url_widget(f1.selectbox, "Layer", key="inv_f_layer", param="f_layer", default=default_layer,
                           options=layer_names)
        steps = url_widget(f2.number_input, "Steps (Adam)", key="inv_f_steps", param="f_steps",
                           default=DEFAULT_FEATURE_STEPS, parse=int, min_value=10,
                           max_value=2000, step=10)
        g1, g2 = st.columns(2)
        alpha_weight = url_widget(g1.number_input, "α-norm weight λα", key="inv_f_alpha", param="f_alpha",
                                  default=1e-3, parse=float, min_value=0.0, max_value=10.0,
                                  format="%.0e")
        tv_weight = url_widget(g2.number_input, "TV^β weight λV", key="inv_f_tv", param="f_tv", default=1e-2,
                               parse=float, min_value=0.0, max_value=10.0, format="%.0e")
        run = st.form_submit_button("Run", type="primary")
    return FeatureSettings(layer, int(steps), float(alpha_weight), float(tv_weight)), run


# ---------------------------------------------------------------------------------------------
# Drawing


def render_weight_conversion(handle: models.ModelHandle, weights: inversion.LossWeights, content_loss: str) -> None:
    with st.expander("How the weights are converted"):
        st.markdown(
            "The paper ran Caffe's VGG-19 on 0–255 images; the losses here are the same sums on [0, 1] images. "
            "TV is linear in the pixel scale, so its weight × 255; colour is quadratic, × 255². Features of a "
            f"ReLU net scale with its input (one input unit here is 255 × std = "
            f"{255 * float(np.mean(handle.spec.std)):.1f} levels), so content takes that factor squared and style "
            "(a Gram matrix, squared again) to the fourth power; "
            f"style then gets a measured gain of {inversion.FEATURE_GAIN['style']} on the bundled model "
            "(without it the paper's tiger row is stuck on the style term)"
            + ("; the Gram content loss converts as style does, a starting point rather than the paper's setting "
               "(its weights were tuned for its code's feature MSE)" if content_loss == "gram" else "")
            + ".\n\n"
            f"Weights used: content {weights.content:.3g} · style {weights.style:.3g} · TV {weights.tv:.3g} · "
            f"colour {weights.colour:.3g}")


def render_live(status: jobs.JobStatus, *, target_label: str) -> None:
    """The running job's last snapshot and its loss curves so far, from the job's own records."""
    records = status.records
    if not records:
        return
    shots = [record for record in records if "image" in record]
    left, right = st.columns([1, 2])
    if shots:
        left.image(shots[-1]["image"], caption=f"step {shots[-1]['step']}", width="stretch")
    names = [name for name in records[-1] if name not in LIVE_FIELDS]
    figure = plots.inversion_loss_figure({name: [record.get(name, np.nan) for record in records] for name in names},
                                         [record["total"] for record in records],
                                         target_prob=[record["target"] for record in records],
                                         target_label=target_label)
    right.plotly_chart(figure, width="stretch", key=f"live_{status.id}_{len(records)}")


def render_outcome(handle: models.ModelHandle, result: inversion.InversionResult, target_label: str | None) -> None:
    if result.outcome == "diverged":
        st.warning(result.message)
    elif result.target is not None:
        p = float(result.final_probs[result.target])
        if result.reached_target:
            st.success(f"After {result.steps} steps the model calls it a **{target_label}** (p = {p:.3f}); "
                       f"{result.evaluations} forward+backward passes.")
        else:
            st.warning(f"After {result.steps} steps the model still says **{handle.class_names[result.final_class]}**; "
                       f"{target_label} reached p = {p:.3f}. Run more steps, lower the constraint weights or widen "
                       "the mask.")
        if result.outcome == "stalled":
            st.info(result.message)


def render_result(handle: models.ModelHandle, status: jobs.JobStatus, ranking: models.Prediction | None, *,
                  name: str, stem: str, key: str, preset: str | None, mask_pixels: int | None) -> None:
    """A finished run: before / after / the change, the classes before and after, the loss terms,
    the snapshots, and the downloads."""
    result: inversion.InversionResult = status.result
    target_label = handle.class_names[result.target] if result.target is not None else None
    render_outcome(handle, result, target_label)
    rebuilt = result.target is None  # feature inversion: the run starts from noise and aims at the photo
    if result.start is not None:  # hole-filling: before, the hole erased, after, the change
        c1, erased, c2, c3 = st.columns(4)
        erased.image(result.start, width="stretch",
                     caption=f"the hole, erased · {handle.class_names[int(result.top1[0])]}")
    else:
        c1, c2, c3 = st.columns(3)
    c1.image(result.original, width="stretch",
             caption=f"{'the photo' if rebuilt else 'before'} · {handle.class_names[result.original_class]}")
    c2.image(result.image, width="stretch", caption=f"{'rebuilt' if rebuilt else 'after'} in {result.steps} steps · "
                                                    f"{handle.class_names[result.final_class]}")
    if result.start is not None:  # the fill itself, not the erasing: after minus the erased photo
        c3.image(images.difference_image(result.image, result.start, gain=4.0), width="stretch",
                 caption="what the run painted into the hole × 4, around mid-grey")
    else:
        c3.image(images.difference_image(result.image, result.original, gain=4.0), width="stretch",
                 caption=f"{'rebuilt minus the photo' if rebuilt else 'the change'} × 4, around mid-grey")
    if rebuilt:
        made, operation = f"{name} rebuilt", f"feature inversion from {result.config.get('layer') or 'one layer'}"
    elif result.start is not None:
        made, operation = f"{name}, hole filled as {target_label}", f"hole filling → {target_label}"
    else:
        made, operation = f"{name} → {target_label}", f"class inversion → {target_label}"
    with c2:
        use_as_image_button(result.image, name=made, operation=operation, settings=result.config,
                            key=f"use_inversion_{key}")
    if result.target is not None and ranking is not None:
        after = cache.inversion_after(handle.name, status.id, result.image)
        b1, b2 = st.columns(2)
        b1.plotly_chart(plots.topk_bar(ranking.top(5), highlight=result.target, title="Before"), width="stretch",
                        key=f"before_{key}")
        b2.plotly_chart(plots.topk_bar(after, highlight=result.target, title="After"), width="stretch",
                        key=f"after_{key}")
    log = st.toggle("Log scale", key=f"log_{key}", help="Useful when one term is orders of magnitude above the others "
                    "(only positive values show).")
    st.plotly_chart(plots.inversion_loss_figure(result.terms, result.total, target_prob=result.target_prob,
                                                target_label=target_label or "", log=log),
                    width="stretch", key=f"losses_{key}")
    render_snapshots(handle, result, key=key, target_label=target_label)
    downloads = cache.inversion_downloads(handle.name, status.id, name, stem, preset, mask_pixels, result)
    d1, d2, d3, d4 = st.columns(4)
    d1.download_button("Final PNG", downloads["png"], f"{stem}.png", "image/png", key=f"png_{key}")
    d2.download_button("Snapshots (ZIP)", downloads["zip"], f"{stem}_snapshots.zip", "application/zip",
                       key=f"zip_{key}")
    d3.download_button("Loss log (CSV)", downloads["csv"], f"{stem}_losses.csv", "text/csv", key=f"csv_{key}")
    d4.download_button("Manifest (JSON)", downloads["json"], f"{stem}.json", "application/json", key=f"json_{key}")


def render_snapshots(handle: models.ModelHandle, result: inversion.InversionResult, *, key: str,
                     target_label: str | None) -> None:
    steps = [step for step, _ in result.snapshots]
    if len(steps) <= 1:
        return
    rebuilt = result.target is None
    chosen = st.select_slider("Snapshots: step", steps, value=steps[-1], key=f"snap_{key}")
    pixels = dict(result.snapshots)[chosen]
    s1, s2, s3 = st.columns(3)
    s1.image(pixels, caption=f"step {chosen}", width="stretch")
    start = result.start if result.start is not None else result.original  # hole-filling: from the erased photo
    s2.image(images.difference_image(pixels, start, gain=4.0), width="stretch",
             caption=f"{'minus the photo' if rebuilt else 'change from the start'} at step {chosen} × 4")
    at = min(chosen, len(result.total) - 1)
    if result.target is not None:
        s3.metric(f"p({target_label}) at step {chosen}", f"{result.target_prob[at]:.3f}")
        s3.metric("top-1 at that step", handle.class_names[int(result.top1[at])])
    s3.metric("total loss", f"{result.total[at]:.4g}")


def render_comparison(handle: models.ModelHandle, masked: inversion.InversionResult,
                      unmasked: inversion.InversionResult, target: int) -> None:
    target_label = handle.class_names[target]
    st.subheader("Masked and unmasked, side by side")
    columns = st.columns(2)
    for column, result, title in ((columns[0], masked, "masked"), (columns[1], unmasked, "unmasked")):
        p = float(result.final_probs[target])
        column.image(result.image, width="stretch",
                     caption=f"{title} · {handle.class_names[result.final_class]} · p({target_label}) = {p:.3f}")


# ---------------------------------------------------------------------------------------------
# The two modes


def run_features(handle: models.ModelHandle, selection: Selection, view: np.ndarray) -> None:
    st.markdown("Start from noise and change it until the chosen layer's features match the photo's "
                "(normalised Euclidean loss, with an α-norm and a TV^β prior). Early layers give the photo back; "
                "deep ones keep what the network needs and lose the rest.")
    layer_names = [layer.name for layer in handle.layers]
    if not layer_names:
        st.error("This model has no spatial layer to invert.")
        return
    settings, run = feature_controls(handle, layer_names)
    config = settings.config()
    key = job_key("features", handle, selection, config.as_dict(), inversion.mask_digest(None))
    def start() -> None:
        start_job(key, inversion.invert_features, handle, images.to_tensor(view, device=handle.device), config,
                  title=f"Rebuild from {settings.layer}", records=True)

    if run:
        start()
    status = show_job(key, live=partial(render_live, target_label=""), again=start)
    if status is not None:
        render_result(handle, status, None, name=selection.image_name, key="features", preset=None,
                      stem=f"{selection.image_name}_features_{settings.layer}", mask_pixels=None)


def run_class(handle: models.ModelHandle, selection: Selection, view: np.ndarray, *, hole: bool = False) -> None:
    """Class inversion, or (``hole``) hole-filling: the same controls, loop and result views."""
    ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
    settings = class_controls(handle, selection, view, hole=hole)
    preset = matching_preset(settings, selection.image_name)
    if preset is not None and preset.note:
        st.caption(f"Preset *{preset.label}*: {preset.note}")
    config = settings.config(handle)
    job_settings = {"target": settings.target, **config.as_dict(), **({"fill": settings.fill} if hole else {})}
    kind = "hole" if hole else "class"
    key = job_key(kind, handle, selection, job_settings, settings.mask.digest)
    unmasked_key = job_key(kind, handle, selection, job_settings, inversion.mask_digest(None))
    target_label = handle.class_names[settings.target]
    already = ranking.indices[0] == settings.target and not settings.noise
    run = st.button("Run", type="primary", disabled=not settings.runnable)
    if already:
        st.info(f"The model already calls this image a {target_label}: pick another class to change it into.")
        return
    live = partial(render_live, target_label=target_label)
    def start() -> None:
        x = images.to_tensor(view, device=handle.device)
        if hole:
            start_job(key, inversion.fill_hole, handle, x, settings.target, config, hole=settings.mask.mask,
                      fill=settings.fill, title=f"{selection.image_name}: a hole filled as {target_label}",
                      records=True)
        else:
            title = f"{selection.image_name} → {target_label}"
            start_job(key, inversion.invert, handle, x, settings.target, config, mask=settings.mask.mask, title=title,
                      records=True)
            if settings.compare:
                start_job(unmasked_key, inversion.invert, handle, x, settings.target, config,
                          title=f"{title}, no mask", records=True)

    if run and settings.runnable:
        start()
    status = show_job(key, live=live, idle=IDLE_HOLE if hole else IDLE_CLASS,
                      again=start if settings.runnable else None)
    if status is None:
        return
    if settings.compare:
        unmasked = show_job(unmasked_key, live=live, idle=None)
        if unmasked is not None:
            render_comparison(handle, status.result, unmasked.result, settings.target)
    stem = f"{selection.image_name}_{'hole_' if hole else ''}{target_label.replace(' ', '_')}"
    render_result(handle, status, ranking, name=selection.image_name, stem=stem, key=kind,
                  preset=preset.name if preset else None, mask_pixels=settings.mask.pixels)


def main() -> None:
    selection, handle = page_header(
        "Class inversion", "Anosheh, Kapadia & Rulison: optimise the photo itself so the model calls it the target class, while "
        "content, style, total-variation and colour losses (sec. 2.2) keep the change meaningful: stripes for "
        "a tiger rather than noise. A mask limits where it may change and jitter shifts it at every step "
        "(sec. 2.3). Fill a hole: erase part of the photo and refill it so the class shows through, the rest "
        "untouched.")
    preset_controls(handle)
    mode = mode_controls()
    view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    if mode == "features":
        run_features(handle, selection, view)
    else:
        run_class(handle, selection, view, hole=mode == "hole")


main()
