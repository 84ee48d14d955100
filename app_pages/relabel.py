"""Relabel: make the photo take any label while it looks unchanged (Robinson & Graham 2015)."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st
from PIL import Image

from engine import cache, classify, images, jobs, plots
from engine import relabel as R
from engine.errors import GlassboxError
from streamlit_app import class_picker, ensure_frame, job_row, require_model, set_url_value, url_value

selection = ensure_frame()
handle = require_model(selection)

st.title("Relabel")
st.caption("Robinson & Graham (2015): nudge every pixel by one 8-bit level in the direction that makes the "
           "target class more likely (the sign of the gradient, eq. 1-2), until the model agrees, while the "
           "distortion (eq. 3) stays under a cap. The lecture's FGSM, PGD and least-likely attacks are here too.")

HALF_TRACK = 586
gaussian = st.toggle("Start from a random Gaussian image instead of the photo (sec. 3.2)", key="rl_gaussian",
                     help="The paper's image synthesis: noise that the model will call anything. It needed a "
                          "distortion of about 0.03, so raise the cap.")
if gaussian:
    x = R.gaussian_start(handle.input_size, seed=0).to(handle.device)
    view = images.to_uint8(x)
    image_digest, image_name = "gaussian-seed-0", "gaussian"
    ranking = handle.classify(x, top_k=handle.num_classes)
else:
    view = classify.model_view(handle, selection.image())
    x = images.to_tensor(view, device=handle.device)
    image_digest, image_name = selection.digest, selection.image_name
    ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)

with st.expander("Presets from the paper", icon=":material/school:"):
    p1, p2 = st.columns(2)
    if p1.button("The cat turned into a half-track", width="stretch"):
        st.session_state["_next_sample"] = "chelsea"
        set_url_value("target", str(HALF_TRACK))
        set_url_value("method", "relabel")
        st.session_state.pop(f"_class_target_{handle.name}", None)
        st.rerun()
    p1.caption("Fig. 1's 'half-track', on the chelsea photo.")
    if p2.button("Swap two photos' labels (Fig. 1)", width="stretch"):
        st.session_state["_next_sample"] = "coffee"
        set_url_value("target", "285")  # the espresso becomes an Egyptian cat; the cat's run is shown beside it
        set_url_value("method", "relabel")
        set_url_value("swap", "1")
        st.session_state.pop(f"_class_target_{handle.name}", None)
        st.rerun()
    p2.caption("The espresso becomes an Egyptian cat and the cat becomes an espresso, side by side.")

METHODS = {"relabel": "Relabel (sign gradient, eq. 1-2)", "fgsm": "FGSM (one step)", "pgd": "PGD (steps in an ε-ball)",
           "leastlikely": "Least-likely class (targeted PGD)"}
if "rl_method" not in st.session_state:
    st.session_state["rl_method"] = url_value("method", "relabel") if url_value("method") in METHODS else "relabel"
left, right = st.columns([3, 2], gap="large")
with right:
    method = st.radio("Method", list(METHODS), key="rl_method", format_func=METHODS.get)
    set_url_value("method", method)
with left:
    if method == "leastlikely":
        target = R.least_likely_class(handle, x)
        st.markdown(f"Turn this image into its **least likely** class: **{handle.class_names[target]}** ({target}).")
    else:
        target = class_picker(handle, label="Turn this image into a:", key="target", default=HALF_TRACK,
                              help="Type to search the class names.")
    with st.form("relabel_settings", border=False):
        c1, c2, c3 = st.columns(3)
        cap = c1.number_input("Distortion cap (eq. 3)", 0.001, 0.2, 0.01, 0.001, format="%.3f")
        max_steps = c2.number_input("Step limit", 1, 2000, 300, 10)
        epsilon = c3.number_input("ε for FGSM/PGD (levels)", 1, 64, 4)
        run = st.form_submit_button("Run", type="primary")

already = ranking.indices[0] == target and method in ("relabel", "pgd", "fgsm")


def run_key(img_digest: str, cls: int) -> str:
    settings = dict(method=method, cap=float(cap), steps=int(max_steps), epsilon=int(epsilon))
    return "|".join(["relabel", handle.name, img_digest, str(cls), json.dumps(settings, sort_keys=True)])


def start(img_x, img_digest: str, cls: int, title: str):
    key = run_key(img_digest, cls)
    status = jobs.registry().find(key)
    if status is None or status.state in ("failed", "cancelled"):
        if method == "relabel":
            observer: list = []
            st.session_state[f"observer_{key}"] = observer
            jobs.registry().submit(R.relabel, handle, img_x, cls, R.RelabelConfig(cap=float(cap), max_steps=int(max_steps)),
                                   observer=observer, title=title, key=key)
        else:
            config = R.AttackConfig(epsilon=int(epsilon), steps=10, step=1)
            jobs.registry().submit(lambda progress, **kw: R.attack(**kw), handle=handle, x=img_x, method=method,
                                   target=None if method == "leastlikely" else cls, config=config, title=title, key=key)
    return jobs.registry().find(key)


if already:
    st.info(f"The model already calls this image a {handle.class_names[target]}: pick another class to relabel it into.")
elif run:
    try:
        start(x, image_digest, target, f"{METHODS[method]} → {handle.class_names[target]}")
    except GlassboxError as error:
        st.error(str(error))

status = jobs.registry().find(run_key(image_digest, target))

# Fig. 1's swap: the partner photo is relabelled into this photo's class at the same time.
swap = url_value("swap") == "1" and method == "relabel" and not gaussian
partner_status = None
if swap:  # the partner photo is read and decoded only in swap mode, through the shared decode cache
    partner_name = "chelsea" if selection.image_name != "chelsea" else "coffee"
    partner_bytes = images.sample_bytes(partner_name)
    partner_digest = images.image_digest(partner_bytes)
    partner_view = classify.model_view(handle, Image.fromarray(cache.decoded_image(partner_digest, partner_bytes)))
    if run and not already:
        start(images.to_tensor(partner_view, device=handle.device), partner_digest, ranking.indices[0],
              f"{partner_name} → {handle.class_names[ranking.indices[0]]}")
    partner_status = jobs.registry().find(run_key(partner_digest, ranking.indices[0]))


@st.fragment(run_every=0.7)
def live(job_id: str, key: str) -> None:
    current = jobs.registry().status(job_id)
    job_row(current)
    observed = st.session_state.get(f"observer_{key}") or []
    if observed:
        st.plotly_chart(plots.relabel_steps_figure([o["target"] for o in observed], [o["original"] for o in observed],
                                                   [o["distortion"] for o in observed],
                                                   target_label=handle.class_names[target],
                                                   original_label=handle.class_names[ranking.indices[0]], cap=float(cap)),
                        width="stretch", key=f"live_{job_id}_{len(observed)}")
    if current.finished:
        st.rerun()


def show_result(result, original: np.ndarray, name: str) -> None:
    relabelled = result.image
    final = result.top1[-1] if hasattr(result, "top1") else result.final_class
    c1, c2, c3 = st.columns(3)
    c1.image(original, caption=f"original · {handle.class_names[result.original_class]}", width="stretch")
    c2.image(R.difference_image(relabelled, original), caption="difference × 10, around mid-grey", width="stretch")
    c3.image(relabelled, caption=f"relabelled · {handle.class_names[int(final)]}", width="stretch")
    quality = R.image_quality(relabelled, original)
    st.caption(f"distortion {quality['distortion']:.5f} (eq. 3) · largest change {quality['linf_levels']} levels · "
               f"PSNR {quality['psnr_db']:.1f} dB · SSIM {quality['ssim']:.4f}")
    if hasattr(result, "outcome"):
        distortion = float(result.distortion[-1])
        if result.succeeded:
            st.success(f"Relabelled to **{handle.class_names[result.target]}** in {result.steps} steps; "
                       f"distortion {distortion:.5f} (eq. 3, cap {cap}).")
        else:
            st.warning(f"Outcome: {result.outcome} after {result.steps} steps (distortion {distortion:.5f}); "
                       f"{handle.class_names[result.target]} reached p = {result.target_prob[-1]:.3f}. "
                       "Raise the cap or the step limit to go further.")
    else:
        st.info(f"{METHODS[result.method]}: the model now says **{handle.class_names[result.final_class]}**; "
                f"distortion {result.distortion:.5f}, largest change {result.linf_levels} levels.")
    manifest = {"glassbox": "relabel", "image": name, "model": handle.name, "method": method, "target": int(target),
                "final_top1": int(final), "quality": quality, "config": result.config}
    d1, d2, _ = st.columns([1, 1, 3])
    d1.download_button("Relabelled PNG", images.to_png_bytes(relabelled), f"{name}_{method}.png", "image/png",
                       key=f"png_{name}")
    d2.download_button("Manifest (JSON)", json.dumps(manifest, indent=2), f"{name}_{method}.json", "application/json",
                       key=f"json_{name}")


if status is not None and not status.finished:
    live(status.id, run_key(image_digest, target))
elif status is not None and status.state == "done":
    result = status.result
    show_result(result, view, image_name)
    before = ranking.top(5)
    after = handle.classify(images.to_tensor(result.image, device=handle.device))
    b1, b2 = st.columns(2)
    b1.plotly_chart(plots.topk_bar(before, highlight=target, title="Before"), width="stretch", key="before_bar")
    b2.plotly_chart(plots.topk_bar(after, highlight=target, title="After (Fig. 2)"), width="stretch", key="after_bar")
    if hasattr(result, "target_prob"):
        st.plotly_chart(plots.relabel_steps_figure(result.target_prob, result.original_prob, result.distortion,
                                                   target_label=handle.class_names[target],
                                                   original_label=handle.class_names[result.original_class], cap=float(cap)),
                        width="stretch", key="steps_plot")
    with st.expander("Raw versus sign gradient (Fig. 3)"):
        raw, sign = R.first_gradients(handle, x, target)
        g1, g2 = st.columns(2)
        g1.image(raw, caption="raw gradient of the first step: hot spots", clamp=True, width="stretch")
        g2.image(sign, caption="its sign: every value moves by one level", clamp=True, width="stretch")
    if st.button("Check the limits (crop, shift, mirror, another network)"):
        second = cache.get_handle("efficientnet_lite1" if handle.name != "efficientnet_lite1" else "efficientnet_lite0")
        rows = R.limit_checks(handle, result.image, int(target), result.original_class, second)
        st.dataframe([{"check": r.check, "model": r.model, "top-1": r.label, f"p({handle.class_names[target]})": round(r.target_prob, 4),
                       "keeps the new label": r.keeps_target, "back to the original": r.reverted} for r in rows],
                     hide_index=True)
elif status is not None and status.error:
    st.error(status.error)
elif not already:
    st.info("Press **Run** to start.")
if partner_status is not None:
    st.subheader(f"The swap: {partner_name} into a {handle.class_names[ranking.indices[0]]}")
    if partner_status.state == "done":
        show_result(partner_status.result, partner_view, partner_name)
    elif not partner_status.finished:
        live(partner_status.id, run_key(partner_digest, ranking.indices[0]))
    if st.button("Stop swapping"):
        set_url_value("swap", None)
        st.rerun()
