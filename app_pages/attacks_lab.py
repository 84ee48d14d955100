"""Attacks lab: the second half of the lecture ("Fooling ConvNets" to "Defending against Adversarial
Samples") on sets of images and across models.

Seven views, chosen by ``?view=``, one per family: **Universal** (Moosavi-Dezfooli et al.'s one
perturbation for every image, and the variant that spends the whole budget), **Transfer** (the
lecture's table of fooling rates from one model to another), **ε curves** (Kurakin et al.'s Fig. 2),
**Minimal perturbation** (FGSM, DeepFool and Szegedy et al.'s L-BFGS on the sidebar's image),
**Effort to flip** (the Mind's Eye paper's Fig. 4 on ImageNet models), **Black box** (Papernot et
al.'s substitute) and **Defences** (input transforms with naive and adaptive attacks, and Robinson &
Graham's detector). Every setting lives in the link; long work runs as a job with progress and
Cancel, and results are kept on disk by (model, set, settings), so a second visit opens at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from engine import attacks, cache, images, io, lab_runs
from engine.errors import GlassboxError
from engine.models import ModelHandle
from streamlit_app import (SetChoice, Selection, dump_bool, image_set_controls, open_image_set, page_header,
                           parse_bool, set_url_value, show_job, start_job, url_widget, use_as_image_button)

INTRO = ("The lecture's *Fooling ConvNets* half, on many images and many models: one perturbation that fools most "
         "photos (universal), perturbations that carry from one network to another (transfer), accuracy against ε "
         "for FGSM and its iterative cousins, the smallest change that flips a label, how hard each model is to "
         "push, an attack that only sees labels (black box), and what the classic defences leave standing once "
         "the attacker knows about them.")
VIEWS = {"universal": "Universal", "transfer": "Transfer", "curves": "ε curves", "minimal": "Minimal perturbation",
         "effort": "Effort to flip", "blackbox": "Black box", "defences": "Defences"}
SET_SOURCES = ("bundled", "heldout", "crops", "zip", "folder")
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TONES = {"success": st.success, "warning": st.warning, "info": st.info}


def view_control() -> str:
    return url_widget(st.segmented_control, "View", key="lab_view", param="view", default="universal",
                      options=list(VIEWS), format_func=VIEWS.get, required=True, label_visibility="collapsed")


def preset(label: str, params: dict[str, str | None], *, help: str, key: str, sample: str | None = None) -> None:
    """A one-click preset: the link's settings replaced by ``params`` (None removes one) and the page
    drawn again from them (every control of this page reads the link when its state is cleared);
    ``sample`` also makes a bundled photo the sidebar's image."""
    if st.button(label, icon=":material/school:", help=help, key=key):
        if sample is not None:
            st.session_state["_next_sample"] = sample
        for name in [k for k in st.session_state if str(k).startswith("lab_") and k != "lab_view"]:
            del st.session_state[name]
        for param, value in params.items():
            set_url_value(param, value)
        st.rerun()


def set_control(handle: ModelHandle, *, prefix: str, label: str, default: str, param: str, columns=None):
    choice = image_set_controls(key_prefix=prefix, default=default, sources=SET_SOURCES, label=label, param=param,
                                path_param=f"{param}_folder", columns=columns)
    return choice, open_image_set(handle, choice, what=label)


def job(key: str, action: str, start, *, idle: str):
    """The job behind ``key``: started by the ``action`` button (``start()`` launches it), drawn with
    progress and Cancel while it runs; its result once done."""
    if st.button(action, type="primary", key=f"lab_run_{key}"):
        start()
    status = show_job(key, idle=idle, cancelled=f"Cancelled. Press **{action}** to start again.", again=start)
    return None if status is None else status.result


def model_options(handle: ModelHandle) -> list[str]:
    """The bundled Lites, torchvision nets whose weights are on this machine, and the sidebar's model."""
    names = lab_runs.transfer_models()
    return names if handle.name in names else [*names, handle.name]


def with_handle(handle: ModelHandle, names: list[str]) -> list:
    """The chosen models for a job: the sidebar's own handle where it is chosen (it may be an uploaded
    checkpoint, which has no name to load by), the others by name."""
    return [handle if name == handle.name else name for name in names]


def percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def json_download(label: str, record: dict, name: str, key: str, container=st) -> None:
    container.download_button(label, io.manifest_json(record), name, "application/json", key=key)


# ---------------------------------------------------------------------------------------------
# Universal perturbations (Moosavi-Dezfooli et al. 2017)


@dataclass(frozen=True)
class UAPSettings:
    method: str  # deepfool (the lecture's algorithm) | sgd (the whole budget)
    norm: str  # inf | 2
    xi: float  # levels (L-inf) or the L2 norm in levels
    passes: int
    target: float  # stop at this training fooling rate

    def as_dict(self) -> dict:
        return {"method": self.method, "norm": self.norm, "xi": self.xi, "max_passes": self.passes,
                "target_fooling": self.target}


