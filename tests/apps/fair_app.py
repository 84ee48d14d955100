"""A tiny page for the fairness test: one browser session submits three jobs through the frame's
controller (``start_job``) and shows them with the shared rows (``show_jobs``).

The test hands in the work (``work``, a gated function), a name (``name``: "A" or "B") and a run id
through session state; two AppTest instances are two browser sessions.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from streamlit_app import show_jobs, start_job  # noqa: E402

name, run = st.session_state["name"], st.session_state["run"]
keys = [f"fair-app|{run}|{name}{i}" for i in (1, 2, 3)]
if st.button("Submit three"):
    for i, key in enumerate(keys, 1):
        start_job(key, st.session_state["work"], f"{name}{i}", title=f"{name}{i}")
show_jobs(keys)
st.text(f"owner {st.session_state.get('_job_owner')}")
