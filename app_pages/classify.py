"""Classify: the chosen image as the model sees it, and its top classes.

When the current image was made from another one ("Use as the image" on a result: a relabelled
photo, a class inversion, ...), the page also shows the original beside it, both as the model
sees them and both rankings on one probability axis, so a class can answer "what changed?".
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine import cache, models, plots
from engine.errors import GlassboxError
from streamlit_app import Selection, class_picker, page_header, url_widget

TOP_K_DEFAULT = 5
COMPARE_IMAGE_PX = 300  # both images drawn at this one width, so they are the same size on screen


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


def comparison_sentence(derived: models.Prediction, original: models.Prediction) -> str:
    """One sentence a teacher can read out: what the model says now and what it said before."""
    now, before = derived.indices[0], original.indices[0]
    now_text = f"**{derived.labels[0]}** ({100 * derived.probs[0]:.1f} %)"
    before_text = f"**{original.labels[0]}** ({100 * original.probs[0]:.1f} %)"
    if now == before:
        return f"The model still says {now_text}; it said {before_text} for the original."
    was = 100 * original.probs[original.rank_of(now)]
    return (f"The model now says {now_text}; it said {before_text} for the original, "
            f"where {derived.labels[0]} had {was:.2f} %.")


def render_comparison(handle: models.ModelHandle, selection: Selection, ranking: models.Prediction,
                      settings: ClassifySettings) -> None:
    """The original next to the derived (current) image: both model views at the same size and both
    top-k rankings on the same 0-100 % axis, the derived image's top class marked in both."""
    parent = selection.parent()
    if parent is None:
        return
    name, data, digest = parent
    st.subheader("Compared with the original")
    origin = selection.origin
    if origin is not None and origin.operation:
        st.caption(f"The current image was made from **{name}** by {origin.operation}.")
    try:
        original = cache.prediction(handle.name, digest, data, handle.num_classes)
        original_view = cache.model_view(handle.name, digest, data)
    except GlassboxError as error:
        st.error(f"The original image ({name}) could not be classified: {error}")
        return
    st.markdown(comparison_sentence(ranking, original))
    top = ranking.indices[0]
    current_view = cache.model_view(handle.name, selection.digest, selection.image_bytes)
    left, right = st.columns(2, gap="large")
    for column, title, view, shown, key in ((left, f"Original · {name}", original_view, original, "cmp_original"),
                                            (right, f"Now · {selection.image_name}", current_view, ranking,
                                             "cmp_current")):
        with column:
            st.image(view, caption=f"{title} ({handle.input_size}×{handle.input_size}, as the model sees it)",
                     width=COMPARE_IMAGE_PX)
            st.plotly_chart(plots.topk_bar(shown.top(settings.top_k), highlight=top, title=title.split(" · ")[0]),
                            width="stretch", config={"displayModeBar": False}, key=key)
    st.caption(f"Both rankings on the same 0–100 % axis; {handle.class_names[top]} (the current image's top class) "
               f"is marked wherever it is among the top {settings.top_k}.")


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
    render_comparison(handle, selection, ranking, settings)


main()
