"""200 class inversions through the job controller in one fresh process; prints RSS figures as JSON.

Run by tests/test_jobs.py in a subprocess, so the baseline is this process's alone (the test
session holds many models). Each run keeps per-step records with a snapshot image at every step,
as the Class inversion page does, under its own key (another target), like 200 users' runs.
"""

import json
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from engine import classify, images, inversion, jobs, models  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main(runs: int, steps: int) -> None:
    handle = models.load_model("efficientnet_lite0")
    x = classify.image_tensor(handle, images.load_sample("chelsea"))
    registry = jobs.registry()
    config = dict(optimizer="adam", steps=steps, snapshots=tuple(range(steps + 1)), require_change=False)
    rss, record_bytes = {}, 0
    for run in range(runs):
        target = 100 + run  # another class each time: another job key
        status = registry.find_or_start(f"soak|{target}", inversion.invert, handle, x, target,
                                        inversion.InversionConfig(**config), title=f"run {run}", records=True)
        done = registry.wait(status.id, timeout=120)
        assert done.done, done.error
        record_bytes += sum(r["image"].nbytes for r in done.records if isinstance(r.get("image"), np.ndarray))
        if run + 1 in (20, runs):
            rss[run + 1] = rss_bytes()
    print(json.dumps({"rss_after_20": rss[20], "rss_after_all": rss[runs], "record_bytes_total": record_bytes,
                      "jobs_remembered": len(registry.list()), "keep_finished": registry.keep_finished}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
