"""A tiny page for tests: the real sidebar, and one result ("the inverted image") with the shared
"Use as the image" button, so the chain (store, link by hash, origin, ZIP) is driven as a page would."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

import streamlit_app as app  # noqa: E402

selection = app.render_sidebar()
app._current.selection, app._current.page_title = selection, "Chain test"  # what the router sets for a page
try:
    st.markdown(f"digest: {selection.digest}")
    parent = selection.parent()
    st.markdown(f"parent: {parent[0] if parent else None}")
    app.use_as_image_button(255 - selection.array(), name=f"inverted {selection.image_name}",
                            operation="inversion", settings={"gain": 1.0}, key="invert")
finally:
    app._current.selection = app._current.page_title = None
