"""Set-level work beyond one machine: ``torchrun --nproc_per_node N`` shards a set across ranks.

DESIGN.md's "beyond one machine, use the engines that exist": feature extraction
(:func:`engine.imagesets.set_features`) and Network Dissection (:func:`engine.dissection.dissect`,
Bau et al. 2017, the lecture's "Quantify Interpretability of Units") split the images of a set into
contiguous blocks of whole batches, one block per rank, and merge the per-rank pieces *exactly*:

* per-image rows (features, predictions) -- :func:`gather_rows`: an all_gather back into index
  order;
* each unit's largest activations, for its top-quantile threshold -- :func:`merge_largest`: the
  global largest ``keep`` values are the largest ``keep`` of the ranks' own largest ``keep``;
* the IoU tally -- :func:`all_sum`: whole pixel counts held in float64, so the sum is exact in any
  order;
* the top-k images per unit -- :func:`merge_top`: sorted by (value descending, index ascending),
  the same stable tie-break a single process applies batch by batch.

Shards are whole batches of the single-process run (:func:`shard_range`), so every image runs
through the model in the same batch as it would alone, and its activations are bit for bit the
same. Rank 0 writes caches; every rank returns the same result.

Nothing here is active unless ``torch.distributed`` is initialised with a world size above 1;
:func:`init_from_env` does that from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...).
"""

from __future__ import annotations

import os

import numpy as np
import torch


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    if not torch.distributed.is_available():
        return False
    dist = _dist()
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_lead() -> bool:
    """Rank 0 (or the only process): the one that writes caches and prints."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; True when distributed.

    gloo on the CPU (``GLASSBOX_DEVICE=cpu`` or no CUDA), nccl with CUDA. Call it before any set
    work, e.g. at the start of the CLI's ``main`` (engine/patterns/cli.py does the same for training).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    dist = _dist()
    if not dist.is_initialized():
        if backend is None:
            wants_cpu = os.environ.get("GLASSBOX_DEVICE", "").strip().lower() == "cpu"
            backend = "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"
        if backend == "nccl" and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    return active()


def shutdown() -> None:
    """Leave the process group, if one is initialised."""
    if torch.distributed.is_available() and _dist().is_initialized():
        _dist().destroy_process_group()


def shard_range(count: int, batch_size: int, *, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This rank's images ``start:stop``: a contiguous block of whole batches of the single-process
    run (batch b covers ``b * batch_size`` onwards), the batches shared out as evenly as they go."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    batches = -(-count // batch_size)
    first, last = batches * rank_ // world, batches * (rank_ + 1) // world
    return min(first * batch_size, count), min(last * batch_size, count)


def _device() -> torch.device:
    """Where collective tensors must live: the GPU for nccl, else the CPU."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """all_gather of tensors that may differ in their first dimension (padded, then trimmed)."""
    dist = _dist()
    device = _device()
    length = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    lengths = [int(n.item()) for n in lengths]
    longest = max(lengths)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[:tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return [part[:n].cpu() for part, n in zip(parts, lengths)]


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's rows (its shard of the set, in order), concatenated in rank order: the whole
    set in index order on every rank. A no-op outside torchrun."""
    if not active():
        return rows
    tensor = torch.from_numpy(np.ascontiguousarray(rows))
    return torch.cat(_gather(tensor)).numpy()


def all_sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks, in float64 (whole counts below 2**53 add up exactly)."""
    if not active():
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(_device())
    _dist().all_reduce(tensor)
    return tensor.cpu().numpy().reshape(values.shape)


def all_agree(flag: bool) -> bool:
    """True on every rank only if ``flag`` is true on every rank (e.g. "the result is cached here"),
    so that all ranks take the same path through the collectives."""
    if not active():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device())
    _dist().all_reduce(tensor, op=_dist().ReduceOp.MIN)
    return bool(tensor.item())


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (timings, names: small picklable things)."""
    if not active():
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        _dist().barrier()


def merge_largest(values: torch.Tensor | None, channels: int, keep: int) -> torch.Tensor:
    """Each unit's ``keep`` largest values over all ranks, largest first, from each rank's own
    largest (``values``: (channels, m <= keep), or None for a rank with no images). Exact: any of
    the global top ``keep`` is among its own rank's top ``keep``."""
    values = torch.zeros((channels, 0)) if values is None else values
    if not active():
        return values
    parts = _gather(values.t().contiguous())  # rows = columns, so ranks may hold different counts
    merged = torch.cat([part.t() for part in parts], 1)
    return merged.topk(min(keep, merged.shape[1]), dim=1).values


def merge_top(values: torch.Tensor | None, indices: torch.Tensor | None, channels: int,
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` (value, image index) pairs per unit over all ranks, ordered by value
    descending then index ascending, as :class:`engine.dissection.TopImages` orders one process's."""
    if values is None:
        values, indices = torch.zeros((channels, 0)), torch.zeros((channels, 0), dtype=torch.int64)
    if not active():
        return values, indices
    all_values = torch.cat([part.t() for part in _gather(values.t().contiguous())], 1)
    all_indices = torch.cat([part.t() for part in _gather(indices.t().contiguous().to(torch.int64))], 1)
    by_index = all_indices.argsort(dim=1, stable=True)
    all_values, all_indices = all_values.gather(1, by_index), all_indices.gather(1, by_index)
    order = all_values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return all_values.gather(1, order), all_indices.gather(1, order)
