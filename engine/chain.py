"""The image chain: every image a page hands to the sidebar ("Use as the image"), kept by content hash
with a manifest that says where it came from.

A result image (relabelled, inverted, patterned, UAP-perturbed, a Mind's Eye adversarial) can become
every page's current image. So that a reload or a shared link still opens it, the encoded bytes are
stored under ``cache_root()/images`` by their sha256 (:func:`engine.images.image_digest`), and the
link names ``h-`` plus the first 16 hex characters (:func:`url_token`). Each stored image has a
:class:`Derivation` manifest: its name, the image it was made from (``parent``, a digest), the page,
operation, settings and model that made it. Following the parents gives the chain (:func:`lineage`),
which travels as one ZIP (:func:`export_zip`) and loads back byte for byte (:func:`import_zip`).

Layout: ``<digest>.bin`` (the encoded file, unchanged) and ``<digest>.json`` (the manifest), both
written atomically (bytes first, so a manifest always finds its bytes).

The store is bounded: after a write, when the files take more than :data:`MAX_STORE_BYTES`, the least
recently used entries (stored or loaded longest ago) are removed until it fits again, but never one
that another kept entry names as its parent, and never the chain just written. A chain therefore
shrinks from its newest end, and every kept entry's lineage is complete.
"""

from __future__ import annotations

import collections
import datetime as _dt
import heapq
import io
import json
import os
import re
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import ChainError, ImageError
from .images import MAX_BYTES, decode_image, image_digest
from .io import _json_default, cache_root, write_bytes_atomic, write_text_atomic

MAX_STORE_BYTES = int(float(os.environ.get("GLASSBOX_IMAGE_STORE_MB", "512")) * 1024 * 1024)
MAX_LINKS = 200  # images in one chain (export and import), far beyond any real use
MAX_ZIP_BYTES = 200 * 1024 * 1024
MAX_ZIP_UNPACKED = 2 * MAX_ZIP_BYTES  # what the members may unpack to, all together (ZIP bombs)
MAX_ZIP_MEMBERS = 2 * MAX_LINKS + 1  # an image and a manifest per link, and chain.json
INDEX_NAME = "chain.json"
MANIFEST_KIND, CHAIN_KIND, MANIFEST_VERSION = "image", "image-chain", 1