def uap_controls() -> UAPSettings:
    c1, c2, c3, c4, c5 = st.columns(5)
    method = url_widget(c1.selectbox, "Algorithm", key="lab_uap_method", param="method", default="sgd",
                        options=["sgd", "deepfool"],
                        format_func={"deepfool": "The lecture's (DeepFool steps)",
                                     "sgd": "Whole budget (gradient ascent)"}.get,
                        help="The lecture's algorithm adds each still-unfooled image's minimal DeepFool step and "
                             "projects back into the ball. The variant climbs the loss of every training image "
                             "at once, over random crops and flips, using the whole ball: it generalises better.")
    norm = url_widget(c2.selectbox, "Ball", key="lab_uap_norm", param="norm", default="inf", options=["inf", "2"],
                      format_func={"inf": "ℓ∞", "2": "ℓ2"}.get)
    default_xi = 10.0 if norm == "inf" else 2000.0
    xi = url_widget(c3.number_input, "ξ (8-bit levels)", key=f"lab_uap_xi_{norm}", param="xi", default=default_xi,
                    parse=float, min_value=1.0, max_value=255.0 if norm == "inf" else 20000.0, step=1.0,
                    help="ℓ∞: the largest change of any value, 10 levels = 10/255 (the paper's ξ). ℓ2: the "
                         "perturbation's length in levels over the whole picture (the paper's 2000).")
    passes = url_widget(c4.number_input, "Passes at most", key="lab_uap_passes", param="passes", default=5,
                        parse=int, min_value=1, max_value=50)
    target = url_widget(c5.number_input, "Stop at training fooling", key="lab_uap_target", param="fool",
                        default=0.8, parse=float, min_value=0.05, max_value=1.0, step=0.05, format="%.2f")
    return UAPSettings(method=method, norm=norm, xi=float(xi), passes=int(passes), target=float(target))


def universal_view(handle: ModelHandle, selection: Selection) -> None:
    p1, p2, _ = st.columns([2, 2, 1])
    with p1:
        preset("Preset: a UAP on the bundled photos (ℓ∞, ξ = 10)",
               {"train": None, "heldout": None, "method": None, "norm": None, "xi": None, "passes": None, "fool": None},
               help="Trained on the 20 bundled photos using the whole budget, measured on 20 held-out photos: it "
                    "fools most of them.", key="lab_p_uap")
    with p2:
        preset("Preset: the lecture's algorithm, same photos",
               {"train": None, "heldout": None, "method": "deepfool", "norm": None, "xi": None, "passes": None,
                "fool": None},
               help="Moosavi-Dezfooli et al.'s Algorithm 1 with DeepFool steps: it fools the training photos but "
                    "generalises less from 20 of them.", key="lab_p_uap_alg1")
    st.markdown("One perturbation, the same for every image, that changes most images' labels "
                "(Moosavi-Dezfooli et al., CVPR 2017). The fooling rate is the share of images whose top-1 label "
                "changes; the held-out set shows whether it works on photos it never saw.")
    train, train_set = set_control(handle, prefix="lab_train", label="Training set", default="bundled", param="train")
    held, held_set = set_control(handle, prefix="lab_held", label="Held-out set", default="heldout", param="heldout")
    settings = uap_controls()
    if train_set is None or held_set is None:
        return
    if train_set.key == held_set.key:
        st.warning("The training and held-out sets are the same set, so the held-out rate says nothing about "
                   "new photos. Pick another held-out set.")
    key = "|".join(["lab-uap", handle.name, train_set.key, held_set.key, json.dumps(settings.as_dict(), sort_keys=True)])
    record = job(key, "Compute the perturbation",
                 lambda: start_job(key, lab_runs.uap_run, handle, train.spec, held.spec, settings.as_dict(),
                                   title=f"Universal perturbation on {len(train_set)} images"),
                 idle=f"Press **Compute the perturbation**: about a minute on a CPU for {len(train_set)} training "
                      "images (the result is kept, so the next visit opens at once).")
    if record is None:
        return
    render_uap(handle, record, train, held, settings, selection)


