"""Many users at once: N real browser sessions click through Classify, Grad-CAM and a relabel.

    python bench/bench_load.py [--users 10] [--rounds 3] [--baseline-rounds 10] [--max-seconds 900] [--markdown]

One ``streamlit run`` on 127.0.0.1 (tests/browser.py's ``streamlit_server``, the bundled
efficientnet_lite0 on the CPU, as the README starts it) and one headless chromium. Each user is its
own browser context (own cookies, own tab, so its own Streamlit session). A round of one user is:

* **classify**: open ``/classify?image=S`` (a link a teacher shares) and wait for the Top-5 chart;
* **gradcam**: open ``/saliency?image=S&methods=gradcam&class=C`` and wait for the Grad-CAM map;
* **relabel**: open ``/relabel?image=S&target=C&steps=K`` (not timed), press **Run**, and wait for
  the result (the page polls its job every 0.8 s, so that granularity is part of the figure).

The same actions are timed first with one user alone, then with N users who all start at once,
in the same run against the same warm server, so the ratio N-users/1-user compares load, not
machines. Each user explains and relabels towards its own class (C differs per user and round):
pages find jobs by key, so identical settings in two sessions would share one job and one cached
map, and a class of students each picking a class is the case worth measuring. ``--same-work``
gives every user the same image and class instead (the teacher's "everybody open this link"),
where jobs and maps are shared. The prediction behind Classify is cached per image for every
session (``st.cache_data``), so Classify measures the page, not a forward pass, after its first
visit to an image.

Errors are counted, never hidden: an exception or ``st.error`` box on the page, a Playwright
timeout, a browser console error or an uncaught page error, or a run that never came back
before ``--max-seconds``. The server's resident memory (the server process and any children,
VmRSS from /proc) is sampled every 0.25 s during the run. Everything stays on localhost.
The browsers run on the same machine as the server, so on 2 cores the N-user figures include
the browsers' own rendering work; they bound what a server alone would see from above.

Timings are never test assertions; ``tests/test_load_soak.py`` runs a short version (3 users,
one round) and asserts only that every action completed without an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, streamlit_server  # noqa: E402

ACTIONS = ("classify", "gradcam", "relabel")
SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "brick", "grass", "gravel")
RELABEL_STEPS = 50  # a cap on the steps of each relabel: a bundled photo needs about 5 (docs/benchmarks.md)
RESULT_TEXT = {"classify": None, "gradcam": "Grad-CAM · ", "relabel": "difference × 10, around mid-grey"}


def target_class(k: int) -> int:
    """The k-th distinct class to explain and relabel towards: 0..279 are animals, none of them the
    top-1 class of any bundled photo (so the Relabel page never says "already that class"); 3 is
    coprime to 280, so k < 280 gives distinct classes."""
    return (1 + 3 * k) % 280


# ---------------------------------------------------------------------------------------------
# The server's memory, from /proc


def children_of(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError), open(f"/proc/{current}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        todo += children_of(current)
    return total


def server_pid(url: str) -> int:
    """The ``streamlit run`` this process started for ``url`` (``streamlit_server`` yields only the URL)."""
    port = url.rsplit(":", 1)[-1]
    for child in children_of(os.getpid()):
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
            if b"streamlit" in b" ".join(args) and port.encode() in args:
                return child
    raise RuntimeError(f"no streamlit child of this process listens on port {port}")


class RssSampler:
    """Samples the server's RSS in a thread; ``mark(name)`` tags the samples that follow."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, str, int]] = []
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.phase, rss_bytes(self.pid)))
            self._stop.wait(self.every_s)

    def mark(self, phase: str) -> None:
        self.samples.append((time.monotonic(), self.phase, rss_bytes(self.pid)))
        self.phase = phase

    def peak(self, phase: str | None = None) -> int:
        values = [rss for _, tag, rss in self.samples if phase is None or tag == phase]
        return max(values, default=0)

    def last(self, phase: str) -> int:
        values = [rss for _, tag, rss in self.samples if tag == phase]
        return values[-1] if values else 0


# ---------------------------------------------------------------------------------------------
# One user


@dataclass
class Timing:
    phase: str
    user: int
    round: int
    action: str
    seconds: float | None
    error: str | None = None


@dataclass
class Step:
    round: int
    sample: str
    cls: int


