"""Mind's Eye renderer benchmark: samples/s of ``engine.minds_eye.render.render`` against Blender Cycles.

    python bench/bench_minds_eye_render.py [--batch 256] [--rounds 5] [--threads N] [--markdown]

Random objects and angles (seeded), CPU, torch's default threads unless ``--threads``; the best of
``--rounds`` calls at each supersampling factor (1 and 2; 2 is the default the data set uses). For
comparison, Cycles' time per 64x64 frame (8 samples, CPU) is measured with ``tools/minds_eye_meshes.py``
when the Blender venv ``/tmp/bpyenv`` exists (its reference renders, written to a temporary folder),
else the documented 0.17 s/frame is used. Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BPY_PYTHON = Path("/tmp/bpyenv/bin/python")
DOCUMENTED_CYCLES_S = 0.17


def time_render(batch: int, supersample: int, rounds: int) -> float:
    import torch

    from engine.minds_eye import render

    g = torch.Generator().manual_seed(0)
    objects = torch.randint(0, len(render.OBJECTS), (batch,), generator=g)
    angles = (torch.rand(batch, 3, generator=g) - 0.5) * (2 * render.ANGLE_LIMIT)
    render.render(objects[:8], angles[:8], supersample=supersample)  # meshes loaded, allocator warm
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        render.render(objects, angles, supersample=supersample)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def time_cycles() -> tuple[float, str]:
    if not BPY_PYTHON.exists():
        return DOCUMENTED_CYCLES_S, "documented"
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([str(BPY_PYTHON), str(ROOT / "tools" / "minds_eye_meshes.py"), "--out", tmp],
                             capture_output=True, text=True, check=True).stdout
    match = re.search(r"median ([0-9.]+) s/frame", out)
    return float(match.group(1)), "measured, median of 9 frames in one Blender process"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rates = {ss: time_render(args.batch, ss, args.rounds) for ss in (1, 2)}
    cycles_s, how = time_cycles()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load {load:.2f}, batch {args.batch}, best of {args.rounds}")
    for ss, rate in rates.items():
        print(f"render supersample={ss}: {rate:.0f} samples/s ({1000 / rate:.2f} ms/sample)")
    print(f"Blender Cycles: {cycles_s:.3f} s/frame ({how}); "
          f"ours at supersample 2 is x{cycles_s * rates[2]:.0f} faster")
    if args.markdown:
        print("| renderer | batch | threads | ss=1 samples/s | ss=2 samples/s | Cycles s/frame | speed-up (ss=2) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| minds_eye.render | {args.batch} | {torch.get_num_threads()} | {rates[1]:.0f} | {rates[2]:.0f} "
              f"| {cycles_s:.3f} ({how.split(',')[0]}) | x{cycles_s * rates[2]:.0f} |")


if __name__ == "__main__":
    main()
