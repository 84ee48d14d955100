"""Files and names, each written once: atomic writes, the cache root, manifests, fuzzy name lookup.

Every file Glassbox writes that someone else may read while it is being written (a checkpoint, a
shard, a cached result, a run's sidecar) goes through :func:`atomic_path`: the data lands in a
temporary file beside the target and is moved into place with ``os.replace``, so a reader sees the
whole old file or the whole new one, never half of either.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

MANIFEST_VERSION = 1
E = TypeVar("E", bound=Exception)


def cache_root() -> Path:
    """Where Glassbox keeps generated data: ``$GLASSBOX_CACHE``, else ``~/.cache/glassbox``."""
    configured = os.environ.get("GLASSBOX_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "glassbox"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    >>> with atomic_path(target) as temporary:
    ...     torch.save(state, temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o644)  # mkstemp makes it private (0600); a result file is an ordinary file
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return write_text_atomic(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, paths and tuples as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """A result's manifest: what ran, on what, with which settings. The page's JSON download and
    the CLI's ``manifest.json`` are this same dict, so the two never drift apart."""
    return {"glassbox": kind, "manifest_version": MANIFEST_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **fields}


def manifest_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, default=_json_default)


def find_name(wanted: str, names: Sequence[str], *, what: str, error: Callable[[str], E],
              prefix: bool = False, substring: bool = False) -> int:
    """The index of ``wanted`` in ``names``: exact, then case-insensitive, then (if asked) a unique
    prefix or substring; otherwise ``error(sentence)`` is raised, naming close matches.

    ``what`` is the thing's name in the sentence ("class", "concept", "layer").
    """
    names = list(names)
    if wanted in names:
        return names.index(wanted)
    folded = [name.lower() for name in names]
    key = str(wanted).strip().lower()
    if key in folded:
        return folded.index(key)
    for allowed, test in ((prefix, str.startswith), (substring, lambda name, k: k in name)):
        if not allowed or not key:
            continue
        hits = [i for i, name in enumerate(folded) if test(name, key)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            shown = ", ".join(names[i] for i in hits[:5])
            plural = f"{what}es" if what.endswith("s") else f"{what}s"
            raise error(f"The name '{wanted}' matches several {plural} ({shown}, ...); please give more of it.")
    close = difflib.get_close_matches(key, folded, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(names[folded.index(c)] for c in close)}?" if close else ""
    raise error(f"There is no {what} called '{wanted}'.{hint}")
