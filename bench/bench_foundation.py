"""Foundation benchmark: the floors that every later page is measured against.

    python bench/bench_foundation.py [--quick] [--markdown] [--models a,b] [--sections s,t]
                                     [--tuned-malloc]

The floor for a method is (passes it truly needs) x (time of one pass), so this script measures
one pass of each kind, per model, on the CPU with torch's default thread count:

* ``fwd b1``   -- one forward of a single image under ``torch.inference_mode`` (median of >= 20).
* ``b32``      -- forward of a batch of 32 (images/s and ms per image): the floor of batched
                  methods (occlusion, RISE, dissection). Uses glibc's allocator as the app does
                  today, or 1 GiB mmap/trim thresholds with ``--tuned-malloc``.
* ``head-only``-- ``hooks.layer_gradient``: forward with autograd + backward from the class score
                  down to the CAM layer only (Grad-CAM's pass).
* ``full``     -- ``hooks.input_gradient``: forward + backward all the way to the image (saliency,
                  attacks, inversion).
* ``classify`` -- ``decode_image`` of the chelsea sample + ``classify_image``: the whole pipeline.

Read the ratios as multiples of ``fwd b1`` measured in the same process: ``head-only x1.3``
means a Grad-CAM pass costs 1.3 forwards; ``classify x1.2`` means decoding, cropping and
tensor conversion add 20 % to the forward. A later page reports its own time as a multiple of
these floors. Load times come from fresh subprocesses (no warm caches in the process; the OS
page cache is warm). The cold start spawns ``streamlit run`` and times until headless chromium
shows the Top-5 chart of the ``/classify`` deep link. The allocator section times lite0 at
batch 4 and 32 under several glibc malloc settings (environment variables, or ``mallopt`` via
ctypes before or after ``import torch``), in the main thread and in a worker thread (Streamlit
runs every page script in a thread). Each model and each allocator setting runs in its own
subprocess, so one measurement never inherits another's heap.

Seed-paper nets (alexnet, googlenet, vgg16, resnet50) have no weights offline: they run with
random weights, for timing only. Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # engine/ and tests/ import from the repo root; torch is imported lazily

BUNDLED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RANDOM_WEIGHTS = ("alexnet", "googlenet", "vgg16", "resnet50")
SECTIONS = ("load", "forward", "coldstart", "allocator")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h>
GIB, MIB = 1 << 30, 1 << 20


# ----------------------------------------------------------------------------- measuring helpers

def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_medians(passes: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each pass, timed in rounds (one of each per round), so that a burst of load
    from another process hits every pass alike and the ratios stay fair."""
    times = {key: [] for key in passes}
    for round_index in range(warmup + repeats):
        for key, fn in passes.items():
            start = time.perf_counter()
            fn()
            if round_index >= warmup:
                times[key].append(time.perf_counter() - start)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def open_handle(name: str):
    """The bundled model with its real weights, or a torchvision net with random weights."""
    import torch
    from engine import models

    if name in models.LITE_SIZES or name == models.TEST_MODEL:
        return models.load_model(name, device="cpu")
    torch.manual_seed(0)
    net = models.build_architecture(name)
    return models.make_handle(models.torchvision_spec(name), net, models.imagenet_classes(), torch.device("cpu"))