def render_uap(handle: ModelHandle, record: dict, train: SetChoice, held: SetChoice, settings: UAPSettings,
               selection: Selection) -> None:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Fooling rate, training set", percent(record["fooling_rate_train"]), help=f"{record['n_train']} images")
    m2.metric("Fooling rate, held-out set", percent(record["fooling_rate_heldout"]), help=f"{record['n_heldout']} images")
    m3.metric("Passes" if record["method"] == "deepfool" else "Minibatch steps", record["passes"])
    m4.metric("Time", f"{record['seconds']:.0f} s")
    perturbation = np.asarray(record["perturbation"], dtype=np.float32)
    example, after = lab_runs.uap_example(record, held.spec, handle.input_size, handle.class_names)
    picture = lab_runs.perturbation_png(perturbation)
    c1, c2, c3 = st.columns(3)
    c1.image(picture, width="stretch",
             caption=f"the perturbation, stretched to the full range (its largest value is "
                     f"{255 * float(np.abs(perturbation).max()):.0f} levels)")
    c2.image(example["clean"], width="stretch", caption=f"a held-out photo · {example['clean_label']}")
    c3.image(after, width="stretch", caption=f"plus the perturbation · {example['attacked_label']}")
    with c3:
        use_as_image_button(after, name=f"held-out photo + universal perturbation ξ={settings.xi:g}",
                            operation=f"universal perturbation ξ={settings.xi:g} on a held-out photo",
                            settings=settings.as_dict(), key="use_uap_heldout", from_current=False,
                            help="Make this perturbed held-out photo the image of every page. It was not made from "
                                 "the sidebar's image, so it starts a chain of its own; to perturb the sidebar's "
                                 "image, turn on \"Add this perturbation to the current image\" below.")
    render_uap_on_current(handle, selection, perturbation, settings)
    dominant = record["dominant"][:10]
    if dominant:
        figure = go.Figure(go.Bar(x=[d["count"] for d in dominant][::-1], y=[f"{d['name']}  " for d in dominant][::-1],
                                  orientation="h", marker_color="#d62728"))
        figure.update_layout(title="Labels it pushes held-out images into (dominant labels)",
                             height=110 + 26 * len(dominant),
                             margin=dict(l=10, r=10, t=40, b=30), xaxis_title="images")
        st.plotly_chart(figure, width="stretch", key="lab_uap_dominant")
    st.caption(record.get("note", ""))
    d1, d2, d3, _ = st.columns([1, 1, 1, 2])
    d1.download_button("uap.npy", lab_runs.npy_bytes(perturbation), "uap.npy", "application/octet-stream")
    d2.download_button("uap.png", picture, "uap.png", "image/png")
    json_download("report.json", lab_runs.uap_report(record), "report.json", "lab_uap_report", d3)
    with st.expander("Fooling rate against training-set size (the lecture's plot)"):
        sizes_view(handle, train, held, settings)


def with_perturbation(picture: np.ndarray, perturbation: np.ndarray) -> np.ndarray:
    """uint8 picture + a perturbation in [0, 1] units, back on the 8-bit grid (as the held-out example)."""
    return np.clip(np.round((picture / 255.0 + perturbation) * 255), 0, 255).astype(np.uint8)


def render_uap_on_current(handle: ModelHandle, selection: Selection, perturbation: np.ndarray,
                          settings: UAPSettings) -> None:
    """The same perturbation on the sidebar's image (as the model sees it): "universal" means it should
    work there too; the result can become the current image, remembered as made from it."""
    on = url_widget(st.toggle, "Add this perturbation to the current image", key="lab_uap_current",
                    param="on_current", default=False, parse=parse_bool, dump=dump_bool,
                    help=f"The sidebar's image ({selection.image_name}) plus this perturbation, classified again.")
    if not on:
        return
    try:
        view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
        perturbed = images.to_png_bytes(with_perturbation(view, perturbation))
        before = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
        after = cache.prediction(handle.name, images.image_digest(perturbed), perturbed, handle.num_classes)
    except (GlassboxError, ValueError) as error:  # ValueError: a perturbation of another size than the view
        st.error(f"The perturbation cannot be added to {selection.image_name}: {error}")
        return
    c1, c2, c3 = st.columns(3)
    c1.image(view, width="stretch", caption=f"{selection.image_name} · {before.labels[0]}")
    c2.image(perturbed, width="stretch", caption=f"plus the perturbation · {after.labels[0]}")
    with c2:
        use_as_image_button(perturbed, name=f"{selection.image_name} + universal perturbation",
                            operation=f"universal perturbation ξ={settings.xi:g}",
                            settings={**settings.as_dict(), "model": handle.name}, key="use_uap_current")
    if after.indices[0] != before.indices[0]:
        c3.success(f"Fooled: {handle.name} now says **{after.labels[0]}** ({100 * after.probs[0]:.1f} %) instead of "
                   f"**{before.labels[0]}** ({100 * before.probs[0]:.1f} %).")
    else:
        c3.info(f"Not fooled: {handle.name} still says **{before.labels[0]}** ({100 * after.probs[0]:.1f} %, was "
                f"{100 * before.probs[0]:.1f} %). A universal perturbation fools most images, not every one.")


