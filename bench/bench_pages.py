"""Page-level timings: a warm rerun of every page, and the cold start, for this tree and another.

    python bench/bench_pages.py [--baseline DIR] [--runs N] [--cold N] [--markdown]

``--baseline DIR`` is another checkout of Glassbox (for example ``git worktree add /tmp/before
f9fb2ca``) measured in the same run with this tree's interpreter, so the ratio new/old compares
the code, not the machine's mood. Each tree runs in its own subprocess (both have a package called
``engine``), rows interleaved tree by tree.

* **rerun**: a page opened through the router with AppTest (the way a browser opens a link), run
  once to warm its caches, then the median of ``--runs`` full script reruns with nothing changed,
  timed inside the script thread (router, sidebar and page), with each page compiled once as a
  server does (AppTest alone would recompile the page file on every run).
  That is what every widget click costs a user before anything new is computed: the floor is
  zero passes, so the figure is the page's own overhead.
* **cold start**: spawn ``streamlit run`` until headless chromium shows the /classify chart. Its
  floor is one model load plus one forward (``bench_foundation`` measures both).

Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = ("home", "classify", "relabel", "saliency", "inversion", "dissection", "patterns")


def page_path(root: Path, page: str) -> str:
    folder = "app_pages" if (root / "app_pages").is_dir() else "pages"
    return f"{folder}/{page}.py"


def worker(root: str, runs: int) -> dict:
    """In a subprocess whose cwd and sys.path[0] are ``root``: rerun timings for every page."""
    os.environ.setdefault("GLASSBOX_DEVICE", "cpu")
    sys.path.insert(0, root)
    import streamlit_app
    from streamlit.testing.v1 import AppTest

    # Time the script itself, in its own thread: wrap the router's main() (both trees run
    # ``streamlit_app.main()``), so AppTest's polling does not blur the figure.
    script_s: list[float] = []
    router = streamlit_app.main

    def timed_main() -> None:
        start = time.perf_counter()
        try:
            router()
        finally:
            script_s.append(time.perf_counter() - start)

    streamlit_app.main = timed_main
    # A server compiles each page once (one ScriptCache for its runtime); AppTest makes a new
    # cache every run, which would charge each rerun for compiling the page file again.
    import threading

    from streamlit.runtime.scriptrunner import script_cache

    shared_bytecode, shared_lock = {}, threading.Lock()

    def shared_cache(self) -> None:
        self._cache, self._lock = shared_bytecode, shared_lock

    script_cache.ScriptCache.__init__ = shared_cache
    out = {}
    for page in PAGES:
        at = AppTest.from_file(str(Path(root) / "streamlit_app.py"), default_timeout=300)
        at.run()
        at.switch_page(page_path(Path(root), page))
        at.run()
        if at.exception:
            out[page] = {"error": str(at.exception[0].message)[:200]}
            continue
        script_s.clear()
        for _ in range(runs):
            at.run()
        out[page] = {"rerun_ms": 1000 * statistics.median(script_s)}
    return out


def measure_reruns(root: Path, runs: int) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps({"root": str(root), "runs": runs})]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(root)})
    if done.returncode != 0:
        raise RuntimeError(f"worker for {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_start(root: Path) -> float:
    from tests.browser import chromium_page, free_port

    port = free_port()
    with chromium_page() as page:
        start = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(root / "streamlit_app.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=root, env={**os.environ, "GLASSBOX_DEVICE": "cpu", "MALLOC_ARENA_MAX": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                try:
                    page.goto(f"{url}/classify", timeout=2_000)
                    break
                except Exception:
                    if server.poll() is not None or time.perf_counter() - start > 120:
                        raise RuntimeError("streamlit did not start")
                    time.sleep(0.1)
            page.locator(".js-plotly-plot", has_text="Top-5 classes").first.wait_for(state="visible", timeout=180_000)
            return time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=15)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="another checkout to compare with, in the same run")
    parser.add_argument("--runs", type=int, default=7, help="reruns per page (median)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per tree (median)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(**spec)))
        return
    from bench.bench_foundation import machine_description

    trees = {"this tree": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    print(f"- Glassbox page benchmark -- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"- machine: {machine_description()}")
    print(f"- command: python bench/bench_pages.py {' '.join(sys.argv[1:])}\n")
    colds: dict[str, list[float]] = {name: [] for name in trees}  # --cold 0 skips the cold starts
    for _ in range(args.cold):  # interleaved: this tree, baseline, this tree, ...
        for name, root in trees.items():
            colds[name].append(cold_start(root))
    reruns = {name: measure_reruns(root, args.runs) for name, root in trees.items()}

    names = list(trees)
    head = ["page"] + [f"{n} rerun ms" for n in names] + (["new/old"] if len(names) == 2 else [])
    print("#### Warm rerun of each page with nothing changed (median of %d)\n" % args.runs)
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for page in PAGES:
        cells = [reruns[n][page].get("rerun_ms") for n in names]
        text = [f"{c:.0f}" if c is not None else reruns[n][page].get("error", "?") for c, n in zip(cells, names)]
        if len(names) == 2 and None not in cells:
            text.append(f"x{cells[0] / cells[1]:.2f}")
        elif len(names) == 2:
            text.append("-")
        print("| " + " | ".join([page] + text) + " |")
    if not args.cold:
        return
    print("\n#### Cold start: spawn `streamlit run` until /classify shows the Top-5 chart (median of %d)\n" % args.cold)
    print("| tree | runs s | median s |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {', '.join(f'{c:.1f}' for c in colds[name])} | {statistics.median(colds[name]):.1f} |")


if __name__ == "__main__":
    main()