def tune_malloc(threshold: int, arena_max: int | None = None) -> bool:
    """mallopt via ctypes: keep freed blocks up to ``threshold`` in the heap; True if glibc accepted all."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    codes = [libc.mallopt(M_MMAP_THRESHOLD, threshold), libc.mallopt(M_TRIM_THRESHOLD, threshold)]
    if arena_max:
        codes.append(libc.mallopt(M_ARENA_MAX, arena_max))
    return all(code == 1 for code in codes)


# ----------------------------------------------------------------------------- subprocess workers

def worker_load(name: str) -> dict:
    start = time.perf_counter()
    import torch  # noqa: F401  (timed: part of what a cold start pays)
    from engine import models  # noqa: F401
    imported = time.perf_counter()
    open_handle(name)
    return {"import_s": imported - start, "load_s": time.perf_counter() - imported}


def worker_model(name: str, repeats: int, batch_repeats: int, tuned_malloc: bool) -> dict:
    if tuned_malloc:
        tune_malloc(GIB)
    import torch
    from engine import classify, hooks, images

    handle = open_handle(name)
    size = handle.input_size
    x1 = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    result = {"size": size, "threads": torch.get_num_threads(), "torch": torch.__version__}

    def forward():
        with torch.inference_mode():
            handle.logits(x1)

    passes = {"fwd_ms": forward, "head_ms": lambda: hooks.layer_gradient(handle, x1),
              "full_ms": lambda: hooks.input_gradient(handle, x1)}
    if name in BUNDLED:
        data = images.sample_bytes("chelsea")
        passes["decode_ms"] = lambda: images.decode_image(data)
        passes["classify_ms"] = lambda: classify.classify_image(handle, images.decode_image(data), top_k=5)
    result.update(interleaved_medians(passes, repeats))
    x32 = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # last: a batch of 32 leaves the allocator in a different state
        result["b32_ms"] = median_ms(lambda: handle.logits(x32), batch_repeats, warmup=1)
    return result


def worker_allocator(mallopt: str | None, arena_max: int | None, thread: str, repeats: int) -> dict:
    """lite0 ms/image at batch 4 and 32, page faults per image and peak RSS, under one malloc setting.

    ``thread``: "main"; "worker" (load and run in one threading.Thread; the main thread never runs
    torch, as in Streamlit); "worker, main pool" (the model is loaded in the main thread, so its
    OpenMP pool stays alive while the worker runs); "worker, old arena" (another thread malloc'ed
    and exited before any mallopt, as Streamlit's earlier script runs have: its arena waits on
    glibc's free list and the worker inherits it).
    """
    if thread == "worker, old arena":
        earlier = threading.Thread(target=lambda: [bytes(1000) for _ in range(1000)])  # > pymalloc's 512 B
        earlier.start()
        earlier.join()
    accepted = tune_malloc(GIB, arena_max) if mallopt == "before" else None
    import torch
    if mallopt == "after":
        accepted = tune_malloc(GIB, arena_max)
    result = {"accepted": accepted}
    handles = [open_handle("efficientnet_lite0")] if thread == "worker, main pool" else []

    def load_and_measure():
        handle = handles[0] if handles else open_handle("efficientnet_lite0")
        for batch in (4, 32):
            x = torch.rand(batch, 3, 224, 224)
            with torch.inference_mode():
                handle.logits(x)  # warm-up: first touch of the memory is not counted
                count = repeats * (32 // batch) if batch == 4 else repeats
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                ms = median_ms(lambda: handle.logits(x), count, warmup=0)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            result[f"b{batch}_ms_per_image"] = ms / batch
            result[f"b{batch}_faults_per_image"] = faults / (count * batch)

    if thread == "main":
        load_and_measure()
    else:
        runner = threading.Thread(target=load_and_measure)
        runner.start()
        runner.join()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


WORKERS = {"load": worker_load, "model": worker_model, "allocator": worker_allocator}


def in_subprocess(task: str, env: dict | None = None, **kwargs) -> tuple[dict, float]:
    """Run a worker in a fresh interpreter; return its JSON result and the subprocess wall time."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"task": task, **kwargs})]
    start = time.perf_counter()
    # The engine tunes malloc when imported; the bench decides the allocator itself, so opt out.
    env = {**(os.environ if env is None else env), "GLASSBOX_KEEP_MALLOC": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"worker {task} {kwargs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


# ----------------------------------------------------------------------------- sections

def section_load(names, runs):
    rows = []
    for name in names:
        samples = [in_subprocess("load", name=name) for _ in range(runs)]
        load = statistics.median(s["load_s"] for s, _ in samples)
        imports = statistics.median(s["import_s"] for s, _ in samples)
        wall = statistics.median(w for _, w in samples)
        rows.append([name, weights_label(name), f"{load:.2f}", f"{imports:.2f}", f"{wall:.2f}"])
    return ("Model load, cold (fresh subprocess; median of %d)" % runs,
            ["model", "weights", "load_model s", "import torch+engine s", "subprocess wall s"], rows,
            ["load_model: the call alone. Wall: interpreter start + imports + load + exit.",
             "Random-weight nets: build_architecture + make_handle (no weights file is read)."])


def section_forward(names, repeats, batch_repeats, tuned_malloc):
    floors, backward, pipeline, meta = [], [], [], {}
    for name in names:
        r, _ = in_subprocess("model", name=name, repeats=repeats, batch_repeats=batch_repeats,
                             tuned_malloc=tuned_malloc)
        meta = r
        fwd, per_image = r["fwd_ms"], r["b32_ms"] / 32
        floors.append([name, weights_label(name), str(r["size"]), f"{fwd:.1f}",
                       f"{1000 / per_image:.1f}", f"{per_image:.1f}", f"{per_image / fwd:.2f}"])
        backward.append([name, f"{fwd:.1f}", f"{r['head_ms']:.1f}", f"x{r['head_ms'] / fwd:.2f}",
                         f"{r['full_ms']:.1f}", f"x{r['full_ms'] / fwd:.2f}"])
        if "classify_ms" in r:
            pipeline.append([name, f"{r['decode_ms']:.1f}", f"{r['classify_ms']:.1f}", f"{fwd:.1f}",
                             f"x{r['classify_ms'] / fwd:.2f}", f"x{(r['classify_ms'] - r['decode_ms']) / fwd:.2f}"])
    malloc_note = ("malloc tuned: mallopt(M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 1 GiB) before importing torch."
                   if tuned_malloc else "glibc's default allocator, as the app runs today (see the allocator section).")
    note = f"torch {meta.get('torch')}, {meta.get('threads')} threads, CPU; medians of {repeats} interleaved rounds (b32: {batch_repeats})."
    return [
        ("Forward floors", ["model", "weights", "px", "fwd b1 ms", "b32 img/s", "b32 ms/img", "b32 per img / b1"],
         floors, [note, malloc_note]),
        ("Backward floors at batch 1 (multiples of fwd b1)",
         ["model", "fwd b1 ms", "head-only ms", "head/fwd", "full ms", "full/fwd"], backward,
         ["head-only = hooks.layer_gradient (backward stops at the CAM layer); "
          "full = hooks.input_gradient (backward to the image)."]),
        ("Classify end to end (decode chelsea + classify_image, top-5)",
         ["model", "decode ms", "end-to-end ms", "fwd b1 ms", "end-to-end/fwd", "minus decode/fwd"], pipeline,
         ["end-to-end/fwd is the pipeline overhead over one forward; minus decode/fwd leaves out the decode "
          "(pages cache decoded images), keeping crop, resize, tensor conversion and top-k."]),
    ]


def section_coldstart(runs):
    from tests.browser import chromium_page, streamlit_server

    rows, totals = [], []
    for run in range(1, runs + 1):
        with chromium_page() as page:  # a fresh browser each run, opened before the clock starts
            start = time.perf_counter()
            with streamlit_server() as url:
                healthy = time.perf_counter()
                page.goto(f"{url}/classify")
                page.locator(".js-plotly-plot", has_text="Top-5 classes").first.wait_for(
                    state="visible", timeout=180_000)
                shown = time.perf_counter()
        totals.append(shown - start)
        rows.append([str(run), f"{healthy - start:.1f}", f"{shown - healthy:.1f}", f"{shown - start:.1f}"])
    rows.append(["median", "", "", f"{statistics.median(totals):.1f}"])
    return ("Cold start: spawn `streamlit run` until /classify shows the Top-5 chart (headless chromium)",
            ["run", "spawn -> healthy s", "healthy -> chart s", "total s"], rows,
            ["healthy = /_stcore/health answers; the chart time includes the first model load and inference."])


ALLOCATOR_VARIANTS = (  # label, environment, mallopt (None | before | after torch import), M_ARENA_MAX
    ("default (glibc dynamic thresholds)", {}, None, None),
    ("env MMAP/TRIM_THRESHOLD_=256 MiB", {"MALLOC_MMAP_THRESHOLD_": str(256 * MIB), "MALLOC_TRIM_THRESHOLD_": str(256 * MIB)}, None, None),
    ("env MMAP/TRIM_THRESHOLD_=1 GiB", {"MALLOC_MMAP_THRESHOLD_": str(GIB), "MALLOC_TRIM_THRESHOLD_": str(GIB)}, None, None),
    ("env 1 GiB + MALLOC_ARENA_MAX=1", {"MALLOC_MMAP_THRESHOLD_": str(GIB), "MALLOC_TRIM_THRESHOLD_": str(GIB), "MALLOC_ARENA_MAX": "1"}, None, None),
    ("mallopt 1 GiB before import torch", {}, "before", None),
    ("mallopt 1 GiB after import torch", {}, "after", None),
    ("mallopt 1 GiB + M_ARENA_MAX=1 after import", {}, "after", 1),
)


def section_allocator(quick):
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    quick_set = ("default", "env MMAP/TRIM_THRESHOLD_=1", "mallopt 1 GiB after")
    plan = [("main", v) for v in ALLOCATOR_VARIANTS if not quick or v[0].startswith(quick_set)]
    if not quick:
        plan += [("worker", v) for v in ALLOCATOR_VARIANTS]
        default, env_arena, mallopt_arena = ALLOCATOR_VARIANTS[0], ALLOCATOR_VARIANTS[3], ALLOCATOR_VARIANTS[-1]
        plan += [("worker, old arena", v) for v in (default, env_arena, mallopt_arena)]
        plan += [("worker, main pool", v) for v in (default, mallopt_arena)]
    rows, baselines = [], {}
    for thread, (label, env, mallopt, arena_max) in plan:
        r, _ = in_subprocess("allocator", env={**clean_env, **env}, mallopt=mallopt, arena_max=arena_max,
                             thread=thread, repeats=4 if quick else 8)
        baseline = baselines.setdefault(thread, r["b32_ms_per_image"])
        rows.append([label, thread, f"{r['b4_ms_per_image']:.1f}", f"{r['b32_ms_per_image']:.1f}",
                     f"{r['b32_ms_per_image'] / r['b4_ms_per_image']:.2f}", f"x{baseline / r['b32_ms_per_image']:.2f}",
                     f"{r['b32_faults_per_image']:.0f}", f"{r['peak_rss_mib']:.0f}",
                     {None: "-", True: "yes", False: "NO"}[r["accepted"]]])
    return ("glibc allocator: efficientnet_lite0, ms per image at batch 4 and 32 (one subprocess per row)",
            ["setting", "thread", "b4 ms/img", "b32 ms/img", "b32/b4", "b32 speed-up", "b32 faults/img",
             "peak RSS MiB", "mallopt ok"], rows,
            ["speed-up: against the default row of the same thread kind. faults: minor page faults per image "
             "at b32 (memory handed back to the OS and touched again).",
             "main: everything in the main thread. worker: load + runs in one threading.Thread, as Streamlit "
             "runs page scripts. old arena: a thread that malloc'ed and exited before the mallopt call left "
             "an arena for the worker to reuse (Streamlit's earlier script runs do). main pool: the model was "
             "loaded (a forward ran) in the main thread first, so its OpenMP threads exist too."])


# ----------------------------------------------------------------------------- output

def weights_label(name: str) -> str:
    return "real (bundled)" if name in BUNDLED else "random, timing only"


def render(table, markdown: bool) -> str:
    title, headers, rows, notes = table
    if markdown:
        lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"_{note}_  " for note in notes]) + "\n"
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def fmt(row):  # first column left-aligned, numbers right-aligned
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(headers))
    return "\n".join([title, rule, fmt(headers), rule, *map(fmt, rows), rule, *("  " + n for n in notes)]) + "\n"