_HEX = re.compile(r"[0-9a-f]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"h-([0-9a-f]{8,64})")
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
               "TIFF": "tif"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same chain always gives the same ZIP bytes
_lock = threading.RLock()  # one writer per process; other processes are safe through atomic writes
_last_touch_ns = 0


@dataclass(frozen=True)
class Derivation:
    """The manifest of one stored image: what it is called and how it was made.

    ``parent`` is the digest of the image it was made from (None for a root: a sample, an upload);
    ``page``, ``operation``, ``settings`` and ``model`` say what made it; ``created`` is UTC ISO time.
    ``parent_name`` is the parent's name as the maker saw it: the store keeps one name per bytes (the
    first it saw), which may be another session's name for the same photo.
    """

    digest: str
    name: str
    parent: str | None
    page: str | None
    operation: str | None
    settings: dict
    model: str | None
    created: str
    parent_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the store

def store_dir() -> Path:
    return cache_root() / "images"


def store(data: bytes, *, name: str, parent: str | None = None, page: str | None = None,
          operation: str | None = None, settings: dict | None = None, model: str | None = None,
          parent_name: str | None = None) -> Derivation:
    """Keep ``data`` (an encoded image) by its digest and return its manifest.

    The bytes must decode as an upload would (:func:`engine.images.decode_image`, which also refuses
    more than ``images.MAX_BYTES``), else :class:`~engine.errors.ImageError`. ``parent`` must be stored
    already (else :class:`ChainError`), so a kept entry's lineage is always complete; a parent equal to
    the image itself, or one that would close a cycle, is dropped.

    Storing the same bytes again keeps the FIRST manifest (its name, time and origin), unless the
    first one is a root and the new one adds a parent: then the new manifest replaces it, because
    knowing where an image came from is worth more than its first name.
    """
    data = bytes(data)
    decode_image(data)
    digest = image_digest(data)
    derivation = Derivation(digest, _clean_name(name), parent, _optional_text(page), _optional_text(operation),
                            _plain_settings(settings), _optional_text(model), _now(),
                            _clean_name(parent_name) if parent and parent_name else None)
    with _lock:
        if parent is not None:
            if not isinstance(parent, str) or not _DIGEST.fullmatch(parent) or not _manifest_path(parent).exists():
                raise ChainError("The image this one was made from is not stored any more, so its origin cannot "
                                 "be recorded; use the original image again and repeat the step.")
            if parent == digest or digest in {link.digest for link in lineage(parent)}:
                derivation = Derivation(**{**derivation.as_dict(), "parent": None, "parent_name": None})
        kept = _put(derivation, data)
        _evict(protect={link.digest for link in lineage(digest)})
    return kept


def find(prefix: str) -> Derivation | None:
    """The manifest whose digest starts with ``prefix`` (hex), or None when none does.

    A prefix that several stored digests share raises :class:`ChainError` (give more of it).
    """
    key = str(prefix or "").strip().lower()
    if not _HEX.fullmatch(key):
        return None
    directory = store_dir()
    if len(key) == 64:
        return _read_manifest(_manifest_path(key))
    hits = sorted(path for path in directory.glob(f"{key}*.json") if _DIGEST.fullmatch(path.stem))
    if len(hits) > 1:
        raise ChainError(f"The hash {key} matches {len(hits)} stored images; give more of it.")
    return _read_manifest(hits[0]) if hits else None


def load(digest_or_prefix: str) -> tuple[Derivation, bytes]:
    """The manifest and the encoded bytes of a stored image; :class:`ChainError` when it is unknown
    (never stored here, or removed to make room) or its file was damaged."""
    derivation = find(digest_or_prefix)
    missing = ChainError(f"No image with the hash {str(digest_or_prefix)[:16]} is stored on this server: it may "
                         "have been removed to make room, or the link comes from another server.")
    if derivation is None:
        raise missing
    try:
        data = _bytes_path(derivation.digest).read_bytes()
    except FileNotFoundError:
        raise missing from None
    if image_digest(data) != derivation.digest:
        raise ChainError(f"The stored image {derivation.name!r} is damaged (its bytes no longer match its hash).")
    _touch(derivation.digest)
    return derivation, data


def lineage(digest: str) -> list[Derivation]:
    """The chain that ends at ``digest``, root first (empty when it is not stored).

    Cycle-safe: a manifest seen twice ends the walk (store() never writes a cycle, but a damaged or
    hand-edited store must not hang a page)."""
    links: list[Derivation] = []
    seen: set[str] = set()
    try:
        current = find(digest)
    except ChainError:
        return []
    while current is not None and current.digest not in seen:
        links.append(current)
        seen.add(current.digest)
        current = _read_manifest(_manifest_path(current.parent)) if current.parent else None
    return links[::-1]


def url_token(digest: str) -> str:
    """What a link's ``image=`` holds for a stored image: ``h-`` and 16 hex characters (64 bits)."""
    return "h-" + str(digest)[:16]


def digest_from_token(token: str) -> str | None:
    """The full digest a link's ``h-...`` token names, or None (not a token, or not stored here)."""
    matched = _TOKEN.fullmatch(str(token or "").strip().lower())
    if not matched:
        return None
    try:
        derivation = find(matched.group(1))
    except ChainError:
        return None
    return derivation.digest if derivation is not None else None


# --------------------------------------------------------------------------- the chain as one ZIP

def export_zip(digest: str) -> bytes:
    """One ZIP with the whole chain that ends at ``digest``: each image as it was stored (``0-chelsea.png``,
    ``1-relabel-half-track.png``, ...), its manifest beside it (same stem, ``.json``) and ``chain.json``,
    the index (root first). The same chain always gives the same bytes."""
    links = lineage(digest)
    if not links:
        load(digest)  # raises the sentence for an unknown hash
    if len(links) > MAX_LINKS:
        raise ChainError(f"This chain has {len(links)} images; a chain ZIP holds at most {MAX_LINKS}.")
    buffer = io.BytesIO()
    index: dict[str, Any] = {"glassbox": CHAIN_KIND, "manifest_version": MANIFEST_VERSION,
                             "leaf": links[-1].digest, "links": []}
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, link in enumerate(links):
            _, data = load(link.digest)
            stem = f"{number}-{_slug(link.name)}"
            image_name, manifest_name = f"{stem}.{_extension(data)}", f"{stem}.json"
            _write_member(archive, image_name, data, zipfile.ZIP_STORED)  # already compressed
            _write_member(archive, manifest_name, _manifest_text(link).encode("utf-8"), zipfile.ZIP_DEFLATED)
            index["links"].append({"image": image_name, "manifest": manifest_name, "digest": link.digest})
        _write_member(archive, INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode("utf-8"),
                      zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def import_zip(data: bytes) -> Derivation:
    """Store every image of a chain ZIP (from :func:`export_zip`) and return the leaf's manifest.

    Refused with one sentence (:class:`ChainError`): not a ZIP, too large, too many files or too much
    unpacked (ZIP bombs), no ``chain.json`` (a ZIP that is not a chain), an image whose bytes do not
    match its manifest's digest, an image that does not decode, or parents that do not form one chain
    from a root. Nothing is stored unless the whole ZIP is valid. An image already stored keeps its
    manifest as :func:`store` says.
    """
    data = bytes(data)
    if len(data) > MAX_ZIP_BYTES:
        raise ChainError(f"This ZIP is {len(data) / 2**20:.0f} MB; a chain ZIP may be at most "
                         f"{MAX_ZIP_BYTES >> 20} MB.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [member for member in archive.infolist() if not member.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ChainError("This file is not a ZIP archive Glassbox can open; a chain ZIP comes from "
                         "\"Download the chain (ZIP)\".") from error
    with archive:
        if len(members) > MAX_ZIP_MEMBERS:
            raise ChainError(f"This ZIP holds {len(members)} files; a chain ZIP holds at most {MAX_ZIP_MEMBERS}.")
        if sum(member.file_size for member in members) > MAX_ZIP_UNPACKED:
            raise ChainError(f"This ZIP unpacks to more than {MAX_ZIP_UNPACKED >> 20} MB; a chain ZIP is far smaller.")
        by_name = {member.filename: member for member in members}
        if INDEX_NAME not in by_name:
            raise ChainError("This ZIP is not a Glassbox image chain (it has no chain.json); to use a picture, "
                             "upload the picture itself.")
        index = _json_member(archive, by_name, INDEX_NAME)
        entries = index.get("links") if isinstance(index, dict) else None
        if not isinstance(index, dict) or index.get("glassbox") != CHAIN_KIND or not isinstance(entries, list) \
                or not entries or not all(isinstance(entry, dict) for entry in entries):
            raise ChainError("This ZIP's chain.json is not a Glassbox image chain index.")
        if len(entries) > MAX_LINKS:
            raise ChainError(f"This chain has {len(entries)} images; a chain ZIP holds at most {MAX_LINKS}.")
        links: list[tuple[Derivation, bytes]] = []
        for number, entry in enumerate(entries):
            image_name, manifest_name = entry.get("image"), entry.get("manifest")
            derivation = _derivation_from(_json_member(archive, by_name, manifest_name), manifest_name)
            raw = _member_bytes(archive, by_name, image_name, MAX_BYTES)
            if image_digest(raw) != derivation.digest:
                raise ChainError(f"In this chain ZIP, {image_name} does not match the hash in its manifest: the "
                                 "file was changed after the chain was exported.")
            try:
                decode_image(raw)
            except ImageError as error:
                raise ChainError(f"In this chain ZIP, {image_name}: {error}") from error
            expected = links[-1][0].digest if links else None
            if derivation.parent != expected:
                where = "a root" if expected is None else f"made from {links[-1][0].name!r}"
                raise ChainError(f"In this chain ZIP, {manifest_name} should be {where} but names another image "
                                 "as its origin, so the chain is broken.")
            links.append((derivation, raw))
        if index.get("leaf", links[-1][0].digest) != links[-1][0].digest:
            raise ChainError("This ZIP's chain.json names a last image that is not the end of its chain.")
    with _lock:
        for derivation, raw in links:
            _put(derivation, raw)
        leaf = links[-1][0].digest
        _evict(protect={link.digest for link in lineage(leaf)})
        return find(leaf) or links[-1][0]


# --------------------------------------------------------------------------- helpers

def _manifest_path(digest: str) -> Path:
    return store_dir() / f"{digest}.json"


def _bytes_path(digest: str) -> Path:
    return store_dir() / f"{digest}.bin"


def _manifest_text(derivation: Derivation) -> str:
    record = {"glassbox": MANIFEST_KIND, "manifest_version": MANIFEST_VERSION, **derivation.as_dict()}
    return json.dumps(record, indent=2, default=_json_default) + "\n"


def _read_manifest(path: Path) -> Derivation | None:
    try:
        return _derivation_from(json.loads(path.read_text(encoding="utf-8")), path.name)
    except (OSError, ValueError, ChainError):  # missing (evicted meanwhile) or damaged: not stored
        return None


def _derivation_from(record: Any, where: str) -> Derivation:
    """A manifest read from disk or a ZIP, checked field by field (a ZIP may come from anyone)."""
    bad = ChainError(f"{where} is not a Glassbox image manifest.")
    if not isinstance(record, dict) or record.get("glassbox") != MANIFEST_KIND:
        raise bad
    fields = [name for name in Derivation.__dataclass_fields__ if name != "parent_name"]
    try:
        values = {name: record[name] for name in fields}
    except KeyError:
        raise bad from None
    values["parent_name"] = record.get("parent_name")  # absent from the first manifests
    optional = ("parent", "page", "operation", "model", "parent_name")
    if not (isinstance(values["digest"], str) and _DIGEST.fullmatch(values["digest"])
            and isinstance(values["name"], str) and isinstance(values["created"], str)
            and isinstance(values["settings"], dict)
            and all(values[name] is None or isinstance(values[name], str) for name in optional)
            and (values["parent"] is None or _DIGEST.fullmatch(values["parent"]))):
        raise bad
    return Derivation(**values)


def _put(derivation: Derivation, data: bytes) -> Derivation:
    """Write one entry under the first-manifest rule of :func:`store`; the kept manifest."""
    existing = _read_manifest(_manifest_path(derivation.digest))
    if existing is not None and _bytes_path(derivation.digest).exists() \
            and (existing.parent is not None or derivation.parent is None):
        _touch(derivation.digest)
        return existing
    write_bytes_atomic(_bytes_path(derivation.digest), data)  # bytes first: a manifest always finds them
    write_text_atomic(_manifest_path(derivation.digest), _manifest_text(derivation))
    _touch(derivation.digest)
    return derivation


def _touch(digest: str) -> None:
    """Mark an entry as just used (the eviction order is least recently used first). The time is
    set explicitly, in nanoseconds and increasing within the process, because a file system's own
    clock ticks too coarsely to order writes made within a few milliseconds."""
    global _last_touch_ns
    with _lock:
        _last_touch_ns = max(time.time_ns(), _last_touch_ns + 1)
        stamp = _last_touch_ns
    try:
        os.utime(_bytes_path(digest), ns=(stamp, stamp))
    except OSError:
        pass


def _evict(*, protect: set[str]) -> None:
    """Remove least recently used entries until the store fits :data:`MAX_STORE_BYTES`, never an
    entry another kept entry names as its parent, nor one in ``protect``."""
    # One directory pass for sizes and use times (this runs after every write); the manifests are
    # read only when the store is over budget.
    files: dict[str, os.stat_result] = {}
    try:
        with os.scandir(store_dir()) as listing:
            for item in listing:
                try:
                    files[item.name] = item.stat()
                except OSError:  # removed meanwhile (another process evicting)
                    continue
    except FileNotFoundError:
        return
    stats: dict[str, tuple[int, int]] = {}
    for name, manifest in files.items():
        digest, _, kind = name.partition(".")
        data = files.get(f"{digest}.bin")
        if kind == "json" and data is not None and _DIGEST.fullmatch(digest):
            stats[digest] = (data.st_size + manifest.st_size, data.st_mtime_ns)
    total = sum(size for size, _ in stats.values())
    if total <= MAX_STORE_BYTES:
        return
    entries: dict[str, tuple[int, int, str | None]] = {}
    for digest, (size, used) in stats.items():
        derivation = _read_manifest(_manifest_path(digest))
        entries[digest] = (size, used, derivation.parent if derivation else None)
    children = collections.Counter(parent for _, _, parent in entries.values() if parent in entries)
    # Candidates (no kept child, not protected) by last use; a parent joins once its last child went.
    candidates = [(used, digest) for digest, (_, used, _) in entries.items()
                  if not children[digest] and digest not in protect]
    heapq.heapify(candidates)
    while total > MAX_STORE_BYTES and candidates:
        _, victim = heapq.heappop(candidates)
        size, _, parent = entries.pop(victim)
        _manifest_path(victim).unlink(missing_ok=True)  # manifest first: a reader never finds it bytes-less
        _bytes_path(victim).unlink(missing_ok=True)
        total -= size
        if parent in entries:
            children[parent] -= 1
            if not children[parent] and parent not in protect:
                heapq.heappush(candidates, (entries[parent][1], parent))


def _json_member(archive: zipfile.ZipFile, by_name: dict, name: Any) -> Any:
    raw = _member_bytes(archive, by_name, name, 1024 * 1024)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ChainError(f"In this chain ZIP, {name} is not readable JSON.") from error


def _member_bytes(archive: zipfile.ZipFile, by_name: dict, name: Any, limit: int) -> bytes:
    member = by_name.get(name) if isinstance(name, str) else None
    if member is None:
        raise ChainError(f"This chain ZIP lists {name!r}, which is not inside it.")
    if member.file_size > limit:
        raise ChainError(f"In this chain ZIP, {name} is larger than a chain member may be.")
    try:
        with archive.open(member) as handle:
            raw = handle.read(limit + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
        raise ChainError(f"In this chain ZIP, {name} is damaged and cannot be read.") from error
    if len(raw) > limit:
        raise ChainError(f"In this chain ZIP, {name} is larger than a chain member may be.")
    return raw


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _extension(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _EXTENSIONS.get(image.format or "", "img")
    except Exception:  # store() only keeps decodable bytes; a name is all this decides
        return "img"


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48].strip("-")
    return slug or "image"


def _clean_name(name: Any) -> str:
    text = " ".join(str(name or "").split())[:200]
    return text or "image"


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _plain_settings(settings: dict | None) -> dict:
    """Settings as plain JSON (numpy numbers, tuples and paths converted; anything else as its text),
    so a manifest read back equals the one written and no page's config can stop an image being kept."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ChainError("An image's settings must be a dictionary of names and values.")

    def plain(value: Any) -> Any:
        try:
            return _json_default(value)
        except TypeError:
            return str(value)

    try:
        return json.loads(json.dumps(settings, default=plain))
    except (TypeError, ValueError) as error:  # keys that are not text, circular references
        raise ChainError(f"These settings cannot be written to a manifest: {error}.") from error


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["ChainError", "Derivation", "MAX_STORE_BYTES", "digest_from_token", "export_zip",
           "find", "import_zip", "lineage", "load", "store", "url_token"]
