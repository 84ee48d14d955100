"""Many users at once and many interactions (issue 16): the short versions of bench/bench_load.py
and bench/bench_soak.py. No timing is asserted; the long versions and their figures are in
docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_load import ACTIONS, RssSampler, load_test, server_pid
from tests.browser import CHROMIUM, ROOT, streamlit_server


@pytest.mark.browser
def test_three_users_at_once_complete_every_action_without_an_error(tmp_path, monkeypatch):
    """One server, one chromium, 3 browser contexts clicking through Classify, Grad-CAM and a relabel
    at the same time (after one user alone): every action completes, with no exception or error box
    on the page, no console error, no timeout."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("GLASSBOX_SKIP_BROWSER") == "1":
            pytest.skip("GLASSBOX_SKIP_BROWSER=1 and no chromium")
        raise RuntimeError("Browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium).")
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path))  # no job journal of another server: a clean start
    with streamlit_server() as url:
        with RssSampler(server_pid(url)) as sampler:
            results = asyncio.run(load_test(url, users=3, rounds=1, baseline_rounds=1, max_seconds=420,
                                            action_timeout_s=150, sampler=sampler))
    assert list(results) == ["warm-up", "1 user", "3 users"]
    for phase, outcome in results.items():
        assert not outcome.errors, [(e.user, e.action, e.error) for e in outcome.errors]
        assert outcome.completed == outcome.planned, f"{phase}: {outcome.completed} of {outcome.planned} actions"
    many = results["3 users"]
    assert {(t.user, t.action) for t in many.timings} == {(u, a) for u in range(3) for a in ACTIONS}
    assert many.relabelled >= 1  # 50 steps reach an animal class from a bundled photo (about 5 needed)
    assert sampler.peak("3 users") > 200 * 2**20  # the sampler read the server (with the model loaded)


def test_soak_memory_after_120_interactions_stays_within_10_percent_of_after_50(tmp_path):
    """120 page interactions (samples, top-k, classes, saliency methods, relabel jobs, page switches)
    in a fresh process started as the server is (MALLOC_ARENA_MAX=1): none raises or shows an error,
    and the RSS after all of them is within 10 % of the RSS after the first 50."""
    out = tmp_path / "soak.json"
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "bench" / "bench_soak.py"), "--interactions", "120",
                           "--baseline-after", "50", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["interactions"] == 120 and sum(result["actions"].values()) == 120
    assert len(result["actions"]) == 10  # every kind of interaction ran
    assert abs(result["growth"]) <= 0.10, done.stdout[-2000:]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
