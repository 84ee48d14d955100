"""Dissection: which units detect which concepts (Network Dissection, Bau et al. 2017)."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from engine import classify, images, jobs, plots
from engine import concepts as C
from engine import dissection as D
from engine.errors import GlassboxError
from streamlit_app import ensure_frame, job_progress, require_model, set_url_value, url_value

selection = ensure_frame()
handle = require_model(selection)

st.title("Dissection")
st.caption("Network Dissection: for every unit of a layer, threshold its activation at the top 0.5 % of all its "
           "values, upsample, and measure how well the lit area overlaps each concept's mask over the whole set "
           "(IoU). A unit whose best IoU passes 0.04 counts as a detector of that concept; the lecture's example is "
           "81 of 256 Places-AlexNet conv5 units.")

SIZES = {"bundled-1000": (1000, 224), "bundled-2000": (2000, 224), "bundled-5000": (5000, 112),
         "bundled-10000": (10000, 112)}


def layer_label(name: str) -> str:
    info = next(layer for layer in handle.layers if layer.name == name)
    return f"{name} · {info.kind} · {info.channels} units · {info.height}×{info.width}"


@st.cache_resource(max_entries=4, show_spinner=False)
def concept_set(source: str, path: str) -> C.ConceptSet:
    """Opened once per process: generating or reading the bundled set, or checking a folder."""
    if source == "folder":
        return C.open_concepts(path)
    n, size = SIZES[source]
    return C.bundled_concepts(n, size=size, mask_size=size // 2)


def run_dissection(handle, source: str, path: str, layer: str, config: D.DissectionConfig, progress=None):
    concepts = concept_set(source, path) if source == "folder" else _bundled_with_progress(source, progress)
    return D.dissect(handle, concepts, layer, config, progress=progress)


def _bundled_with_progress(source: str, progress):
    n, size = SIZES[source]
    return C.bundled_concepts(n, size=size, mask_size=size // 2,
                              progress=None if progress is None else (lambda f, m: progress(0.0, m)))


layers = [info.name for info in handle.layers if info.kind not in ("ZeroPad2d", "Identity")]
if not layers:
    st.error("This model has no layer with a spatial output, so there is nothing to dissect.")
    st.stop()

wanted = url_value("layer", handle.default_layer)
if wanted not in layers and "dis_layer" not in st.session_state:
    try:
        D.spatial_layer(handle, wanted)
    except GlassboxError as error:
        st.warning(f"{error} Showing the default layer instead.")
with st.container():
    c1, c2 = st.columns([3, 2])
    layer = c1.selectbox("Layer", layers, key="dis_layer", index=layers.index(wanted) if wanted in layers else layers.index(handle.default_layer)
                         if handle.default_layer in layers else len(layers) - 1, format_func=layer_label,
                         help="NetDissect looks at a late convolutional layer (AlexNet's conv5). Layers listed in forward order.")
    source = c2.selectbox("Concept images", list(SIZES) + ["folder"], key="dis_source", format_func=lambda s: (
        f"bundled: {SIZES[s][0]} images at {SIZES[s][1]} px" if s in SIZES else "a folder on this machine"),
        help="The bundled set is generated on demand (colours, textures and shapes on real photos, with exact masks) "
             "and kept on disk. A folder may be in Broden's format (index.csv) or images/ + masks/<image>/<concept>.png.")
    path = st.text_input("Folder (Broden, or images/ + masks/)", key="dis_path",
                         placeholder="/data/broden1_224") if source == "folder" else ""
    q1, q2 = st.columns(2)
    quantile = q1.number_input("Top quantile", 0.0001, 0.5, 0.005, 0.001, format="%.4f")
    iou_threshold = q2.number_input("Detector IoU", 0.0, 1.0, 0.04, 0.01)
    run = st.button("Dissect", type="primary")
set_url_value("layer", layer)

config = D.DissectionConfig(quantile=float(quantile), iou_threshold=float(iou_threshold))
key = "|".join(["dissect", handle.name, layer, source, path, json.dumps(config.as_dict(), sort_keys=True)])
if run:
    if source == "folder" and not path.strip():
        st.error("Type the path of a concept folder first.")
    else:
        status = jobs.registry().find(key)
        if status is None or status.state in ("failed", "cancelled"):
            jobs.registry().submit(run_dissection, handle, source, path.strip(), layer, config,
                                   title=f"Dissect {layer}", key=key)


status = jobs.registry().find(key)
if status is None:
    st.info("Press **Dissect** to run. The first run on the bundled set generates it (a few seconds per thousand "
            "images); results are kept on disk, so the same layer opens instantly next time.")
    st.stop()
if not status.finished:
    job_progress(status.id)
    st.stop()
if status.state != "done":
    st.error(status.error or "The dissection was cancelled.")
    st.stop()

result: D.DissectionResult = status.result
concepts = concept_set(source, path.strip())
st.success(result.summary())

counts = result.detector_counts()
st.plotly_chart(plots.detector_histogram(counts, units=result.units, layer=result.layer,
                                         threshold=result.config["iou_threshold"]), width="stretch", key="histogram")

rows = result.table_rows()
left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Units")
    only = st.toggle("Detectors only", value=False, key="dis_only")
    shown = [r for r in rows if r["detector"]] if only else rows
    shown = sorted(shown, key=lambda r: -r["iou"])
    picked = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row", key="dis_table",
                          height=360, column_config={
                              "iou": st.column_config.ProgressColumn("IoU", min_value=0.0, max_value=max(0.01, float(result.best_iou.max())),
                                                                     format="%.3f"),
                              "threshold": st.column_config.NumberColumn("threshold", format="%.3g")})
    st.download_button("Units (CSV)", result.csv(), f"dissection_{handle.name}_{layer}.csv", "text/csv")
with right:
    st.subheader("Which units detect…")
    names = sorted(set(result.concept_names))
    default_concept = "stripes horizontal" if "stripes horizontal" in names else names[0]
    concept = st.selectbox("Concept", names, index=names.index(default_concept), key="dis_concept")
    ranked = result.units_for(result.concept_names.index(concept), limit=10)
    st.dataframe([{"unit": u, "IoU": round(iou, 4), "detector": iou > result.config["iou_threshold"],
                   "its best concept": result.concept_names[result.best_concept[u]]} for u, iou in ranked],
                 hide_index=True)

selected_rows = picked.selection.rows if picked is not None else []
if selected_rows:  # a click in the table wins over the number box
    st.session_state["dis_unit"] = int(shown[selected_rows[0]]["unit"])
st.session_state.setdefault("dis_unit", int(np.argmax(result.best_iou)))
st.session_state["dis_unit"] = min(int(st.session_state["dis_unit"]), result.units - 1)
unit = int(st.number_input("Unit", 0, result.units - 1, key="dis_unit", help="Or click a row of the table."))
st.subheader(f"Unit {unit}: {result.concept_names[result.best_concept[unit]]} (IoU {result.best_iou[unit]:.3f})")
st.caption("Click a row of the table to see another unit. Top: the images of the set where this unit fires most, "
           "with the area above its threshold lit. Bottom: the same unit on your image.")
indices = [int(i) for i in result.top_images[unit]]
try:
    pictures = [images.fit_square(concepts.sample(i).image, handle.input_size) for i in indices]
    maps = D.unit_maps_on(handle, pictures, result.layer, unit)
    columns = st.columns(len(indices))
    for column, picture, unit_map, index, value in zip(columns, pictures, maps, indices, result.top_values[unit]):
        column.image(plots.unit_overlay(picture, unit_map, float(result.thresholds[unit])), width="stretch",
                     caption=f"#{index} · max {value:.2f}")
    view = classify.model_view(handle, selection.image())
    mine = D.unit_maps_on(handle, [view], result.layer, unit)[0]
    m1, m2 = st.columns([1, 2])
    m1.image(plots.unit_overlay(view, mine, float(result.thresholds[unit])), width="stretch",
             caption=f"unit {unit} on {selection.image_name}: lit where above {result.thresholds[unit]:.3g}")
    share = float((mine > result.thresholds[unit]).mean())
    m2.metric("Share of your image above the threshold", f"{100 * share:.1f} %")
    if share == 0:
        m2.caption("This unit stays silent on your image: nothing in it reaches the unit's threshold.")
    m2.metric("Strongest activation on your image", f"{mine.max():.3g}",
              help="Compare with the threshold; the unit is silent on your image when this stays below it.")
except GlassboxError as error:
    st.error(str(error))
