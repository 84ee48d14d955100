"""Dissection: which units detect which concepts (Network Dissection, Bau et al. 2017).

Every setting that goes into the job's key (layer, concept images, folder, top quantile, detector
IoU) lives in the URL, so a reload or a second tab with the same link finds the running or
finished dissection by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import streamlit as st

from engine import cache, concepts, dissection, plots
from engine.errors import GlassboxError
from engine.models import ModelHandle
from engine.progress import Progress
from streamlit_app import Selection, page_header, set_url_value, show_job, start_job, url_value, url_widget

INTRO = ("Network Dissection: for every unit of a layer, threshold its activation at the top 0.5 % of all its "
         "values, upsample, and measure how well the lit area overlaps each concept's mask over the whole set "
         "(IoU). A unit whose best IoU passes 0.04 counts as a detector of that concept; the lecture's example is "
         "81 of 256 Places-AlexNet conv5 units.")
IDLE = ("Press **Dissect** to run. The first run on the bundled set generates it (a few seconds per thousand "
        "images); results are kept on disk, so the same layer opens instantly next time.")
# The bundled set's sizes: images and their side in pixels (masks at half the side).
SIZES = {"bundled-1000": (1000, 224), "bundled-2000": (2000, 224), "bundled-5000": (5000, 112),
         "bundled-10000": (10000, 112)}
FOLDER = "folder"
SOURCES = [*SIZES, FOLDER]
SKIPPED_KINDS = ("ZeroPad2d", "Identity")  # layers that only copy or pad their input


@dataclass(frozen=True)
class DissectionSettings:
    """What the controls chose: the job's key is made of these (and the model's name)."""

    layer: str
    source: str  # a SIZES key, or FOLDER
    folder: str  # the folder's path when source is FOLDER, else ""
    config: dissection.DissectionConfig

    def job_key(self, model_name: str) -> str:
        return "|".join(["dissect", model_name, self.layer, self.source, self.folder,
                         json.dumps(self.config.as_dict(), sort_keys=True)])

    def concept_spec(self) -> tuple[str, int | None, int | None]:
        """The arguments of :func:`engine.cache.concept_set` for these pictures."""
        if self.source == FOLDER:
            return self.folder, None, None
        n, size = SIZES[self.source]
        return "bundled", n, size


# ---------------------------------------------------------------------------------------------
# Controls


def dissectable_layers(handle: ModelHandle) -> list[str]:
    return [info.name for info in handle.layers if info.kind not in SKIPPED_KINDS]


def layer_label(handle: ModelHandle, name: str) -> str:
    info = handle.layer(name)
    return f"{name} · {info.kind} · {info.channels} units · {info.height}×{info.width}"


def source_label(source: str) -> str:
    if source in SIZES:
        return f"bundled: {SIZES[source][0]} images at {SIZES[source][1]} px"
    return "a folder on this machine"


def layer_picker(handle: ModelHandle, layers: list[str], column) -> str:
    """The layer selectbox, bound to the URL's ``layer``; a link's layer that cannot be dissected gets
    its sentence and the default layer."""
    default = handle.default_layer if handle.default_layer in layers else layers[-1]
    if "dis_layer" not in st.session_state:
        wanted = url_value("layer")
        if wanted is not None and wanted not in layers:
            try:
                dissection.spatial_layer(handle, wanted)
            except GlassboxError as error:
                st.warning(f"{error} Showing the default layer instead.")
            set_url_value("layer", None)
    elif st.session_state["dis_layer"] not in layers:  # another model was picked meanwhile
        st.session_state["dis_layer"] = default
    return url_widget(column.selectbox, "Layer", key="dis_layer", param="layer", default=default, options=layers,
                      format_func=lambda name: layer_label(handle, name),
                      help="NetDissect looks at a late convolutional layer (AlexNet's conv5). Layers listed in "
                           "forward order.")


def dissection_controls(handle: ModelHandle, layers: list[str]) -> DissectionSettings:
    """Layer, concept images (and folder), top quantile and detector IoU, each bound to the URL."""
    left, right = st.columns([3, 2])
    layer = layer_picker(handle, layers, left)
    source = url_widget(right.selectbox, "Concept images", key="dis_source", param="concepts", default=SOURCES[0],
                        options=SOURCES, format_func=source_label,
                        help="The bundled set is generated on demand (colours, textures and shapes on real photos, "
                             "with exact masks) and kept on disk. A folder may be in Broden's format (index.csv) or "
                             "images/ + masks/<image>/<concept>.png.")
    folder = ""
    if source == FOLDER:
        folder = url_widget(st.text_input, "Folder (Broden, or images/ + masks/)", key="dis_path", param="folder",
                            default="", placeholder="/data/broden1_224").strip()
    quantile_column, iou_column = st.columns(2)
    quantile = url_widget(quantile_column.number_input, "Top quantile", key="dis_quantile", param="quantile",
                          default=0.005, parse=float, min_value=0.0001, max_value=0.5,
                          step=0.001, format="%.4f")
    iou_threshold = url_widget(iou_column.number_input, "Detector IoU", key="dis_iou", param="iou", default=0.04,
                               parse=float, min_value=0.0, max_value=1.0, step=0.01)
    config = dissection.DissectionConfig(quantile=float(quantile), iou_threshold=float(iou_threshold))
    return DissectionSettings(layer=layer, source=source, folder=folder, config=config)


# ---------------------------------------------------------------------------------------------
# The job


def run_dissection(handle: ModelHandle, settings: DissectionSettings, progress: Progress | None = None
                   ) -> dissection.DissectionResult:
    """The job: open the concept set (drawing the bundled one if needed, its messages shown), then dissect."""
    if settings.source == FOLDER:
        data = cache.concept_set(*settings.concept_spec())  # checked once per process, like the pictures
    else:
        n, size = SIZES[settings.source]
        drawing = None if progress is None else (lambda fraction, message: progress(0.0, message))
        data = concepts.bundled_concepts(n, size=size, mask_size=size // 2, progress=drawing)
    return dissection.dissect(handle, data, settings.layer, settings.config, progress=progress)


def start_dissection(handle: ModelHandle, settings: DissectionSettings) -> None:
    if settings.source == FOLDER and not settings.folder:
        st.error("Type the path of a concept folder first.")
        return
    start_job(settings.job_key(handle.name), run_dissection, handle, settings, title=f"Dissect {settings.layer}")


# ---------------------------------------------------------------------------------------------
# The result


def render_histogram(result: dissection.DissectionResult) -> None:
    st.plotly_chart(plots.detector_histogram(result.detector_counts(), units=result.units, layer=result.layer,
                                             threshold=result.config["iou_threshold"]), width="stretch",
                    key="histogram")


def render_units_table(result: dissection.DissectionResult, model_name: str) -> int | None:
    """The units, best IoU first (detectors only, if asked), and the CSV; the unit of a clicked row."""
    st.subheader("Units")
    only = st.toggle("Detectors only", value=False, key="dis_only")
    rows = result.table_rows()
    shown = sorted([r for r in rows if r["detector"]] if only else rows, key=lambda r: -r["iou"])
    picked = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row", key="dis_table",
                          height=360, column_config={
                              "iou": st.column_config.ProgressColumn(
                                  "IoU", min_value=0.0, max_value=max(0.01, float(result.best_iou.max())),
                                  format="%.3f"),
                              "threshold": st.column_config.NumberColumn("threshold", format="%.3g")})
    st.download_button("Units (CSV)", result.csv, f"dissection_{model_name}_{result.layer}.csv", "text/csv")
    selected = picked.selection.rows if picked is not None else []
    return int(shown[selected[0]]["unit"]) if selected else None


def render_concept_search(result: dissection.DissectionResult) -> None:
    """"Which units detect X?": the ten units with the highest IoU for one concept."""
    st.subheader("Which units detect…")
    names = sorted(set(result.concept_names))
    default_concept = "stripes horizontal" if "stripes horizontal" in names else names[0]
    concept = st.selectbox("Concept", names, index=names.index(default_concept), key="dis_concept")
    ranked = result.units_for(result.concept_names.index(concept), limit=10)
    st.dataframe([{"unit": u, "IoU": round(iou, 4), "detector": iou > result.config["iou_threshold"],
                   "its best concept": result.concept_names[result.best_concept[u]]} for u, iou in ranked],
                 hide_index=True)


def unit_picker(result: dissection.DissectionResult, clicked: int | None) -> int:
    """The unit number box; a click in the table wins over it."""
    if clicked is not None:
        st.session_state["dis_unit"] = clicked
    st.session_state.setdefault("dis_unit", int(np.argmax(result.best_iou)))
    st.session_state["dis_unit"] = min(int(st.session_state["dis_unit"]), result.units - 1)
    return int(st.number_input("Unit", 0, result.units - 1, key="dis_unit", help="Or click a row of the table."))


def render_top_images(handle: ModelHandle, settings: DissectionSettings, result: dissection.DissectionResult,
                      unit: int) -> None:
    """The set's images where the unit fires most, the area above its threshold lit."""
    indices = tuple(int(i) for i in result.top_images[unit])
    pictures, maps = cache.unit_maps_on_set(handle.name, *settings.concept_spec(), result.dataset_key, result.layer,
                                            unit, indices)
    threshold = float(result.thresholds[unit])
    for column, picture, unit_map, index, value in zip(st.columns(len(indices)), pictures, maps, indices,
                                                       result.top_values[unit]):
        column.image(plots.unit_overlay(picture, unit_map, threshold), width="stretch",
                     caption=f"#{index} · max {value:.2f}")


