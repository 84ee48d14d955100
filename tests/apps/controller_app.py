"""A tiny page on the frame's job controller: settings in the URL, Run, the shared polling fragment.

Two AppTest sessions opened with the same query are two browser tabs (or a reload) on one link.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from streamlit_app import show_job, start_job, url_value, url_widget  # noqa: E402
from tests.apps.job_funcs import slow_count  # noqa: E402


def live_view(status) -> None:
    st.text(f"live records {len(status.records)}")


def main() -> None:
    steps = url_widget(st.number_input, "Count to", key="steps", default=30, parse=int, min_value=1, max_value=500)
    key = f"controller-app|{url_value('run', 'demo')}|{int(steps)}"
    if st.button("Run"):
        start_job(key, slow_count, int(steps), 0.05, tag=key, title="Counting slowly", records=True)
    done = show_job(key, live=live_view)
    if done is not None:
        st.success(f"Result: {done.result} after {len(done.records)} records")


main()
