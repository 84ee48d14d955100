"""Interactive calls beside long jobs on one shared model (issue 16): do classify and Grad-CAM wait?

    python bench/bench_interactive.py [--model efficientnet_lite0] [--repeats 5] [--locks model,rlock]
                                      [--jobs relabel,occlusion,rise,ig,features,dissection,uap] [--markdown]

Every page's interactive call (classify, a fast saliency map) runs in the browser session's script
thread, outside the job queue, but takes the model handle's lock, which a job on the same model
takes around each forward/backward step. This measures, on one model:

* each interactive call **alone** (median of ``--repeats``);
* the same call **while each kind of long job runs** on that model in a job thread (relabel, an
  occlusion scan, a RISE scan, integrated gradients, set features, a dissection, a universal
  perturbation), and how long it waited for the lock;
* how long the job holds the lock at a stretch (median and longest hold), which bounds the wait.

``--locks model,rlock`` runs everything with the handle's :class:`engine.models.ModelLock` (interactive
callers go before the next job step) and with a plain ``threading.RLock`` (the old lock: whoever
asks first after a release may win, often the job thread that just released it). Each job is
cancelled once measured. A private GLASSBOX_CACHE (a temporary folder) keeps cached results from
turning a job into a file read. Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GLASSBOX_CACHE", tempfile.mkdtemp(prefix="glassbox-bench-interactive-"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import classify, images, jobs, models, saliency  # noqa: E402


class TimedLock:
    """Wraps a lock: records each outermost hold (seconds, by job or script thread) and each
    interactive caller's wait for it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.local = threading.local()
        self.holds: list[tuple[float, bool]] = []
        self.waits: list[float] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        asked = time.perf_counter()
        got = self.inner.acquire(blocking, timeout)
        if got:
            depth = getattr(self.local, "depth", 0)
            if depth == 0:
                self.local.start = time.perf_counter()
                if not jobs.in_job_thread():
                    self.waits.append(self.local.start - asked)
            self.local.depth = depth + 1
        return got

    def release(self) -> None:
        self.local.depth -= 1
        if self.local.depth == 0:
            self.holds.append((time.perf_counter() - self.local.start, jobs.in_job_thread()))
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return getattr(self.local, "depth", 0) > 0


def job_work(handle: models.ModelHandle, x: torch.Tensor, kind: str):
    """(function, args, kwargs) of one long job as the pages start it (default settings)."""
    from engine import attacks, dissection, imagesets, lab_runs
    from engine.concepts.bundled import bundled_concepts

    layer = handle.default_layer
    if kind == "relabel":
        attack = attacks.get_attack("relabel")  # no cap and a near-certain target: it keeps stepping
        return attack.run, (handle, x, 1, attack.make_config(max_steps=10_000, cap=None, confidence=0.999999)), {}
    if kind in ("occlusion", "rise", "ig"):  # occlusion stride 4 (2401 patches), IG 256 steps: long enough
        config = saliency.method_class(kind).Config(**{"occlusion": {"stride": 4}, "ig": {"steps": 256}}.get(kind, {}))
        return saliency.explain, (handle, x, kind, None, config), {}
    if kind == "features":
        return imagesets.set_features_many, (handle, imagesets.open_set("crops", size=handle.input_size), [layer]), \
            {"use_cache": False}
    if kind == "dissection":
        concepts = bundled_concepts(300, size=handle.input_size, mask_size=handle.input_size // 2)
        return dissection.dissect, (handle, concepts, layer), {"use_cache": False}
    if kind == "uap":
        settings = {"method": "sgd", "norm": "inf", "xi": 10.0, "max_passes": 50, "target_fooling": 1.0}
        return lab_runs.uap_run, (handle, "bundled", "heldout", settings), {}
    raise SystemExit(f"unknown job {kind!r}")


def interactive_calls(handle: models.ModelHandle, x: torch.Tensor) -> dict:
    """What a page does in its script thread: classify, and a Grad-CAM map."""
    return {"classify": lambda: handle.classify(x),
            "Grad-CAM": lambda: saliency.explain(handle, x, "gradcam", None)}


def time_calls(calls: dict, repeats: int) -> dict[str, list[float]]:
    out = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        out[name] = times
    return out


def ms(values: list[float]) -> str:
    return "-" if not values else f"{1000 * statistics.median(values):.0f} / {1000 * max(values):.0f}"


def measure(handle, x, lock_kind: str, job_kinds: list[str], repeats: int) -> list[dict]:
    timed = TimedLock(models.ModelLock() if lock_kind == "model" else threading.RLock())
    handle.lock = timed
    calls = interactive_calls(handle, x)
    time_calls(calls, 1)  # warm-up
    rows = [{"job": "none (alone)", **time_calls(calls, repeats), "holds": [], "waits": []}]
    registry = jobs.JobRegistry(max_running=1)
    for kind in job_kinds:
        fn, args, kwargs = job_work(handle, x, kind)
        timed.holds.clear()
        job_id = registry.submit(fn, *args, title=kind, **kwargs)
        deadline = time.monotonic() + 300
        while sum(job for _, job in timed.holds) < 3 and time.monotonic() < deadline:  # the job's steps are on
            if registry.status(job_id).finished:
                break
            time.sleep(0.05)
        timed.waits.clear()
        running = registry.status(job_id).state is jobs.JobState.RUNNING
        times = time_calls(calls, repeats)
        still = registry.status(job_id).state is jobs.JobState.RUNNING
        registry.cancel(job_id)
        final = registry.wait(job_id, timeout=600)
        job_holds = [seconds for seconds, job in timed.holds if job]
        rows.append({"job": kind, **times, "holds": job_holds, "waits": list(timed.waits),
                     "ran": running and still, "state": final.state.value, "error": final.error})
    handle.lock = models.ModelLock()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--locks", default="model,rlock")
    parser.add_argument("--jobs", default="relabel,occlusion,rise,ig,features,dissection,uap")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    handle = models.load_model(args.model)
    view = classify.model_view(handle, images.decode_image(images.sample_bytes("chelsea")))
    x = images.to_tensor(view, device=handle.device)
    print(f"# {args.model} on {handle.device}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    for lock_kind in args.locks.split(","):
        rows = measure(handle, x, lock_kind, [k for k in args.jobs.split(",") if k], args.repeats)
        title = ("ModelLock (interactive first)" if lock_kind == "model" else "plain RLock (before)")
        print(f"\n## {title}: median / max ms of {args.repeats} calls")
        sep = " | " if args.markdown else "  "
        header = ["job running", "classify", "Grad-CAM", "interactive wait for the lock", "job's lock hold",
                  "job holds", "measured while it ran"]
        if args.markdown:
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        else:
            print(sep.join(f"{h:>22}" for h in header))
        for row in rows:
            cells = [row["job"], ms(row["classify"]), ms(row["Grad-CAM"]), ms(row["waits"]), ms(row["holds"]),
                     str(len(row["holds"])), "-" if "ran" not in row else ("yes" if row["ran"] else
                                                                           f"no ({row['state']})")]
            if row.get("error"):
                cells[-1] += f" {row['error']}"
            print(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
