"""Home: what Glassbox is and what each demo page shows."""

from __future__ import annotations

import streamlit as st

from streamlit_app import PAGES, Selection, ensure_frame

INTRO = ("See inside an image classifier. Pick a model and an image in the sidebar; every page runs one "
         "classic experiment live on that image. Links keep your choices, so you can share what you see.")


def render_page_cards() -> None:
    for entry in PAGES:
        if entry.default:
            continue
        with st.container(border=True):
            st.page_link(entry.path, label=f"**{entry.title}**", icon=entry.icon)
            st.write(entry.blurb)


def render_model_note(selection: Selection) -> None:
    if selection.handle is not None:
        spec = selection.handle.spec
        st.caption(f"Current model: {spec.label}. {spec.note}")


def main() -> None:
    selection = ensure_frame()
    st.title("Glassbox")
    st.markdown(INTRO)
    render_page_cards()
    render_model_note(selection)


main()
