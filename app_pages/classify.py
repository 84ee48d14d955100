"""Classify: the chosen image as the model sees it, and its top classes."""

import streamlit as st

from engine import cache, classify, plots
from engine.errors import GlassboxError
from streamlit_app import class_picker, ensure_frame, require_model

selection = ensure_frame()
handle = require_model(selection)

st.title("Classify")
st.caption("What does the model think this is? The model sees a square centre crop, resized to its input size.")

left, right = st.columns([2, 3], gap="large")
with left:
    view = classify.model_view(handle, selection.image())
    st.image(view, caption=f"{selection.image_name} · what {handle.name} sees ({handle.input_size}×{handle.input_size})",
             width="stretch")
with right:
    top_k = st.slider("How many classes", 3, 20, 5, key="top_k")
    try:
        ranking = cache.prediction(handle.name, selection.digest, selection.image_bytes, handle.num_classes)
    except GlassboxError as error:
        st.error(str(error))
        st.stop()
    prediction = ranking.top(top_k)
    chosen = class_picker(handle, label="Look up any class", default=prediction.indices[0],
                          help="Type to search the class names; the choice is kept in the page's link.")
    rank = ranking.rank_of(chosen)
    highlight = chosen if chosen in prediction.indices else None
    st.plotly_chart(plots.topk_bar(prediction, highlight=highlight), width="stretch",
                    config={"displayModeBar": False}, key="topk_chart")
    st.metric(f"{handle.class_names[chosen]}", f"{100 * ranking.probs[rank]:.2f} %", help="probability of the looked-up class",
              delta=f"rank {rank + 1} of {handle.num_classes}", delta_color="off", delta_arrow="off")