@dataclass
class Outcome:
    users: int
    timings: list[Timing] = field(default_factory=list)
    planned: int = 0
    relabelled: int = 0  # relabel results that reached the target (the rest hit the step cap: not an error)
    benign: dict[str, int] = field(default_factory=dict)  # noted, not errors: console noise that is not the app's, form settling

    @property
    def errors(self) -> list[Timing]:
        return [t for t in self.timings if t.error]

    def seconds(self, action: str) -> list[float]:
        return [t.seconds for t in self.timings if t.action == action and t.error is None]

    @property
    def completed(self) -> int:
        return sum(1 for t in self.timings if t.error is None)


OFF_HOST = re.compile(r"^(?!http://127\.0\.0\.1[:/])")
PROBE_404 = re.compile(r"^http://127\.0\.0\.1:\d+/[^/?]+/_stcore/(health|host-config)$")


def benign_console_error(base: str, text: str, source: str) -> str | None:
    """Console errors that are not the app's: named (and counted in the report), or None for a real one.

    * Off-host requests, which the context aborts (a ``:material/...`` page icon is fetched from
      fonts.gstatic.com; the app now ships its favicon, so none are expected).
    * Streamlit's own probe of ``/<page>/_stcore/health`` and ``host-config`` on a deep link: the
      frontend first tries the page's path as the base URL, gets a 404, and falls back to the root.
    """
    if text.startswith("Failed to load resource") and source and OFF_HOST.match(source):
        return f"off-host request aborted ({source[:80]})"
    if "404" in text and PROBE_404.match(source):
        return "Streamlit's deep-link probe of /<page>/_stcore/health|host-config (404, then the root)"
    return None


IDLE_JS = ("() => { const w = document.querySelector('[data-testid=\"stStatusWidget\"]');"
           " return !w || !w.innerText.includes('Running'); }")


async def wait_idle(page) -> None:
    await page.wait_for_function(IDLE_JS)


async def page_problems(page) -> str | None:
    """An exception, a traceback or an error box on the page, as text (None when there is none)."""
    for selector in ('[data-testid="stException"]', '[data-testid="stAlertContentError"]'):
        boxes = page.locator(selector)
        if await boxes.count():
            return f"{selector}: {(await boxes.first.inner_text())[:200]!r}"
    if await page.get_by_text("Traceback").count():
        return "Traceback on the page"
    return None


async def do_classify(page, url: str, step: Step, outcome: Outcome) -> float:
    start = time.perf_counter()
    await page.goto(f"{url}/classify?image={step.sample}")
    await page.locator(".js-plotly-plot").first.wait_for(state="visible")
    return time.perf_counter() - start


async def do_gradcam(page, url: str, step: Step, outcome: Outcome) -> float:
    start = time.perf_counter()
    await page.goto(f"{url}/saliency?image={step.sample}&methods=gradcam&class={step.cls}")
    await page.get_by_text(RESULT_TEXT["gradcam"]).first.wait_for(state="visible")
    return time.perf_counter() - start


DEFAULT_CAP = 0.01  # the Relabel page's default distortion cap, as its form shows it
FORM_JS = ("([cap, steps]) => { const v = Array.from(document.querySelectorAll('input[type=\"number\"]'), e => e.value);"
           " return v[0] === cap && v[1] === steps; }")
FORM_NOTE = "relabel form first showed other values than the link's (cap/steps); waited until it showed them"


async def do_relabel(page, url: str, step: Step, outcome: Outcome) -> float:
    await page.goto(f"{url}/relabel?image={step.sample}&target={step.cls}&steps={RELABEL_STEPS}")
    await page.get_by_text("Turn this image into a:").first.wait_for(state="visible")
    if await page.get_by_text("The model already calls this image").count():
        raise RuntimeError(f"class {step.cls} is already the top class of {step.sample}")
    await page.get_by_text("Press Run to start").first.wait_for(state="visible")  # the page's last line: drawn
    await wait_idle(page)
    # Seen under load: the form's number inputs first show their minimum (cap 0.001) and settle on the
    # link's values a moment later; a click in between submits the minimum. A person reads the form
    # before pressing Run, so wait for the link's values (counted in the report, never clicked through).
    expected = [f"{DEFAULT_CAP:.3f}", str(RELABEL_STEPS)]
    if not await page.evaluate(FORM_JS, expected):
        outcome.benign[FORM_NOTE] = outcome.benign.get(FORM_NOTE, 0) + 1
        try:
            await page.wait_for_function(FORM_JS, arg=expected, timeout=30_000)
        except Exception:
            raise RuntimeError("the relabel form never showed the link's cap and step limit") from None
    start = time.perf_counter()
    await page.get_by_role("button", name="Run", exact=True).click()
    # A lost click would otherwise wait out the whole timeout: the job row (or the result) must show soon.
    try:
        await page.locator(f'button:has-text("Cancel"), :text("{RESULT_TEXT["relabel"]}")').first.wait_for(
            state="visible", timeout=60_000)
    except Exception:
        raise RuntimeError("Run was pressed but no job row or result showed within 60 s") from None
    await page.get_by_text(RESULT_TEXT["relabel"]).first.wait_for(state="visible")
    return time.perf_counter() - start


