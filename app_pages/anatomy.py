"""Anatomy: what a trained network has learned (the lecture's "What has been learned by ConvNets?").

Seven views, chosen by ``?view=``, in the lecture's order. **Filters**: the first layer's weights as
pictures. **Activations**: one layer's strongest channels on the sidebar's image; click one to see it
over the image. **Top patches**: for one unit, the set's crops that excite it most, each cut to the
unit's exact receptive field. **The tour**: one strong unit per block, from edges to parts, the
patches growing. **Neighbours**: the image's nearest images by penultimate features beside its
nearest by raw pixels. **Embedding**: t-SNE (or PCA) of the set's penultimate features; click a point
to make it the current image. **Back to pixels**: Zeiler & Fergus's deconvnet beside guided backprop
and the plain gradient.

The views over a set compute the set's features once, as a job, cached on disk per (model, layer, set).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine import anatomy_cli, cache, images, io, plots
from engine.errors import GlassboxError
from engine.imagesets import PENULTIMATE
from engine.models import ModelHandle
from streamlit_app import (SetChoice, Selection, image_set_controls, open_image_set, page_header, show_job, start_job,
                           url_widget, use_image)

INTRO = ("The lecture's opening question, *What has been learned by ConvNets?*, answered the ways the slides do: "
         "look at the first layer's filters, at a layer's activations, at the patches of many images that excite "
         "one unit most (and a tour of them from edges to parts), at nearest neighbours and a t-SNE map of the "
         "last features, and go back from a unit to the pixels (Zeiler & Fergus's deconvnet).")
VIEWS = {"filters": "Filters", "activations": "Activations", "patches": "Top patches", "tour": "The tour",
         "neighbours": "Neighbours", "embedding": "Embedding", "back": "Back to pixels"}
SET_VIEWS = ("patches", "tour", "neighbours", "embedding")
SOURCES = ("bundled", "crops", "concepts", "zip", "folder", "broden")
SKIPPED_KINDS = ("ZeroPad2d", "Identity")
PROJECTIONS = {"deconvnet": "Deconvnet (Zeiler & Fergus)", "guided": "Guided backprop", "gradient": "Gradient"}


# ---------------------------------------------------------------------------------------------
# Controls


def view_control() -> str:
    return url_widget(st.segmented_control, "View", key="an_view", param="view", default="filters",
                      options=list(VIEWS), format_func=VIEWS.get, required=True, label_visibility="collapsed")


def spatial_layers(handle: ModelHandle) -> list[str]:
    return [info.name for info in handle.layers if info.kind not in SKIPPED_KINDS]


def middle_layer(handle: ModelHandle) -> str:
    """A block in the middle of the network (the tour's middle stop): small enough fields to see what a
    unit looks at, deep enough to respond to more than edges."""
    from engine import anatomy

    stops = anatomy.tour_layers(handle)
    return stops[len(stops) // 2] if stops else spatial_layers(handle)[-1]


def layer_control(handle: ModelHandle, column, *, default: str | None = None, key: str = "an_layer") -> str:
    layers = spatial_layers(handle)
    default = default or middle_layer(handle)
    default = default if default in layers else (handle.default_layer if handle.default_layer in layers else layers[-1])
    if key in st.session_state and st.session_state[key] not in layers:  # another model was picked
        st.session_state[key] = default

    def label(name: str) -> str:
        info = handle.layer(name)
        return f"{name} · {info.kind} · {info.channels} channels · {info.height}×{info.width}"

    return url_widget(column.selectbox, "Layer", key=key, param="layer", default=default, options=layers,
                      format_func=label, help="Layers in forward order: early ones see edges and colours, late "
                                              "ones parts and objects.")


def set_controls() -> SetChoice:
    """The image set of the set views (crops of the bundled photos by default)."""
    return image_set_controls(key_prefix="an", default="crops", sources=SOURCES)


def open_set(handle: ModelHandle, choice: SetChoice):
    return open_image_set(handle, choice)


def features_job(handle: ModelHandle, choice: SetChoice, imageset, layers: tuple[str, ...], *,
                 action: str) -> dict | None:
    """Each layer's features over the set: read from disk when every layer is cached there, else
    computed once as a job (started by the ``action`` button)."""
    stored = cache.stored_set_features(handle.name, choice.spec, imageset.key, handle.input_size, layers)
    if stored is not None:
        return stored
    key = "|".join(["anatomy-features", handle.name, imageset.key, *layers])
    def start() -> None:
        start_job(key, cache.run_set_features, handle, choice.spec, handle.input_size, layers,
                  title=f"Features of {len(imageset)} images")

    if st.button(action, type="primary", key=f"an_run_{'_'.join(layers)}"):
        start()
    status = show_job(key, idle=f"Press **{action}**: the set's {len(imageset)} images go through the model once "
                                f"({len(layers)} layer{'s' if len(layers) > 1 else ''}); the features are kept on "
                                "disk, so the next visit opens at once.",
                      cancelled=f"Cancelled. Press **{action}** to start again.", again=start)
    return None if status is None else status.result


# ---------------------------------------------------------------------------------------------
# Views on one image


def filters_view(handle: ModelHandle, selection: Selection) -> None:
    try:
        grid = cache.first_layer_filters(handle.name)
    except GlassboxError as error:
        st.error(str(error))
        return
    out_channels, in_channels, kh, kw = grid.shape
    st.subheader(f"First layer: {grid.layer}, weights {out_channels} × {in_channels} × {kh} × {kw}")
    st.caption(f"Each of the {out_channels} filters drawn as a {kh}×{kw} colour picture, each normalised on its own "
               f"({grid.normalisation}: its smallest weight black, its largest full colour). AlexNet's 11×11 "
               "first-layer filters look like oriented edges and colour blobs (the lecture's slide); small filters "
               "show colour contrasts and simple gradients. Later layers' filters act on channels, not colours, so "
               "drawing them says little: the other views show what those layers respond to.")
    if grid.note:
        st.info(grid.note)
    st.image(plots.enlarge(grid.grid, max(1, 560 // grid.grid.shape[1])), width="content")
    st.download_button("Filters (PNG)", images.to_png_bytes(grid.grid), f"filters_{handle.name}.png", "image/png")


def activations_view(handle: ModelHandle, selection: Selection) -> None:
    left, right = st.columns([3, 1])
    layer = layer_control(handle, left)
    count = url_widget(right.number_input, "Channels shown", key="an_count", param="count", default=32, parse=int,
                       min_value=4, max_value=128, step=4)
    acts = cache.image_activations(handle.name, selection.digest, selection.image_bytes, layer)
    shown = acts.order[:count]
    st.caption(f"{layer}: {len(acts.order)} channels of {acts.maps.shape[1]}×{acts.maps.shape[2]} on "
               f"{selection.image_name}; the {len(shown)} strongest (by their maximum) first, each scaled to its "
               "own range. Click a tile to see it over the image.")
    figure = plots.channel_grid(acts.maps[shown], list(map(int, shown)), acts.strength[shown])
    event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key="an_grid", width="stretch")
    points = event.selection.points if event is not None else []
    channel = int(points[0]["customdata"][0]) if points else int(shown[0])
    view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    picture, numbers, _ = st.columns([3, 2, 1])
    big = acts.maps[channel]
    picture.image(plots.activation_overlay(view, big), width="stretch",
                  caption=f"channel {channel} over {selection.image_name} (bright = strong)")
    numbers.metric("Strongest activation", f"{float(big.max()):.3g}")
    numbers.metric("Share of positions above zero", f"{100 * float((big > 0).mean()):.0f} %")


def back_view(handle: ModelHandle, selection: Selection) -> None:
    left, right = st.columns([3, 1])
    layer = layer_control(handle, left)
    info = handle.layer(layer)
    acts = cache.image_activations(handle.name, selection.digest, selection.image_bytes, layer)
    unit = url_widget(right.number_input, "Unit", key="an_back_unit", param="unit", default=int(acts.order[0]),
                      parse=int, min_value=0, max_value=info.channels - 1)
    st.caption(f"Unit {unit} of {layer} at its strongest position on {selection.image_name}, every other "
               "activation zeroed, projected back to the pixels three ways: the deconvnet (the backward signal "
               "rectified at each ReLU, max-pool switches from the forward pass), guided backprop (rectified and "
               "also gated by where the forward input was positive) and the plain gradient.")
    results = {}
    for method in PROJECTIONS:
        try:
            results[method] = cache.projection(handle.name, selection.digest, selection.image_bytes, layer, unit,
                                               method)
        except GlassboxError as error:
            st.error(str(error))
            return
    first = next(iter(results.values()))
    if first.note:
        st.info(first.note)
    view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    top, left, bottom, right = first.box
    columns = st.columns(len(results) + 1)
    columns[0].image(plots.mark_box(view, first.box), width="stretch",
                     caption=f"{selection.image_name}: unit {unit}'s receptive field at its peak "
                             f"({bottom - top}×{right - left} px)")
    for column, (method, result) in zip(columns[1:], results.items()):
        column.image(plots.signed_picture(result.image), width="stretch", caption=PROJECTIONS[method])
    if (bottom - top) * (right - left) < 0.5 * view.shape[0] * view.shape[1]:
        st.markdown("**Inside the receptive field**, enlarged: the patch, then each projection")
        crops = [view[top:bottom, left:right]] + [plots.signed_picture(r.image)[top:bottom, left:right]
                                                  for r in results.values()]
        factor = max(1, 200 // max(bottom - top, right - left))
        for column, crop, caption in zip(st.columns(len(crops)), crops, ["patch", *PROJECTIONS.values()]):
            column.image(plots.enlarge(crop, factor), width="stretch", caption=caption)
    st.caption("Grey is zero; brighter or darker pixels push the unit up or down. Each picture is scaled to its own "
               "99.5th percentile, so compare patterns, not brightness, across methods.")
    side_by_side = plots.tile([view, *(plots.signed_picture(r.image) for r in results.values())], len(results) + 1)
    st.download_button("Projections (PNG)", images.to_png_bytes(side_by_side),
                       f"projections_{handle.name}_{layer}_unit{unit}.png".replace("/", "_"), "image/png")


# ---------------------------------------------------------------------------------------------
# Views over a set


def unit_control(features, column, key: str = "an_unit") -> int:
    strongest = int(np.argmax(features.values.mean(axis=0)))
    units = features.values.shape[1]
    if key in st.session_state and int(st.session_state[key]) >= units:
        st.session_state[key] = strongest
    return url_widget(column.number_input, "Unit", key=key, param="unit", default=strongest, parse=int,
                      min_value=0, max_value=units - 1, help="Default: the unit with the largest mean peak.")


def patches_view(handle: ModelHandle, selection: Selection, choice: SetChoice, imageset) -> None:
    left, middle, right = st.columns([3, 1, 1])
    layer = layer_control(handle, left)
    k = url_widget(right.number_input, "Patches", key="an_k", param="k", default=min(9, len(imageset)), parse=int,
                   min_value=1, max_value=64)
    found = features_job(handle, choice, imageset, (layer,), action="Find top patches")
    if found is None:
        return
    features = found[layer]
    unit = unit_control(features, middle)
    try:
        patches = cache.top_patches(handle.name, choice.spec, imageset.key, layer, unit, k, features)
    except GlassboxError as error:
        st.error(str(error))
        return
    st.caption(f"Unit {unit} of {layer}: the {len(patches.crops)} images of the set where it fires most, each cut to "
               f"the unit's receptive field at its peak ({patches.field_size[0]}×{patches.field_size[1]} px of the "
               f"{handle.input_size} px input, computed exactly from the gradient's support).")
    render_patches(patches, columns=min(len(patches.crops), 9))
    stem = f"patches_{handle.name}_{layer}_unit{unit}".replace("/", "_")
    record = anatomy_cli.patches_record(patches, model=handle.name, set_name=imageset.name)
    png_column, json_column, _ = st.columns([1, 1, 4])
    png_column.download_button("Patches (PNG)", anatomy_cli.patches_png(patches), f"{stem}.png", "image/png")
    json_column.download_button("Patches (JSON)", io.manifest_json(record), f"{stem}.json", "application/json")


def render_patches(patches, *, columns: int) -> None:
    for start in range(0, len(patches.crops), columns):
        for column, crop, label, value in zip(st.columns(columns), patches.crops[start:start + columns],
                                              patches.labels[start:start + columns],
                                              patches.values[start:start + columns]):
            column.image(plots.enlarge(crop, max(1, 96 // max(crop.shape[:2]))), width="stretch",
                         caption=f"{label} · {value:.2f}")


def tour_view(handle: ModelHandle, selection: Selection, choice: SetChoice, imageset) -> None:
    from engine import anatomy

    layers = tuple(anatomy.tour_layers(handle))
    k = url_widget(st.number_input, "Patches per stop", key="an_tour_k", param="k", default=min(6, len(imageset)),
                   parse=int, min_value=1, max_value=12)
    found = features_job(handle, choice, imageset, layers, action="Take the tour")
    if found is None:
        return
    try:
        stops = cache.tour(handle.name, choice.spec, imageset.key, layers, k, found)
    except GlassboxError as error:
        st.error(str(error))
        return
    st.caption("One strong unit per block, from the first layers to the last: the receptive field grows, and what "
               "excites the unit goes from edges and colours to textures, parts and objects.")
    for stop in stops:
        st.markdown(f"**{stop.layer}** · unit {stop.unit} · field {stop.patches.field_size[0]}×"
                    f"{stop.patches.field_size[1]} px")
        render_patches(stop.patches, columns=max(k, 6))


def neighbours_view(handle: ModelHandle, selection: Selection, choice: SetChoice, imageset) -> None:
    k = url_widget(st.number_input, "Neighbours", key="an_nk", param="k", default=min(6, len(imageset)), parse=int,
                   min_value=1, max_value=32)
    found = features_job(handle, choice, imageset, (PENULTIMATE,), action="Find neighbours")
    if found is None:
        return
    try:
        result = cache.neighbours(handle.name, selection.digest, selection.image_bytes, choice.spec, imageset.key, k,
                                  found[PENULTIMATE])
    except GlassboxError as error:
        st.error(str(error))
        return
    query, rest = st.columns([1, 5])
    query.image(cache.model_view(handle.name, selection.digest, selection.image_bytes), width="stretch",
                caption=f"{selection.image_name} (the query)")
    if result.excluded is not None:
        query.caption(f"The set holds this very image ({imageset.labels[result.excluded]}); it is left out.")
    with rest:
        for title, rows in (("By the network's penultimate features (cosine distance)", result.features),
                            ("By raw pixels (Euclidean distance, 32×32 thumbnails)", result.pixels)):
            st.markdown(f"**{title}**")
            for column, (index, distance) in zip(st.columns(max(k, 6)), rows):
                column.image(cache.set_thumbnail(choice.spec, imageset.key, int(index), handle.input_size),
                             width="stretch", caption=f"{imageset.labels[int(index)]} · {distance:.3f}")
    st.caption("The lecture's point: the network's neighbours share what the image shows, even when colours, pose "
               "and background differ; the pixel neighbours share colours and layout, not content.")
    st.download_button("Neighbours (JSON)", io.manifest_json(anatomy_cli.neighbours_record(result, imageset.labels)),
                       f"neighbours_{handle.name}.json", "application/json")


def embedding_facts(embedding) -> str:
    if embedding.method == "pca":
        x, y = embedding.explained
        return (f"PCA: the two directions along which the features vary most ({100 * x:.0f} % and {100 * y:.0f} % of "
                "the variance); distances are kept, clusters blur.")
    return (f"t-SNE (openTSNE, perplexity {embedding.perplexity:.3g}, KL {embedding.kl:.3f}): neighbours stay "
            "neighbours, but distances between clusters and cluster sizes mean little.")


def embedding_view(handle: ModelHandle, selection: Selection, choice: SetChoice, imageset) -> None:
    left, right = st.columns([1, 1])
    method = url_widget(left.segmented_control, "Method", key="an_method", param="method", default="tsne",
                        options=["tsne", "pca"], format_func={"tsne": "t-SNE", "pca": "PCA"}.get, required=True)
    thumbs = url_widget(right.toggle, "Thumbnails at the points", key="an_thumbs", param="thumbs",
                        default=len(imageset) <= 300, parse=lambda s: s == "1", dump=lambda v: "1" if v else "0")
    found = features_job(handle, choice, imageset, (PENULTIMATE,), action="Embed")
    if found is None:
        return
    features = found[PENULTIMATE]
    try:
        embedding = cache.embedding(handle.name, imageset.key, method, features)
    except GlassboxError as error:
        st.error(str(error))
        return
    names = [handle.class_names[int(c)] for c in features.predicted]
    thumbnails = cache.set_thumbnails(choice.spec, imageset.key, handle.input_size, 48) if thumbs else None
    figure = plots.embedding_figure(embedding.points, list(imageset.labels), names, features.confidence,
                                    thumbnails=thumbnails, title=f"{embedding.label} of {len(imageset)} images · "
                                                                 f"{handle.name} penultimate features")
    event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key="an_embedding", width="stretch")
    st.caption(f"{embedding_facts(embedding)} {embedding.note} Colour: the predicted class. Hover for the file and "
               "the class; click a point to make that image the current one (sidebar).")
    rows = anatomy_cli.embedding_points(embedding, list(imageset.labels), names, features.confidence)
    st.download_button("Points (CSV)", anatomy_cli.embedding_csv(rows), f"{embedding.method}_{handle.name}.csv",
                       "text/csv")
    points = event.selection.points if event is not None else []
    if points:
        index = int(points[0]["customdata"][0])
        if st.session_state.get("an_used") != (imageset.key, index):
            st.session_state["an_used"] = (imageset.key, index)
            use_image(imageset.labels[index], cache.set_image_png(choice.spec, handle.input_size, index))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    selection, handle = page_header("Anatomy", INTRO)
    view = view_control()
    if not spatial_layers(handle):
        st.error("This model has no layer with a spatial output, so there is nothing to look inside.")
        return
    if view in SET_VIEWS:
        choice = set_controls()
        imageset = open_set(handle, choice)
        if imageset is None:
            return
        {"patches": patches_view, "tour": tour_view, "neighbours": neighbours_view,
         "embedding": embedding_view}[view](handle, selection, choice, imageset)
        return
    try:
        {"filters": filters_view, "activations": activations_view, "back": back_view}[view](handle, selection)
    except GlassboxError as error:
        st.error(str(error))


main()