def sizes_view(handle: ModelHandle, train: SetChoice, held: SetChoice, settings: UAPSettings) -> None:
    key = "|".join(["lab-uap-sizes", handle.name, train.spec, held.spec, json.dumps(settings.as_dict(), sort_keys=True)])
    record = job(key, "Train on growing subsets",
                 lambda: start_job(key, lab_runs.uap_sizes_run, handle, train.spec, held.spec, settings.as_dict(),
                                   title="Fooling rate against training-set size"),
                 idle="A perturbation is trained on the first 2, 5, 10, … training images and measured on the "
                      "held-out set each time.")
    if record is None:
        return
    figure = go.Figure(go.Scatter(x=record["sizes"], y=[100 * v for v in record["fooling_rate_heldout"]],
                                  mode="lines+markers", name="held-out"))
    figure.update_layout(xaxis_title="training images", yaxis_title="held-out fooling rate (%)", height=300,
                         yaxis_range=[0, 100], margin=dict(l=10, r=10, t=20, b=40))
    st.plotly_chart(figure, width="stretch", key="lab_uap_sizes")


# ---------------------------------------------------------------------------------------------
# Transfer (the lecture's table)


def transfer_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: the 3×3 lite transfer table", {"models": None, "kind": None, "set": None, "train": None,
                                                   "strength": None},
           help="Universal perturbations made on lite0, lite1 and lite2, each tried on all three.", key="lab_p_tr")
    st.markdown("A perturbation made on one network (rows) tried on another (columns): the share of images whose "
                "label changes. The lecture's table found universal perturbations carry across architectures.")
    available = model_options(handle)
    c1, c2, c3 = st.columns([3, 2, 1])
    chosen = url_widget(c1.multiselect, "Models", key="lab_tr_models", param="models", default=list(LITES),
                        options=available, parse=lambda s: s.split(","), dump=lambda v: ",".join(v))
    kind = url_widget(c2.selectbox, "Perturbations", key="lab_tr_kind", param="kind", default="universal",
                      options=["universal", "per-image"],
                      format_func={"universal": "universal (one per model, ℓ∞ ξ = strength)",
                                   "per-image": "per image (PGD, ε = strength)"}.get)
    strength = url_widget(c3.number_input, "Strength (levels)", key="lab_tr_strength", param="strength", default=10,
                          parse=int, min_value=1, max_value=64)
    train, train_set = (set_control(handle, prefix="lab_tr_train", label="Training set", default="bundled",
                                    param="train") if kind == "universal" else (SetChoice("", ""), None))
    held, imageset = set_control(handle, prefix="lab_tr", label="Measured on", default="heldout", param="set")
    if len(chosen) < 2:
        st.info("Pick at least two models.")
        return
    if imageset is None or (kind == "universal" and train_set is None):
        return
    key = "|".join(["lab-transfer", ",".join(chosen), train_set.key if train_set else "", imageset.key, kind,
                    str(strength)])
    record = job(key, "Build the table",
                 lambda: start_job(key, lab_runs.transfer_run, with_handle(handle, chosen), train.spec, held.spec, kind,
                                   int(strength), title=f"Transfer table ({len(chosen)} models)"),
                 idle=f"Press **Build the table**: {len(chosen)} models × {len(chosen)} targets over {len(imageset)} "
                      "images (a few minutes on a CPU; kept once done).")
    if record is None:
        return
    rates = np.asarray(record["fooling_rate"], dtype=float)
    short = [lab_runs.short_name(n) for n in record["rows"]]
    figure = go.Figure(go.Heatmap(z=100 * rates, x=[lab_runs.short_name(n) for n in record["cols"]], y=short,
                                  colorscale="Reds", zmin=0, zmax=100, text=[[f"{100 * v:.0f} %" for v in row] for row in rates],
                                  texttemplate="%{text}", colorbar_title="fooled"))
    figure.update_layout(xaxis_title="tested on", yaxis_title="made on", yaxis_autorange="reversed", height=360,
                         margin=dict(l=10, r=10, t=20, b=40))
    st.plotly_chart(figure, width="stretch", key="lab_tr_heatmap")
    st.dataframe({"made on ↓ / tested on →": short,
                  **{lab_runs.short_name(c): [percent(v) for v in rates[:, j]] for j, c in enumerate(record["cols"])}},
                 hide_index=True)
    st.caption(record.get("note", ""))
    json_download("Table (JSON)", record, "transfer.json", "lab_tr_json")


# ---------------------------------------------------------------------------------------------
# Kurakin et al.'s comparison


