"""What a run leaves behind: the per-step loss log, the snapshots, the manifest. The page's
downloads and the CLI's files are these same bytes."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np

from .. import io
from ..images import to_png_bytes
from ..models import ModelHandle
from .loop import InversionResult

PAPERS = {"inversion": "Anosheh, Kapadia & Rulison, Image Transformation via Neural Network Inversion",
          "feature-inversion": "Mahendran & Vedaldi, Understanding Deep Image Representations by Inverting Them"}


def loss_log_rows(result: InversionResult) -> list[dict]:
    """One row per recorded step: total, each weighted term, target probability and top-1."""
    rows = []
    for i in range(len(result.total)):
        row = {"step": i, "total": float(result.total[i])}
        row.update({name: float(values[i]) for name, values in result.terms.items()})
        row.update({f"raw_{name}": float(values[i]) for name, values in result.raw_terms.items()})
        row.update({"target_prob": float(result.target_prob[i]), "top1": int(result.top1[i])})
        rows.append(row)
    return rows


def loss_log_csv(result: InversionResult) -> str:
    """The per-step record as CSV text (the download and the CLI's loss log)."""
    rows = loss_log_rows(result)
    columns = list(rows[0]) if rows else ["step"]
    lines = [",".join(columns)]
    lines += [",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def snapshot_name(stem: str, step: int) -> str:
    return f"{stem}_step{step:04d}.png"


def snapshots_zip(result: InversionResult, stem: str) -> bytes:
    """Every kept snapshot as a PNG, in one ZIP (the page's download)."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for step, pixels in result.snapshots:
            archive.writestr(snapshot_name(stem, step), to_png_bytes(pixels))
    return buffer.getvalue()


def manifest(result: InversionResult, handle: ModelHandle, *, image_name: str, preset: str | None = None,
             mask_pixels: int | None = None) -> dict:
    """What was run and what came out, for the JSON download and the CLI (one :func:`engine.io.manifest`)."""
    top = np.argsort(result.final_probs)[::-1][:5]
    name = (lambda i: None if i is None else {"id": int(i), "name": handle.class_names[int(i)]})
    kind = "inversion" if result.target is not None else "feature-inversion"
    return io.manifest(
        kind, paper=PAPERS[kind], image=image_name, model=handle.name, preset=preset, target=name(result.target),
        original_top1=name(result.original_class), final_top1=name(result.final_class),
        final_target_prob=None if result.target is None else float(result.final_probs[result.target]),
        final_top5=[{**name(i), "prob": float(result.final_probs[i])} for i in top],
        outcome=result.outcome, message=result.message, steps=result.steps,
        forward_backward_passes=result.evaluations, mask_pixels=mask_pixels,
        snapshot_steps=[step for step, _ in result.snapshots], config=result.config,
        weights_note="weights are in this app's units (LossWeights.from_paper converts the paper's Caffe numbers)")


def write_run(result: InversionResult, record: dict, out: str | Path, stem: str) -> Path:
    """The CLI's files in ``out``: the final PNG, each snapshot, the loss log and the manifest
    (each written atomically). Returns the final PNG's path."""
    out = Path(out)
    final = io.write_bytes_atomic(out / f"{stem}.png", to_png_bytes(result.image))
    for step, pixels in result.snapshots:
        io.write_bytes_atomic(out / snapshot_name(stem, step), to_png_bytes(pixels))
    io.write_text_atomic(out / f"{stem}_losses.csv", loss_log_csv(result))
    io.write_text_atomic(out / f"{stem}_manifest.json", io.manifest_json(record) + "\n")
    return final
