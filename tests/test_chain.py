"""The image chain store (engine/chain.py): content-addressed images with their manifests, lineage,
the chain ZIP (export -> import byte for byte), bad ZIPs as sentences, and the store's bound."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from engine import chain, images
from engine.errors import ChainError, GlassboxError, ImageError


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def png(seed: int, size: int = 16) -> bytes:
    return images.to_png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def three_links():
    root = chain.store(images.sample_bytes("chelsea"), name="chelsea")
    middle = chain.store(png(1), name="relabel half-track", parent=root.digest, page="Relabel",
                         operation="I-FGSM → half-track", settings={"eps": np.float32(0.5), "steps": (1, 2)},
                         model="tiny")
    leaf = chain.store(png(2), name="inverted", parent=middle.digest, page="Saliency", operation="invert",
                       model="tiny")
    return root, middle, leaf


def test_store_and_load_by_digest_and_prefix():
    data = png(0)
    kept = chain.store(data, name="  my   photo ", settings={"size": np.int64(3), "pair": (1, 2), "z": 1 + 2j})
    assert kept.digest == hashlib.sha256(data).hexdigest() == images.image_digest(data)
    assert kept.name == "my photo" and kept.parent is None
    assert kept.settings == {"size": 3, "pair": [1, 2], "z": "(1+2j)"}  # plain JSON, as read back
    derivation, loaded = chain.load(kept.digest[:10])
    assert loaded == data and derivation == kept
    assert chain.find(kept.digest[:6]) == kept and chain.find(kept.digest) == kept
    assert chain.find("0" * 64 if not kept.digest.startswith("0") else "f" * 64) is None
    assert chain.find("not hex") is None
    with pytest.raises(ChainError, match="is stored on this server"):
        chain.load("ab" * 32 if not kept.digest.startswith("abab") else "cd" * 32)


def test_a_shared_prefix_is_refused_with_a_sentence():
    digests = [chain.store(png(seed, 8), name=f"p{seed}").digest for seed in range(17)]  # 17 > 16 hex digits
    shared = next(d[0] for d in digests if sum(x[0] == d[0] for x in digests) > 1)
    with pytest.raises(ChainError, match="give more of it"):
        chain.find(shared)


def test_store_refuses_bad_bytes_and_unknown_parents():
    with pytest.raises(ImageError):
        chain.store(b"not an image at all", name="notes")
    with pytest.raises(ImageError):
        chain.store(b"\0" * (images.MAX_BYTES + 1), name="huge")
    with pytest.raises(ChainError, match="not stored"):
        chain.store(png(0), name="orphan", parent="a" * 64)
    assert chain.find(images.image_digest(png(0))) is None  # nothing half-written


def test_the_first_manifest_is_kept_unless_the_new_one_adds_a_parent():
    root = chain.store(png(0), name="first")
    assert chain.store(png(1), name="second").parent is None
    again = chain.store(png(1), name="second again", parent=root.digest, operation="blur")
    assert again.parent == root.digest and chain.find(again.digest).operation == "blur"  # adds a parent
    kept = chain.store(png(1), name="third", operation="other")  # no parent: the first (derived) one stays
    assert kept == again and chain.find(again.digest) == again
    assert chain.store(png(0), name="first", parent=root.digest).parent is None  # itself as parent: dropped
    # a parent that would close a cycle is dropped: root was made from nothing, and stays a root
    assert chain.store(png(0), name="first", parent=again.digest).parent is None


def test_lineage_is_root_first_and_cycle_safe(own_store):
    root, middle, leaf = three_links()
    assert [link.digest for link in chain.lineage(leaf.digest)] == [root.digest, middle.digest, leaf.digest]
    assert chain.lineage(root.digest) == [root]
    assert chain.lineage("e" * 64) == []
    # A hand-edited store with a cycle (store() never writes one) must not hang.
    path = own_store / f"{root.digest}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "parent": leaf.digest}))
    assert len(chain.lineage(leaf.digest)) == 3


def test_export_import_round_trip_is_byte_exact(tmp_path, monkeypatch):
    root, middle, leaf = three_links()
    exported = chain.export_zip(leaf.digest)
    assert exported == chain.export_zip(leaf.digest)  # deterministic
    names = zipfile.ZipFile(io.BytesIO(exported)).namelist()
    assert names == ["0-chelsea.png", "0-chelsea.json", "1-relabel-half-track.png", "1-relabel-half-track.json",
                     "2-inverted.png", "2-inverted.json", "chain.json"]
    originals = {link.digest: chain.load(link.digest) for link in (root, middle, leaf)}
    originals_text = {d: (tmp_path / "cache" / "images" / f"{d}.json").read_bytes() for d in originals}

    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "another server"))
    assert chain.find(leaf.digest) is None
    imported = chain.import_zip(exported)
    assert imported == leaf
    for digest, (derivation, data) in originals.items():
        assert chain.load(digest) == (derivation, data)
        assert (tmp_path / "another server" / "images" / f"{digest}.json").read_bytes() == originals_text[digest]
    assert chain.export_zip(leaf.digest) == exported
    assert chain.lineage(leaf.digest)[1].settings == {"eps": 0.5, "steps": [1, 2]}


def rebuilt(exported: bytes, change) -> bytes:
    """The chain ZIP with ``change(name, data) -> data`` applied to each member."""
    source = zipfile.ZipFile(io.BytesIO(exported))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, change(name, source.read(name)))
    return out.getvalue()


def refused(data: bytes, match: str) -> None:
    with pytest.raises(ChainError, match=match) as caught:
        chain.import_zip(data)
    assert isinstance(caught.value, GlassboxError) and str(caught.value).endswith(".")


def test_bad_zips_are_refused_with_a_sentence(tmp_path, monkeypatch):
    root, middle, leaf = three_links()
    exported = chain.export_zip(leaf.digest)
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "fresh"))

    refused(b"hello, not a zip", "not a ZIP archive")
    refused(rebuilt(exported, lambda n, d: d)[:200], "not a ZIP archive")  # cut short
    foreign = io.BytesIO()
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("holiday.png", png(5))
    refused(foreign.getvalue(), "not a Glassbox image chain")

    swapped = png(9)
    refused(rebuilt(exported, lambda n, d: swapped if n == "1-relabel-half-track.png" else d), "does not match")

    def new_parent(name, data):
        if name != "2-inverted.json":
            return data
        return json.dumps({**json.loads(data), "parent": root.digest}).encode()
    refused(rebuilt(exported, new_parent), "chain is broken")

    def foreign_root(name, data):
        if name != "0-chelsea.json":
            return data
        return json.dumps({**json.loads(data), "parent": "b" * 64}).encode()
    refused(rebuilt(exported, foreign_root), "chain is broken")

    refused(rebuilt(exported, lambda n, d: b"{" if n == "chain.json" else d), "not readable JSON")
    too_many = io.BytesIO()
    with zipfile.ZipFile(too_many, "w") as archive:
        for number in range(chain.MAX_ZIP_MEMBERS + 1):
            archive.writestr(f"{number}.txt", b"x")
    refused(too_many.getvalue(), "at most")
    assert not list((tmp_path / "fresh").glob("images/*.json"))  # nothing stored from a refused ZIP


def test_url_tokens():
    kept = chain.store(png(3), name="token")
    token = chain.url_token(kept.digest)
    assert token == "h-" + kept.digest[:16]
    assert chain.digest_from_token(token) == kept.digest
    assert chain.digest_from_token(token.upper().replace("H-", "h-")) == kept.digest
    assert chain.digest_from_token("chelsea") is None
    assert chain.digest_from_token("h-" + ("0" if kept.digest[0] != "0" else "1") * 16) is None


def test_the_store_stays_within_its_budget_and_keeps_parents(own_store, monkeypatch):
    def size() -> int:
        return sum(path.stat().st_size for path in own_store.iterdir())

    root, middle, leaf = three_links()
    chain_bytes = size()
    first = [chain.store(png(100 + seed, 48), name=f"other {seed}") for seed in range(3)]
    entry = (size() - chain_bytes) / 3
    monkeypatch.setattr(chain, "MAX_STORE_BYTES", int(chain_bytes + 6.5 * entry))
    chain.load(leaf.digest)  # the chain's newest end is used again: its parents are older than `first`
    later = [chain.store(png(200 + seed, 48), name=f"later {seed}") for seed in range(6)]
    assert size() <= chain.MAX_STORE_BYTES
    assert all(chain.find(item.digest) is None for item in first)  # least recently used went first...
    assert all(chain.find(item.digest) is not None for item in later)
    # ...but not the chain's root and middle, though older: a kept image's parents are never removed.
    assert [link.digest for link in chain.lineage(leaf.digest)] == [root.digest, middle.digest, leaf.digest]
    with pytest.raises(ChainError, match="removed to make room"):
        chain.load(first[0].digest)
    # A chain nobody uses goes from its newest end first, so a kept lineage is always complete.
    monkeypatch.setattr(chain, "MAX_STORE_BYTES", 1)
    newest = chain.store(png(999, 8), name="newest")
    assert {path.stem for path in own_store.glob("*.json")} == {newest.digest}