DO = {"classify": do_classify, "gradcam": do_gradcam, "relabel": do_relabel}


async def user_session(browser, url: str, phase: str, user: int, steps: list[Step], outcome: Outcome,
                       action_timeout_s: float) -> None:
    """One user: its own context and tab, every step's three actions in order, each one timed and checked."""
    context = await browser.new_context(viewport={"width": 1400, "height": 950})
    page = await context.new_page()
    page.set_default_timeout(action_timeout_s * 1000)
    await context.route(OFF_HOST, lambda route: route.abort())  # everything stays on localhost
    console: list[str] = []

    def on_console(message) -> None:
        if message.type != "error":
            return
        benign = benign_console_error(url, message.text, message.location.get("url", ""))
        if benign:
            outcome.benign[benign] = outcome.benign.get(benign, 0) + 1
        else:
            console.append(f"console {message.type}: {message.text[:200]} ({message.location.get('url', '')[:120]})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.append(f"page error: {str(error)[:200]}"))
    try:
        for step in steps:
            for action in ACTIONS:
                seen = len(console)
                seconds, error = None, None
                try:
                    seconds = await DO[action](page, url, step, outcome)
                    await wait_idle(page)
                    error = await page_problems(page)
                    if action == "relabel" and await page.get_by_text("Relabelled to").count():
                        outcome.relabelled += 1
                except asyncio.CancelledError:
                    raise
                except Exception as failure:  # a Playwright timeout, a closed page: counted, not fatal
                    error = f"{type(failure).__name__}: {str(failure).splitlines()[0][:200]}"
                    with contextlib.suppress(Exception):  # what the user saw, for a person to look at
                        SHOTS.mkdir(parents=True, exist_ok=True)
                        await page.screenshot(path=str(SHOTS / f"load-{phase.replace(' ', '')}-u{user}-r{step.round}-{action}.png"))
                if len(console) > seen and error is None:
                    error = "; ".join(console[seen:])
                outcome.timings.append(Timing(phase, user, step.round, action, seconds, error))
    finally:
        with contextlib.suppress(Exception):
            await context.close()


async def run_phase(browser, url: str, phase: str, users: int, rounds: int, first_class: int, *,
                    same_work: bool, action_timeout_s: float, deadline: float) -> Outcome:
    """``users`` sessions at once, ``rounds`` rounds each; stops (cancelling) at ``deadline``."""
    outcome = Outcome(users, planned=users * rounds * len(ACTIONS))

    def plan(user: int) -> list[Step]:
        steps = []
        for r in range(rounds):
            who = 0 if same_work else user
            steps.append(Step(r, SAMPLES[(who + r) % len(SAMPLES)], target_class(first_class + r * users + who)))
        return steps

    tasks = [asyncio.ensure_future(user_session(browser, url, phase, u, plan(u), outcome, action_timeout_s))
             for u in range(users)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(1.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        pass  # the missing actions are reported as not completed
    return outcome


async def load_test(url: str, *, users: int, rounds: int, baseline_rounds: int, max_seconds: float,
                    same_work: bool = False, action_timeout_s: float = 180.0,
                    sampler: RssSampler | None = None) -> dict[str, Outcome]:
    """Warm-up (one user, one round, not reported), then 1 user, then ``users`` users at once."""
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + max_seconds
    results: dict[str, Outcome] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            classes = 0
            for phase, n, r in (("warm-up", 1, 1), ("1 user", 1, baseline_rounds), (f"{users} users", users, rounds)):
                if sampler is not None:
                    sampler.mark(phase)
                results[phase] = await run_phase(browser, url, phase, n, r, classes, same_work=same_work,
                                                 action_timeout_s=action_timeout_s, deadline=deadline)
                classes += n * r
            if sampler is not None:
                sampler.mark("end")
        finally:
            with contextlib.suppress(Exception):
                await browser.close()
    return results


# ---------------------------------------------------------------------------------------------
# Report


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report_rows(results: dict[str, Outcome]) -> list[dict]:
    one, many = list(results.values())[1:3]
    rows = []
    for action in ACTIONS:
        a, b = one.seconds(action), many.seconds(action)
        rows.append({"action": action, "n1": len(a), "p50_1": percentile(a, 50), "p95_1": percentile(a, 95),
                     "nN": len(b), "p50_N": percentile(b, 50), "p95_N": percentile(b, 95),
                     "ratio50": percentile(b, 50) / percentile(a, 50) if a and b else float("nan"),
                     "ratio95": percentile(b, 95) / percentile(a, 95) if a and b else float("nan")})
    return rows


def summary(results: dict[str, Outcome], sampler: RssSampler, users: int, same_work: bool, markdown: bool) -> str:
    mib = 1 << 20
    one, many = list(results.values())[1:3]
    lines = []
    rows = report_rows(results)
    if markdown:
        lines += [f"| action | 1 user p50 / p95 (s) | {users} users p50 / p95 (s) | ratio p50 / p95 |",
                  "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['action']} | {r['p50_1']:.2f} / {r['p95_1']:.2f} (n={r['n1']}) | "
                         f"{r['p50_N']:.2f} / {r['p95_N']:.2f} (n={r['nN']}) | x{r['ratio50']:.1f} / x{r['ratio95']:.1f} |")
    else:
        lines.append(f"{'action':<9} {'1 user p50':>10} {'p95':>6} {'n':>3}   {users:>2} users p50 {'p95':>6} {'n':>3}   ratio p50  p95")
        for r in rows:
            lines.append(f"{r['action']:<9} {r['p50_1']:>10.2f} {r['p95_1']:>6.2f} {r['n1']:>3}   {r['p50_N']:>12.2f} "
                         f"{r['p95_N']:>6.2f} {r['nN']:>3}   x{r['ratio50']:>7.1f} x{r['ratio95']:.1f}")
    lines.append("")
    for phase, outcome in results.items():
        lines.append(f"- {phase}: {outcome.completed} of {outcome.planned} actions completed, "
                     f"{len(outcome.errors)} errors, relabels that reached their class: {outcome.relabelled}")
        for error in outcome.errors[:5]:
            lines.append(f"    user {error.user} round {error.round} {error.action}: {error.error}")
        for kind, count in outcome.benign.items():
            lines.append(f"    noted, not counted as errors: {count} x {kind}")
    lines.append(f"- server RSS (process + children, VmRSS): after warm-up {sampler.last('warm-up') / mib:.0f} MiB, "
                 f"peak with 1 user {sampler.peak('1 user') / mib:.0f} MiB, peak with {users} users "
                 f"{sampler.peak(f'{users} users') / mib:.0f} MiB, at the end {sampler.last('end') / mib:.0f} MiB")
    lines.append("- work: " + ("every user the same image and class per round (jobs and maps shared by key)" if same_work
                               else "each user its own class per round (no two sessions share a job or a cached map)"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per user with N users")
    parser.add_argument("--baseline-rounds", type=int, default=10, help="rounds of the single user")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the browser part")
    parser.add_argument("--action-timeout", type=float, default=180.0, help="seconds before one action counts as an error")
    parser.add_argument("--same-work", action="store_true", help="every user the same image and class")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.users * args.rounds + args.baseline_rounds + 1 > 280:
        parser.error("at most 279 distinct classes: lower --users, --rounds or --baseline-rounds")
    started = datetime.now(timezone.utc)
    print(f"# bench_load {started:%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} CPUs · "
          f"load average {os.getloadavg()[0]:.2f} · OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"# {args.users} users x {args.rounds} rounds, 1 user x {args.baseline_rounds} rounds, relabel steps <= "
          f"{RELABEL_STEPS}, bound {args.max_seconds:.0f} s", flush=True)
    wall = time.monotonic()
    # A fresh cache folder: the job journal of an earlier run would make this run's keys "lost when
    # the server restarted" (the same classes are chosen every run), as a new class starts clean.
    scratch = tempfile.mkdtemp(prefix="glassbox-load-")
    os.environ["GLASSBOX_CACHE"] = scratch
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        url = cleanup.enter_context(streamlit_server())
        with RssSampler(server_pid(url)) as sampler:
            results = asyncio.run(load_test(url, users=args.users, rounds=args.rounds,
                                            baseline_rounds=args.baseline_rounds, max_seconds=args.max_seconds,
                                            same_work=args.same_work, action_timeout_s=args.action_timeout,
                                            sampler=sampler))
    print(summary(results, sampler, args.users, args.same_work, args.markdown))
    print(f"- wall {time.monotonic() - wall:.0f} s including the server's start and stop; "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    failures = sum(len(o.errors) + o.planned - len(o.timings) for o in results.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
