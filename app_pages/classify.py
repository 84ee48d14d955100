"""Classify: the chosen image as the model sees it, and its top classes."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine import cache, models, plots
from engine.errors import GlassboxError
from streamlit_app import Selection, class_picker, page_header, url_widget

TOP_K_DEFAULT = 5


@dataclass(frozen=True)
class ClassifySettings:
    top_k: int
    looked_up: int


def classify_controls(handle: models.ModelHandle, ranking: models.Prediction) -> ClassifySettings:
    top_k = url_widget(st.slider, "How many classes", key="top_k", param="top", default=TOP_K_DEFAULT,
                       parse=int, min_value=3, max_value=20)
    looked_up = class_picker(handle, label="Look up any class", default=ranking.indices[0],
                             help="Type to search the class names; the choice is kept in the page's link.")
    return ClassifySettings(int(top_k), int(looked_up))


def render_view(handle: models.ModelHandle, selection: Selection) -> None:
    view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    st.image(view, caption=f"{selection.image_name} · what {handle.name} sees ({handle.input_size}×{handle.input_size})",
             width="stretch")


def render_ranking(handle: models.ModelHandle, ranking: models.Prediction, settings: ClassifySettings) -> None:
    prediction = ranking.top(settings.top_k)
    chosen = settings.looked_up
    rank = ranking.rank_of(chosen)
    highlight = chosen if chosen in prediction.indices else None
    st.plotly_chart(plots.topk_bar(prediction, highlight=highlight), width="stretch",
                    config={"displayModeBar": False}, key="topk_chart")
    st.metric(f"{handle.class_names[chosen]}", f"{100 * ranking.probs[rank]:.2f} %",
              help="probability of the looked-up class", delta=f"rank {rank + 1} of {handle.num_classes}",
              delta_color="off", delta_arrow="off")


def main() -> None:
    selection, handle = page_header(
        "Classify", "What does the model think this is? The model sees a square centre crop, resized to its input size.")
    left, right = st.columns([2, 3], gap="large")
    with left:
        render_view(handle, selection)
    with right:
        try:
            ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
        except GlassboxError as error:
            st.error(str(error))
            return
        settings = classify_controls(handle, ranking)
        render_ranking(handle, ranking, settings)


main()