def curves_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: Kurakin et al.'s Fig. 2 on the bundled photos", {"methods": None, "eps": None, "set": None},
           help="FGSM, BIM and iterative least-likely at ε = 2 … 128.", key="lab_p_cv")
    st.markdown("Top-1 and top-5 agreement with the clean predictions against ε, for FGSM, the basic iterative "
                "method (BIM) and iterative least-likely class, as Kurakin, Goodfellow & Bengio (2017) plot it.")
    st.info("These sets have no ground-truth labels, so **agreement with the clean predictions stands in for "
            "accuracy**: top-1 agreement is the share of images whose top-1 is unchanged, top-5 the share whose clean "
            "top-1 is still among the top five.")
    c1, c2 = st.columns(2)
    methods = url_widget(c1.multiselect, "Methods", key="lab_cv_methods", param="methods",
                         default=["fgsm", "bim", "ll"], options=["fgsm", "bim", "ll"],
                         format_func=lab_runs.SET_METHODS.get, parse=lambda s: s.split(","), dump=lambda v: ",".join(v))
    levels = list(lab_runs.EPSILON_LEVELS)
    eps = url_widget(c2.multiselect, "ε (levels)", key="lab_cv_eps", param="eps", default=[2, 4, 8, 16, 32],
                     options=levels, parse=lambda s: [int(v) for v in s.split(",")],
                     dump=lambda v: ",".join(str(i) for i in v),
                     help="Kurakin et al. go to 128; BIM and least-likely take min(ε + 4, 1.25 ε) steps, so 64 and "
                          "128 take minutes.")
    choice, imageset = set_control(handle, prefix="lab_cv", label="Image set", default="bundled", param="set")
    if not methods or not eps or imageset is None:
        if not methods or not eps:
            st.info("Pick at least one method and one ε.")
        return
    eps = sorted(eps)
    key = "|".join(["lab-curves", handle.name, imageset.key, ",".join(methods), ",".join(map(str, eps))])
    record = job(key, "Run the comparison",
                 lambda: start_job(key, lab_runs.curves_run, handle, choice.spec, list(methods), list(eps),
                                   title=f"ε curves on {len(imageset)} images"),
                 idle=f"Press **Run the comparison**: every method at every ε over {len(imageset)} images.")
    if record is None:
        return
    left, right = st.columns(2)
    for column, part, title in ((left, "top1", "Top-1 agreement"), (right, "top5", "Top-5 agreement")):
        figure = go.Figure()
        for method, values in record["methods"].items():
            figure.add_trace(go.Scatter(x=record["epsilons"], y=[100 * v for v in values[part]], mode="lines+markers",
                                        name=lab_runs.SET_METHODS.get(method, method)))
        figure.add_hline(y=100, line_dash="dot", annotation_text="clean images")
        figure.update_layout(title=title, xaxis_title="ε (levels)", xaxis_type="log", yaxis_title="%",
                             yaxis_range=[0, 105], height=340, margin=dict(l=10, r=10, t=40, b=40),
                             legend=dict(orientation="h", y=-0.3))
        column.plotly_chart(figure, width="stretch", key=f"lab_cv_{part}")
    json_download("Curves (JSON)", record, "epsilon_curves.json", "lab_cv_json")


# ---------------------------------------------------------------------------------------------
# Minimal perturbations on the sidebar's image


MINIMAL = ("fgsm", "deepfool", "lbfgs")


def minimal_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: panda → gibbon (untargeted FGSM on a bundled photo)", {"eps": None}, sample="chelsea",
           help="The lecture's first slide: one FGSM step of 2 levels away from the photo's own class, beside the "
                "smallest perturbations DeepFool and L-BFGS find.", key="lab_p_min")
    st.markdown("How small can a change be and still flip the label? **FGSM** takes one step of ε along the sign "
                "of the gradient. **DeepFool** walks to the nearest linearised class boundary (overshoot 0.02). "
                "**L-BFGS** (Szegedy et al. 2014) minimises c·|r|² + loss in the box [0, 1] and searches c for the "
                "smallest ‖r‖₂ that flips.")
    epsilon = url_widget(st.number_input, "FGSM ε (levels)", key="lab_min_eps", param="eps", default=2, parse=int,
                         min_value=1, max_value=64)
    try:
        view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    except GlassboxError as error:
        st.error(str(error))
        return
    keys = {method: "|".join(["lab-minimal", handle.name, selection.digest, method, str(epsilon)]) for method in MINIMAL}
    if st.button("Run all three", type="primary", key="lab_min_run"):
        for method, key in keys.items():
            attack = attacks.get_attack(method)
            start_job(key, attack.run, handle, images.to_tensor(view, device=handle.device), None,
                      attack.make_config(epsilon=int(epsilon)), title=f"{attack.label} on {selection.image_name}")
    columns = st.columns(3)
    for column, (method, key) in zip(columns, keys.items()):
        with column:
            attack = attacks.get_attack(method)
            st.markdown(f"**{attack.label}**")
            status = show_job(key, idle="Press **Run all three**.")
            if status is None:
                continue
            render_minimal(handle, status.result, method, selection.image_name)


