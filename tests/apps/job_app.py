"""A tiny page for tests: a slow job that must survive reruns (widget clicks) and reloads."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from engine.errors import JobError  # noqa: E402
from engine.jobs import registry  # noqa: E402
from tests.apps.job_funcs import slow_count  # noqa: E402

jobs = registry()
key = st.session_state.get("job_key", "job-app-demo")

# A reload keeps the URL but not the session: the id in the URL finds the running job again.
job_id = st.query_params.get("job") or st.session_state.get("job_id")
try:
    if job_id:
        jobs.status(job_id)
except JobError:
    job_id = None
if not job_id:
    job_id = jobs.submit(slow_count, 40, 0.05, tag=key, title="Counting slowly", key=key)
st.session_state["job_id"] = job_id
st.query_params["job"] = job_id

st.button("Rerun")


@st.fragment(run_every=0.5)
def show_status() -> None:
    status = jobs.status(job_id)
    st.text(f"{status.id} {status.state.value} {status.fraction:.3f}")
    if status.done:
        st.success(f"Result: {status.result}")
    elif status.error:
        st.error(status.error)


show_status()