def quick_markdown_args(doc: str, argv=None) -> argparse.Namespace:
    """The --quick / --markdown flags every issue's bench takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args(argv)


def chelsea_on_lite0():
    """The bundled default model on the CPU and the chelsea photo as its input tensor."""
    from engine import classify, images, models

    handle = models.load_model("efficientnet_lite0", device="cpu")
    return handle, classify.image_tensor(handle, images.load_sample("chelsea"))


def machine_description() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown CPU")
    mem_kib = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
    return f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1024 ** 2:.1f} GiB RAM, no GPU"


def header(argv) -> list[str]:
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or "none"
    return [f"Glassbox foundation benchmark -- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine_description()}; torch {version('torch')}, torchvision {version('torchvision')}",
            f"command: python bench/bench_foundation.py {' '.join(argv)}".rstrip(),
            f"MALLOC_* env: {malloc}; load average at start: {os.getloadavg()[0]:.2f}"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="lite0 + resnet50, fewer repeats, 1 cold start")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--models", help="comma-separated model names (default: bundled + seed-paper nets)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="forward section: mallopt 1 GiB mmap/trim thresholds in each model subprocess")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("task")](**spec)))
        return
    names = args.models.split(",") if args.models else (
        ["efficientnet_lite0", "resnet50"] if args.quick else [*BUNDLED, *RANDOM_WEIGHTS])
    sections = args.sections.split(",")

    def out(table):
        print(render(table, args.markdown), flush=True)

    lines = header(argv)
    print("\n".join(("- " + l if args.markdown else l) for l in lines) + "\n", flush=True)
    if "load" in sections:
        out(section_load(names, 1 if args.quick else 3))
    if "forward" in sections:
        for table in section_forward(names, 20, 3 if args.quick else 5, args.tuned_malloc):
            out(table)
    if "coldstart" in sections:
        out(section_coldstart(1 if args.quick else 3))
    if "allocator" in sections:
        out(section_allocator(args.quick))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (includes this benchmark's own 2 threads)", flush=True)


if __name__ == "__main__":
    main()