def render_minimal(handle: ModelHandle, result, method: str, image_name: str) -> None:
    names = handle.class_names
    st.image(result.image, width="stretch",
             caption=f"{names[result.original_class]} → {names[result.final_class]}")
    gain = max(10, 127 // max(result.linf_levels, 1))  # a 1-level change stretched until it shows
    st.image(images.difference_image(result.image, result.original, gain=gain), width="stretch",
             caption=f"difference × {gain}, around mid-grey")
    l2 = float(np.sqrt(((result.image.astype(np.float64) - result.original) ** 2).sum())) / 255
    st.caption(f"‖r‖₂ = {l2:.3f} ([0, 1] units) · largest change {result.linf_levels} levels · "
               f"distortion (eq. 3) {result.final_distortion:.5f}")
    verdict = attacks.get_attack(result.attack).verdict(result, names)
    TONES[verdict.tone](verdict.text)
    st.download_button("PNG", images.to_png_bytes(result.image), f"{image_name}_{method}.png", "image/png",
                       key=f"lab_min_png_{method}")
    label = attacks.get_attack(result.attack).label
    use_as_image_button(result.image, name=f"{image_name} · {label} → {names[result.final_class]}",
                        operation=f"{label} (minimal perturbation) → {names[result.final_class]}",
                        settings={"attack": result.attack, **result.config}, key=f"use_minimal_{method}")


# ---------------------------------------------------------------------------------------------
# Effort to flip (the Mind's Eye paper's Fig. 4, on ImageNet models)


def effort_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: lite0, lite1 and lite2 on the bundled photos", {"models": None, "set": None, "steps": None},
           help="Each photo pushed to a random class by one-level sign steps, on each model.", key="lab_p_ef")
    st.markdown("How hard is each network to push? Each image goes to a random target class (the same targets for "
                "every model) by Robinson & Graham's one-level sign steps; the boxes show the steps and the "
                "distortion (eq. 3) it took, as the Mind's Eye paper's Fig. 4 does for its networks.")
    c1, c2 = st.columns([3, 1])
    chosen = url_widget(c1.multiselect, "Models", key="lab_ef_models", param="models", default=list(LITES),
                        options=model_options(handle), parse=lambda s: s.split(","), dump=lambda v: ",".join(v))
    max_steps = url_widget(c2.number_input, "Step limit", key="lab_ef_steps", param="steps", default=100, parse=int,
                           min_value=5, max_value=1000)
    choice, imageset = set_control(handle, prefix="lab_ef", label="Image set", default="bundled", param="set")
    if not chosen or imageset is None:
        if not chosen:
            st.info("Pick at least one model.")
        return
    key = "|".join(["lab-effort", ",".join(chosen), imageset.key, str(max_steps)])
    record = job(key, "Push every image",
                 lambda: start_job(key, lab_runs.effort_run, with_handle(handle, chosen), choice.spec, int(max_steps),
                                   title=f"Effort to flip ({len(chosen)} models)"),
                 idle=f"Press **Push every image**: {len(imageset)} images on {len(chosen)} models.")
    if record is not None:
        st.plotly_chart(effort_figure(record["models"], "ImageNet models on this set"), width="stretch",
                        key="lab_ef_boxes")
        st.caption(record.get("note", ""))
        json_download("Effort (JSON)", record, "effort.json", "lab_ef_json")
    mind = lab_runs.minds_eye_effort()
    if mind is not None:
        st.markdown("**Beside them: the Mind's Eye networks** (64×64 grey renders of three objects or none, another "
                    "domain; the adversarially trained direct net comes from the Mind's Eye page's training).")
        st.plotly_chart(effort_figure(mind["models"], "Mind's Eye networks (shipped sweeps)"), width="stretch",
                        key="lab_ef_minds_eye")
        st.caption(mind.get("note", ""))


def effort_figure(models_record: dict, title: str) -> go.Figure:
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("steps to reach the target", "distortion (eq. 3)"))
    for i, (name, values) in enumerate(models_record.items()):
        reached = np.asarray(values["reached"], dtype=bool)
        label = f"{lab_runs.short_name(name)} ({int(reached.sum())}/{len(reached)} reached)"
        colour = f"hsl({(i * 67) % 360}, 60%, 45%)"
        figure.add_trace(go.Box(y=np.asarray(values["steps"])[reached], name=label, marker_color=colour,
                                boxpoints="all", jitter=0.3, showlegend=False), row=1, col=1)
        figure.add_trace(go.Box(y=np.asarray(values["distortion"])[reached], name=label, marker_color=colour,
                                boxpoints="all", jitter=0.3, showlegend=False), row=1, col=2)
    figure.update_layout(title=title, height=380, margin=dict(l=10, r=10, t=60, b=40))
    return figure


# ---------------------------------------------------------------------------------------------
# Black box (Papernot et al. 2017)


