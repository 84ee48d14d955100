"""Patterns: paint class patterns onto garments (Chaplygin & Chacksfield's conditional GAN)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from engine import images, jobs, plots
from engine.errors import GlassboxError
from engine.patterns import generate as G
from engine.patterns import quick as Q
from engine.patterns import substrates as S
from engine.patterns import training as T
from streamlit_app import ensure_frame, job_progress, require_model

selection = ensure_frame()
handle = require_model(selection)

st.title("Patterns")
st.caption("Chaplygin & Chacksfield: a conditional GAN paints what the classifier believes a class looks like onto a "
           "blank garment, trained with the classifier as a critic (whole image for the wanted class, random crops "
           "against the others). Quick mode skips the GAN and optimises one garment directly with the same losses.")

MODES = {"quick": "Quick mode (no GAN, about half a minute)", "generate": "Generate with a trained checkpoint"}
mode = st.segmented_control("Mode", list(MODES), key="pat_mode", format_func=MODES.get, required=True,
                            default="quick")


def pick_substrate(size: int) -> S.Substrate | None:
    """A generated garment or an uploaded photo; None with a sentence when the upload is unusable."""
    source = st.radio("Substrate", ["garment", "upload"], horizontal=True, key="pat_source",
                      format_func={"garment": "A generated garment", "upload": "Your own garment photo"}.get)
    if source == "garment":
        c1, c2 = st.columns([2, 1])
        garment = c1.selectbox("Garment", S.GARMENTS, key="pat_garment")
        colour = c2.color_picker("Colour", "#5a78c8", key="pat_colour")
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return S.draw_substrate(garment, size, rgb)
    upload = st.file_uploader("A garment on a white background", type=["png", "jpg", "jpeg", "webp"], key="pat_upload")
    if upload is None:
        st.info("Upload a photo of a garment on white; its near-white pixels count as background.")
        return None
    try:
        return G.substrate_from_picture(np.asarray(images.decode_image(upload.getvalue())), size)
    except GlassboxError as error:
        st.error(str(error))
        return None


def class_mix(names: list[str], default: list[str]) -> dict[str, float]:
    chosen = st.multiselect("Classes (up to three)", names, default=default, max_selections=3, key=f"pat_classes_{mode}")
    weights = {}
    columns = st.columns(max(len(chosen), 1))
    for column, name in zip(columns, chosen):
        weights[name] = column.slider(f"weight of {name}", 0.0, 1.0, 1.0, 0.05, key=f"pat_w_{mode}_{name}")
    return weights


if mode == "quick":
    size = st.select_slider("Size (px)", [128, 256], value=128, key="pat_size")
    substrate = pick_substrate(size)
    weights = class_mix(list(handle.class_names), ["zebra"] if "zebra" in handle.class_names else [handle.class_names[0]])
    steps = st.slider("Steps", 10, 200, 80, 10, key="pat_steps")
    grey = st.toggle("Show the classifier grey images (the paper found it better)", key="pat_grey")
    if substrate is not None and weights:
        key = "|".join(["patterns-quick", handle.name, str(size), str(steps), str(grey), json.dumps(weights, sort_keys=True),
                        images.image_digest(substrate.image.tobytes())])
        if st.button("Paint", type="primary"):
            try:
                status = jobs.registry().find(key)
                if status is None or status.state in ("failed", "cancelled"):
                    jobs.registry().submit(Q.quick_pattern, handle, substrate.image, substrate.background,
                                           list(weights), list(weights.values()),
                                           Q.QuickConfig(steps=int(steps), grayscale=bool(grey)),
                                           title=f"Quick pattern: {', '.join(weights)}", key=key)
            except GlassboxError as error:
                st.error(str(error))
        status = jobs.registry().find(key)
        if status is not None and not status.finished:
            job_progress(status.id)
        elif status is not None and status.state == "done":
            result: Q.QuickResult = status.result
            c1, c2 = st.columns(2)
            c1.image(substrate.image, caption="substrate", width="stretch")
            c2.image(result.image, caption=f"after {len(result.total)} steps · p = {result.target_prob[-1]:.3f}",
                     width="stretch")
            after = handle.classify(images.to_tensor(images.fit_square(result.image, handle.input_size), device=handle.device))
            st.plotly_chart(plots.topk_bar(after, title="The classifier on the result"), width="stretch", key="quick_bar")
            st.download_button("Pattern PNG", images.to_png_bytes(result.image), "pattern.png", "image/png")
        elif status is not None and status.error:
            st.error(status.error)
        else:
            st.info("Press **Paint** to start.")
    elif not weights:
        st.info("Pick at least one class.")
    st.stop()

# --- Generate with a checkpoint written by `python -m engine patterns train`
upload = st.file_uploader("Checkpoint (checkpoint.pt from `python -m engine patterns train`)", type=["pt"],
                          key="pat_checkpoint")
st.caption("Train one with `python -m engine patterns train --classes goldfish zebra flamingo jaguar \"giant panda\" "
           "--steps 2000 --size 128 --out runs/five` (add `torchrun --nproc_per_node N` for several processes).")
if upload is None:
    st.info("Upload a checkpoint to generate.")
    st.stop()
try:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        path.write_bytes(upload.getvalue())
        loaded = G.load_generator(T.read_checkpoint(path))
except GlassboxError as error:
    st.error(str(error))
    st.stop()
st.success(f"A {loaded.size} px generator for {', '.join(loaded.class_names)}, trained {loaded.steps} steps "
           f"against {loaded.model or 'a classifier'}.")
substrate = pick_substrate(loaded.size)
weights = class_mix(list(loaded.class_names), [loaded.class_names[0]])
if substrate is not None and weights:
    try:
        pattern = G.generate(loaded, substrate.image, {loaded.class_names.index(n): w for n, w in weights.items()})
    except GlassboxError as error:
        st.error(str(error))
        st.stop()
    c1, c2 = st.columns(2)
    c1.image(substrate.image, caption="substrate", width="stretch")
    c2.image(pattern, caption=" + ".join(f"{n} × {w:g}" for n, w in weights.items()), width="stretch")
    buffer = io.BytesIO(images.to_png_bytes(pattern))
    st.download_button("Pattern PNG", buffer.getvalue(), "pattern.png", "image/png")