def render_unit_on_image(handle: ModelHandle, selection: Selection, result: dissection.DissectionResult,
                         unit: int) -> None:
    """The same unit on the sidebar's image: where it is lit, how much of it, how strongly."""
    view, mine = cache.unit_map_on_image(handle.name, selection.digest, selection.image_bytes, result.layer, unit)
    threshold = float(result.thresholds[unit])
    picture_column, numbers_column = st.columns([1, 2])
    picture_column.image(plots.unit_overlay(view, mine, threshold), width="stretch",
                         caption=f"unit {unit} on {selection.image_name}: lit where above {threshold:.3g}")
    share = float((mine > threshold).mean())
    numbers_column.metric("Share of your image above the threshold", f"{100 * share:.1f} %")
    if share == 0:
        numbers_column.caption("This unit stays silent on your image: nothing in it reaches the unit's threshold.")
    numbers_column.metric("Strongest activation on your image", f"{mine.max():.3g}",
                          help="Compare with the threshold; the unit is silent on your image when this stays below it.")


def render_unit(handle: ModelHandle, selection: Selection, settings: DissectionSettings,
                result: dissection.DissectionResult, unit: int) -> None:
    st.subheader(f"Unit {unit}: {result.concept_names[result.best_concept[unit]]} (IoU {result.best_iou[unit]:.3f})")
    st.caption("Click a row of the table to see another unit. Top: the images of the set where this unit fires most, "
               "with the area above its threshold lit. Bottom: the same unit on your image.")
    try:
        render_top_images(handle, settings, result, unit)
        render_unit_on_image(handle, selection, result, unit)
    except GlassboxError as error:
        st.error(str(error))


def render_result(handle: ModelHandle, selection: Selection, settings: DissectionSettings,
                  result: dissection.DissectionResult) -> None:
    st.success(result.summary())
    render_histogram(result)
    left, right = st.columns([3, 2], gap="large")
    with left:
        clicked = render_units_table(result, handle.name)
    with right:
        render_concept_search(result)
    render_unit(handle, selection, settings, result, unit_picker(result, clicked))


def main() -> None:
    selection, handle = page_header("Dissection", INTRO)
    layers = dissectable_layers(handle)
    if not layers:
        st.error("This model has no layer with a spatial output, so there is nothing to dissect.")
        return
    settings = dissection_controls(handle, layers)
    if st.button("Dissect", type="primary"):
        start_dissection(handle, settings)
    status = show_job(settings.job_key(handle.name), idle=IDLE, cancelled="The dissection was cancelled.",
                      again=lambda: start_dissection(handle, settings))
    if status is not None:
        render_result(handle, selection, settings, status.result)


main()
