"""The shipped weights (``assets/minds_eye/weights``) and the networks built from them.

Weights ship as float16 state dicts (half the size in git) and are loaded as float32; the error
rates in the README are measured with exactly these files. A folder given instead (``--weights DIR``
on the CLI) may hold training checkpoints (``<net>.ckpt``) from ``python -m engine minds-eye train``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import torch

from ..errors import ModelError
from . import nets

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "minds_eye"
WEIGHTS_DIR = ASSETS / "weights"
FILES = ("direct", "direct-params", "direct-adv", "estimator", "projector", "comparator")
CONTENDERS = ("direct", "direct_params", "direct_adv", "triple")  # the JSON keys of the CLI
CONTENDER_LABELS = {"direct": "Direct classification", "direct_params": "Direct + parameter estimation",
                    "direct_adv": "Direct, adversarially trained (PGD)", "triple": "Triple-staged"}


def how_to_train(net: str) -> str:
    return (f"train it with `python -m engine minds-eye train --net {net} --out runs/minds_eye` "
            f"(or `--net triple` for the three stages)")


def default_folder() -> str | None:
    """``$GLASSBOX_MINDS_EYE_WEIGHTS`` (a training folder) when set, else None: the shipped weights."""
    return os.environ.get("GLASSBOX_MINDS_EYE_WEIGHTS") or None


def weight_file(net: str, folder: str | Path | None = None) -> Path | None:
    """The file ``net``'s weights come from: in ``folder`` (or ``$GLASSBOX_MINDS_EYE_WEIGHTS``) a training
    checkpoint ``<net>.ckpt`` or an export ``<net>.pt``, else the shipped ``<net>.pt``; None if missing."""
    folder = folder or default_folder()
    candidates = [Path(folder) / f"{net}.ckpt", Path(folder) / f"{net}.pt"] if folder else [WEIGHTS_DIR / f"{net}.pt"]
    return next((path for path in candidates if path.is_file()), None)


def load_state(net: str, folder: str | Path | None = None) -> dict:
    """A float32 state dict for ``net`` from ``folder`` (a checkpoint or an export) or the shipped weights."""
    path = weight_file(net, folder)
    if path is None:
        raise ModelError(f"No weights for the '{net}' network in {folder or default_folder() or WEIGHTS_DIR}: "
                         f"{how_to_train(net)}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    return {key: value.float() for key, value in state.items()}


def export(folder: str | Path, dest: str | Path = WEIGHTS_DIR, names=FILES) -> list[Path]:
    """Write float16 copies of the checkpoints in ``folder`` to ``dest`` (what ships in assets/)."""
    from .. import io

    written = []
    for net in names:
        state = load_state(net, folder)
        buffer = BytesIO()  # saved through a buffer: torch names the archive after the file, and the
        torch.save({key: value.half() for key, value in state.items()}, buffer)  # temporary name is random
        written.append(io.write_bytes_atomic(Path(dest) / f"{net}.pt", buffer.getvalue()))
    return written


def _net(net: str, folder) -> torch.nn.Module:
    from .train import build

    model = build(net)
    model.load_state_dict(load_state(net, folder))
    return model.eval().requires_grad_(False)


def contenders(folder: str | None = None) -> dict[str, torch.nn.Module]:
    """The four contenders, ready for inference: three direct nets and the triple-staged one.

    ``folder`` None means ``$GLASSBOX_MINDS_EYE_WEIGHTS`` if set, else the shipped weights; read per
    call, so a changed variable is seen (the networks themselves are cached per folder).
    """
    return _contenders(str(folder or default_folder() or WEIGHTS_DIR))


@lru_cache(maxsize=4)
def _contenders(folder: str) -> dict[str, torch.nn.Module]:
    return {
        "direct": _net("direct", folder),
        "direct_params": _net("direct-params", folder),
        "direct_adv": _net("direct-adv", folder),
        "triple": nets.TripleStaged(_net("estimator", folder), _net("projector", folder),
                                    _net("comparator", folder)).eval(),
    }


def forget() -> None:
    """Drop the cached networks (after the weight files changed on disk)."""
    _contenders.cache_clear()
