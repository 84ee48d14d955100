"""Soak: hundreds of real page interactions in one process; does its memory settle?

    python bench/bench_soak.py [--interactions 500] [--baseline-after 50] [--model efficientnet_lite0]

One AppTest session (the router, as a browser opens a link) cycles through the pages' own actions:
pick another sample image in the sidebar, move Classify's top-k slider, look up another class,
open Saliency, switch the method (Grad-CAM, Grad-CAM++, gradients, guided Grad-CAM), explain
another class, open Relabel, pick a target and press Run (a job, waited for, then the page's
rerun that shows its result), and back to Classify. Each widget change or click plus the rerun it
causes is one interaction; every interaction must leave no exception and no error box on the page.

What is sampled: this process's VmRSS from /proc/self/status, after ``gc.collect()``, once after
the first ``--baseline-after`` interactions and once after all of them (and every 25 in between
for the curve). AppTest runs the app in this process, so that is the app's memory: caches
(``st.cache_data`` / ``cache_resource``, bounded by entries), the job registry (keeps the last 32
finished jobs), the model, and whatever a page would leak. The classes explained and relabelled
towards change on every cycle, so the caches fill up to their bounds: a growth that stops within
10 % of the baseline is the claim ``tests/test_load_soak.py`` checks.

Importing the engine sets glibc's arena count to 1 (``mallopt(M_ARENA_MAX, 1)``, as the README
starts the server with ``MALLOC_ARENA_MAX=1``; docs/benchmarks.md, issue 11): without it the RSS
of a threaded process also measures how many malloc arenas its threads happened to touch.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLASSBOX_DEVICE", "cpu")

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "brick", "grass", "gravel")
METHODS = ("gradcam", "gradcampp", "gradient", "guided")


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def data_cache_bytes() -> dict[str, int]:
    """The pickled bytes held by each ``st.cache_data`` function (Streamlit's own cache stats):
    the part of the growth that is caches filling up to their ``max_entries``."""
    from streamlit.runtime.caching import cache_data_api

    sizes: dict[str, int] = {}
    for family in cache_data_api.get_data_cache_stats_provider().get_stats().values():
        for stat in family:
            name = stat.cache_name.rsplit(".", 1)[-1]
            sizes[name] = sizes.get(name, 0) + stat.byte_length
    return sizes


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


@dataclass
class SoakResult:
    interactions: int
    baseline_after: int
    rss_baseline: int = 0
    rss_final: int = 0
    curve: list[tuple[int, int]] = field(default_factory=list)  # (interactions done, RSS bytes)
    actions: dict[str, int] = field(default_factory=dict)
    cache_baseline: dict[str, int] = field(default_factory=dict)  # st.cache_data bytes by function
    cache_final: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def growth(self) -> float:
        return self.rss_final / self.rss_baseline - 1


class Soak:
    """One AppTest session and the cycle of interactions it walks through."""

    def __init__(self, model: str, relabel_steps: int) -> None:
        from tests.apptest import open_page

        self.model, self.relabel_steps = model, relabel_steps
        self.at = open_page("app_pages/classify.py", model=model)
        self.cycle = 0
        self.steps: list[tuple[str, Callable[[], None]]] = [
            ("sample", self.next_sample), ("top-k", self.top_k), ("look up a class", self.look_up),
            ("open Saliency", self.open("saliency")), ("saliency method", self.method),
            ("explain a class", self.explain_class), ("open Relabel", self.open("relabel")),
            ("relabel target", self.relabel_target), ("relabel Run", self.relabel_run),
            ("open Classify", self.open("classify")),
        ]

    # Each step changes one thing and reruns, as one click of a user does.
    def next_sample(self) -> None:
        self.at.selectbox(key="sample").set_value(SAMPLES[self.cycle % len(SAMPLES)]).run()

    def top_k(self) -> None:
        self.at.slider(key="top_k").set_value(3 + self.cycle % 18).run()

    def class_key(self, name: str) -> str:
        return f"_class_{name}_{self.model}"

    def look_up(self) -> None:
        self.at.selectbox(key=self.class_key("class")).set_value((7 * self.cycle) % 1000).run()

    def open(self, page: str) -> Callable[[], None]:
        def switch() -> None:
            self.at.switch_page(f"app_pages/{page}.py").run()
        return switch

    def method(self) -> None:
        self.at.multiselect(key="sal_methods").set_value([METHODS[self.cycle % len(METHODS)]]).run()

    def explain_class(self) -> None:
        self.at.selectbox(key=self.class_key("class")).set_value((13 * self.cycle + 1) % 280).run()

    def relabel_target(self) -> None:
        self.at.selectbox(key=self.class_key("target")).set_value((3 * self.cycle + 1) % 280).run()
        self.at.number_input(key="rl_steps").set_value(self.relabel_steps)

    def relabel_run(self) -> None:
        from tests.apptest import wait_for_jobs

        run = [button for button in self.at.button if button.label == "Run"]
        if not run:  # the target is the image's own class: the page says so and offers no job
            self.at.run()
            return
        run[0].click().run()
        wait_for_jobs()
        self.at.run()  # the rerun the polling fragment asks for when the job ends

    def check(self, what: str) -> None:
        if self.at.exception:
            raise AssertionError(f"{what}: {self.at.exception[0].value}")
        if self.at.error:
            raise AssertionError(f"{what}: error on the page: {self.at.error[0].value}")

    def step(self, index: int) -> str:
        name, action = self.steps[index % len(self.steps)]
        if index and index % len(self.steps) == 0:
            self.cycle += 1
        action()
        self.check(f"interaction {index + 1} ({name})")
        return name


def soak(interactions: int = 500, *, baseline_after: int = 50, model: str = "efficientnet_lite0",
         relabel_steps: int = 20, every: int = 25, progress: Callable[[str], None] | None = None) -> SoakResult:
    """Run ``interactions`` interactions in this process; RSS after ``baseline_after`` and after all."""
    if not 0 < baseline_after < interactions:
        raise ValueError("baseline_after must be between 0 and the number of interactions")
    result = SoakResult(interactions, baseline_after)
    start = time.perf_counter()
    session = Soak(model, relabel_steps)
    for index in range(interactions):
        name = session.step(index)
        result.actions[name] = result.actions.get(name, 0) + 1
        done = index + 1
        if done == baseline_after or done == interactions or done % every == 0:
            rss = settled_rss()
            result.curve.append((done, rss))
            if done == baseline_after:
                result.rss_baseline, result.cache_baseline = rss, data_cache_bytes()
            if progress is not None:
                progress(f"{done:>4} interactions  RSS {rss / 2**20:7.1f} MiB  {time.perf_counter() - start:6.1f} s")
    result.rss_final, result.cache_final = result.curve[-1][1], data_cache_bytes()
    result.seconds = time.perf_counter() - start
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, default=500)
    parser.add_argument("--baseline-after", type=int, default=50)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--relabel-steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the result here (tests/test_load_soak.py reads it)")
    args = parser.parse_args()
    if "GLASSBOX_CACHE" not in os.environ:  # job journal entries and caches of this run go to a scratch folder
        scratch = tempfile.mkdtemp(prefix="glassbox-soak-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        os.environ["GLASSBOX_CACHE"] = scratch
    print(f"# bench_soak {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC · {os.cpu_count()} CPUs · load average "
          f"{os.getloadavg()[0]:.2f} · OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} · {args.model}",
          flush=True)
    result = soak(args.interactions, baseline_after=args.baseline_after, model=args.model,
                  relabel_steps=args.relabel_steps, progress=lambda line: print(line, flush=True))
    mib = 2 ** 20
    print(f"- RSS after {result.baseline_after}: {result.rss_baseline / mib:.1f} MiB; after {result.interactions}: "
          f"{result.rss_final / mib:.1f} MiB; growth {100 * result.growth:+.1f} % (bound +10 %)")
    before, after = sum(result.cache_baseline.values()), sum(result.cache_final.values())
    grown = sorted(result.cache_final, key=lambda n: result.cache_baseline.get(n, 0) - result.cache_final[n])[:4]
    print(f"- st.cache_data (pickled bytes) after {result.baseline_after}: {before / mib:.1f} MiB; after "
          f"{result.interactions}: {after / mib:.1f} MiB (+{(after - before) / mib:.1f} MiB; most: "
          + ", ".join(f"{n} +{(result.cache_final[n] - result.cache_baseline.get(n, 0)) / mib:.1f}" for n in grown) + ")")
    print(f"- {result.interactions} interactions in {result.seconds:.0f} s "
          f"({1000 * result.seconds / result.interactions:.0f} ms each): "
          + ", ".join(f"{name} {count}" for name, count in result.actions.items()))
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "growth": result.growth}))
    return 0 if abs(result.growth) <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
