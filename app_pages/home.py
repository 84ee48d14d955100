"""Home: what Glassbox is and what each demo page shows."""

import streamlit as st

from streamlit_app import PAGES, ensure_frame

selection = ensure_frame()

st.title("Glassbox")
st.markdown(
    "See inside an image classifier. Pick a model and an image in the sidebar; every page runs one "
    "classic experiment live on that image. Links keep your choices, so you can share what you see."
)
for entry in PAGES:
    if entry.default:
        continue
    with st.container(border=True):
        st.page_link(entry.path, label=f"**{entry.title}**", icon=entry.icon)
        st.write(entry.blurb)

if selection.handle is not None:
    spec = selection.handle.spec
    st.caption(f"Current model: {spec.label}. {spec.note}")