def blackbox_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: Papernot et al.'s attack on the Mind's Eye direct net", {"target": None, "epochs": None,
                                                                            "eps": None},
           help="Six substitute epochs with Jacobian augmentation, λ = 0.1.", key="lab_p_bb")
    st.markdown("The attacker sees only the target's **top-1 label**. It labels a few images by asking the target, "
                "trains its own substitute network, grows the set along the substitute's Jacobian (Papernot et al. "
                "2017, Alg. 1), then attacks the substitute and hopes the images transfer. The target is the Mind's "
                "Eye direct classifier (64×64 grey renders: three objects or none): small enough to do this on a CPU.")
    c1, c2, c3 = st.columns(3)
    target = url_widget(c1.selectbox, "Target", key="lab_bb_target", param="target", default="direct",
                        options=list(lab_runs.BLACKBOX_TARGETS), format_func=lab_runs.BLACKBOX_TARGETS.get)
    epochs = url_widget(c2.number_input, "Substitute epochs ρ", key="lab_bb_epochs", param="epochs", default=6,
                        parse=int, min_value=1, max_value=8)
    eps = url_widget(c3.number_input, "FGSM ε on the substitute", key="lab_bb_eps", param="eps",
                     default=lab_runs.BLACKBOX_EPSILON, parse=float, min_value=0.01, max_value=0.5, step=0.01,
                     format="%.2f")
    settings = {"target": target, "epochs": int(epochs), "epsilon": float(eps)}
    key = "|".join(["lab-blackbox", json.dumps(settings, sort_keys=True)])
    record = job(key, "Run the black-box attack",
                 lambda: start_job(key, lab_runs.blackbox_run, settings, title="Black-box attack"),
                 idle="Press **Run the black-box attack** (about a minute on a CPU).")
    if record is None:
        return
    render_blackbox(record)


def render_blackbox(record: dict) -> None:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Transfer rate", percent(record["transfer_rate"]),
              help=f"of the {record['n_eval']} held-out renders the target got right")
    m2.metric("Oracle queries", f"{record['queries']:,}", help="labels the attacker asked for (top-1 only)")
    m3.metric("Substitute agrees with the target", percent(record["substitute_agreement"]))
    m4.metric("White-box FGSM (for scale)", percent(record["whitebox_rate"]),
              help=f"random signs of the same ε: {percent(record['random_rate'])}")
    left, right = st.columns(2)
    figure = go.Figure()
    for name, values, colour in (("black box (substitute)", record["curve_transfer"], "#d62728"),
                                 ("white box (the target's own gradient)", record["curve_whitebox"], "#7f7f7f"),
                                 ("random signs", record["curve_random"], "#2ca02c")):
        figure.add_trace(go.Scatter(x=record["curve_epsilons"], y=[100 * v for v in values], mode="lines+markers",
                                    name=name, line_color=colour))
    figure.update_layout(title="Images fooled against ε", xaxis_title="ε ([0, 1] units)", yaxis_title="%",
                         yaxis_range=[0, 100], height=320, margin=dict(l=10, r=10, t=40, b=40),
                         legend=dict(orientation="h", y=-0.3))
    left.plotly_chart(figure, width="stretch", key="lab_bb_curve")
    grow = go.Figure(go.Scatter(x=record["set_sizes"], y=[100 * v for v in record["eval_agreement"]],
                                mode="lines+markers", name="agreement"))
    grow.update_layout(title="Substitute epochs: the set doubles, agreement grows", xaxis_title="images labelled (S_ρ)",
                       xaxis_type="log", yaxis_title="agrees with the target (%)", yaxis_range=[0, 100], height=320,
                       margin=dict(l=10, r=10, t=40, b=40))
    right.plotly_chart(grow, width="stretch", key="lab_bb_growth")
    examples = record["examples"]
    if examples:
        st.markdown("**Held-out renders and their substitute-made adversarials** (what the target said):")
        columns = st.columns(len(examples))
        for column, example in zip(columns, examples):
            column.image(example["original"], caption=example["label"], width="stretch")
            column.image(example["adversarial"], caption=f"→ {example['said']}", width="stretch")
    st.caption(record.get("note", ""))
    json_download("Report (JSON)", {k: v for k, v in record.items() if k != "examples"}, "blackbox.json", "lab_bb_json")


# ---------------------------------------------------------------------------------------------
# Defences


def defences_view(handle: ModelHandle, selection: Selection) -> None:
    preset("Preset: JPEG 75 against PGD, naive and adaptive", {"transform": None, "attack": None, "eps": None,
                                                               "set": None},
           help="PGD at ε = 2 levels made without the JPEG, then through it (BPDA).", key="lab_p_df")
    st.markdown("Pre-processing the input (JPEG, fewer bits, a median filter, a random resize-and-pad) undoes many "
                "adversarial images **made without it** (naive). An attacker who knows the defence attacks through "
                "it: BPDA passes the gradient straight through a step that has none, EOT averages it over a random "
                "one. The adaptive numbers are what is really left.")
    c1, c2, c3 = st.columns([2, 1, 1])
    transform = url_widget(c1.text_input, "Transform", key="lab_df_transform", param="transform", default="jpeg:75",
                           help="jpeg:Q (quality 1-100), bits:B (1-8 bits), median:K (odd, 3-15), resize:R (shrink "
                                "by up to R pixels at random, pad back); chain them with +, e.g. jpeg:75+resize:20.")
    c1.caption("Try " + ", ".join(f"`{t}`" for t in lab_runs.TRANSFORM_EXAMPLES))
    attack = url_widget(c2.selectbox, "Attack", key="lab_df_attack", param="attack", default="pgd",
                        options=["pgd", "fgsm", "bim"], format_func=lab_runs.SET_METHODS.get)
    eps = url_widget(c3.number_input, "ε (levels)", key="lab_df_eps", param="eps", default=2, parse=int,
                     min_value=1, max_value=64, help="lite0 is fragile: at 8 levels almost everything is fooled even "
                                                     "through the transform, which hides the difference.")
    choice, imageset = set_control(handle, prefix="lab_df", label="Image set", default="bundled", param="set")
    try:
        transform = lab_runs.check_transform(transform)
    except GlassboxError as error:
        st.error(str(error))
        return
    if imageset is None:
        return
    key = "|".join(["lab-defence", handle.name, imageset.key, transform, attack, str(eps)])
    record = job(key, "Attack the defence",
                 lambda: start_job(key, lab_runs.defence_run, handle, choice.spec, transform, attack, int(eps),
                                   title=f"{transform} against {attack}"),
                 idle=f"Press **Attack the defence**: {len(imageset)} images, without the defence, naive and adaptive "
                      "(about a minute; a random transform takes a few, as EOT averages 8 draws a step).")
    if record is not None:
        render_defence(record)
    st.divider()
    detector_view(handle, choice, imageset)


def render_defence(record: dict) -> None:
    rows = [("no defence", record["undefended"]["success"]),
            ("naive: made without the transform", record["naive"]["success"]),
            (f"adaptive: through it ({record['adaptive']['method']})", record["adaptive"]["success"])]
    figure = go.Figure(go.Bar(x=[100 * v for _, v in rows], y=[label for label, _ in rows], orientation="h",
                              marker_color=["#7f7f7f", "#2ca02c", "#d62728"],
                              text=[percent(v) for _, v in rows], textposition="outside", cliponaxis=False))
    figure.update_layout(title=f"Images fooled, {record['attack'].upper()} at ε = {record['epsilon']} levels, through "
                               f"{record['transform_label']}", xaxis_title="images fooled (%)", xaxis_range=[0, 115],
                         yaxis_autorange="reversed", height=260, margin=dict(l=10, r=30, t=40, b=40))
    st.plotly_chart(figure, width="stretch", key="lab_df_bars")
    kept = record["kept"]
    st.caption(f"The transform alone keeps the clean label of {percent(record['clean_agreement'])} of the images; on "
               f"those {kept['n']}: naive {percent(kept['naive'] or 0)}, adaptive {percent(kept['adaptive'] or 0)}. "
               + record.get("note", ""))
    examples = record.get("examples")
    if examples is not None and len(examples):
        titles = ("clean", "clean, transformed", "naive adversarial", "adaptive adversarial")
        for row in examples[:2]:
            for column, picture, title in zip(st.columns(4), row, titles):
                column.image(picture, caption=title, width="stretch")
    json_download("Defence (JSON)", {k: v for k, v in record.items() if k != "examples"}, "defence.json",
                  "lab_df_json")


def detector_view(handle: ModelHandle, choice: SetChoice, imageset) -> None:
    st.subheader("Detection (Robinson & Graham §4)")
    st.markdown("An RBF support-vector machine on the network's penultimate features learns to tell relabelled "
                "photos from clean ones. Each photo's crops and flips stay on one side of the train/test split, so "
                "nothing leaks. Then an attack that knows the detector relabels while pushing its decision to "
                "*clean*.")
    key = "|".join(["lab-detector", handle.name, imageset.key])
    record = job(key, "Train the detector",
                 lambda: start_job(key, lab_runs.detector_run, handle, choice.spec, title="Relabelling detector"),
                 idle="Press **Train the detector**: relabels every photo's versions, trains the SVM over 10 "
                      "splits, then attacks it (about two minutes).")
    if record is None:
        return
    m1, m2, m3 = st.columns(3)
    m1.metric("Detector accuracy", percent(record["accuracy"]),
              help=f"± {100 * record['accuracy_std']:.1f} over {len(record['split_accuracies'])} splits, "
                   f"{record['test_size']} test images each")
    m2.metric("The paper's", percent(record["paper_accuracy"]))
    flagged = record["adaptive_detection"]
    m3.metric("Detector-aware relabellings it flags", "—" if flagged is None else percent(flagged),
              help="Relabelled under the same cap while pushing the SVM towards 'clean'.")
    st.caption(record.get("note", ""))
    with st.expander("How this differs from the paper"):
        for line in record["differences"]:
            st.markdown(f"- {line}")
    json_download("Detector (JSON)", record, "detector.json", "lab_dt_json")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    selection, handle = page_header("Attacks lab", INTRO)
    view = view_control()
    try:
        {"universal": universal_view, "transfer": transfer_view, "curves": curves_view, "minimal": minimal_view,
         "effort": effort_view, "blackbox": blackbox_view, "defences": defences_view}[view](handle, selection)
    except GlassboxError as error:
        st.error(str(error))


main()
