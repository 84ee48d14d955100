"""The chain in the app: "Use as the image" puts the result in the sidebar with its origin, the link
keeps it by hash (a fresh session opens it), and the chain ZIP loads back through the sidebar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from engine import chain, images

APP = str(Path(__file__).resolve().parent / "apps" / "chain_app.py")


def open_app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    assert not at.exception, at.exception
    return at


def shown(at: AppTest) -> tuple[str, str]:
    """(digest, parent name) as the page saw its selection."""
    lines = [m.value for m in at.markdown]
    digest = next(line for line in lines if line.startswith("digest: ")).split(": ", 1)[1]
    parent = next(line for line in lines if line.startswith("parent: ")).split(": ", 1)[1]
    return digest, parent


def origin_caption(at: AppTest) -> str:
    return next((c.value for c in at.sidebar.caption if c.value.startswith("Made on")), "")


def uploader(at: AppTest):
    return next(w for w in at.sidebar.file_uploader if w.label.startswith("…or upload"))


def test_use_as_the_image_survives_a_reload_and_the_chain_zip_loads_back(tmp_path, monkeypatch):
    at = open_app()
    chelsea = images.image_digest(images.sample_bytes("chelsea"))
    assert shown(at) == (chelsea, "None")
    at.button(key="invert").click().run()
    assert not at.exception, at.exception
    expected = images.image_digest(images.to_png_bytes(255 - np.asarray(images.load_sample("chelsea"))))
    digest, parent = shown(at)
    assert digest == expected and parent == "chelsea"
    token = at.query_params["image"]
    token = token[0] if isinstance(token, list) else token
    assert token == chain.url_token(digest)
    assert origin_caption(at) == "Made on Chain test by inversion from **chelsea**"
    assert [b.label for b in at.sidebar.button if b.label == "Back to the original"]
    assert [d.proto.label for d in at.sidebar.get("download_button")] == ["Download the chain (ZIP)"]
    manifest = chain.find(digest)
    assert (manifest.page, manifest.operation, manifest.settings) == ("Chain test", "inversion", {"gain": 1.0})

    reloaded = open_app(image=token)  # a fresh session with the same link: a reload
    assert shown(reloaded) == (digest, "chelsea")
    assert origin_caption(reloaded) == origin_caption(at)
    assert not reloaded.info  # no "this server does not have it" notice

    exported = chain.export_zip(digest)
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "another server"))
    elsewhere = open_app(image=token)  # the link means nothing to a server without the image
    assert shown(elsewhere)[0] == chelsea
    assert any("kept by its hash" in notice.value for notice in elsewhere.info)
    uploader(elsewhere).set_value(("chelsea-chain.zip", exported, "application/zip")).run()
    assert not elsewhere.exception, elsewhere.exception
    assert shown(elsewhere) == (digest, "chelsea")
    assert origin_caption(elsewhere) == origin_caption(at)
    assert chain.export_zip(digest) == exported  # byte for byte, manifests included

    uploader(elsewhere).set_value(("broken.zip", b"PK\x03\x04 this is not really a zip", "application/zip")).run()
    assert not elsewhere.exception, elsewhere.exception
    errors = " ".join(e.value for e in elsewhere.sidebar.error)
    assert "broken.zip" in errors and "not a ZIP archive" in errors and "previous image is kept" in errors
    assert shown(elsewhere) == (digest, "chelsea")  # nothing lost

    elsewhere.sidebar.button(key="back_to_original").click().run()
    assert shown(elsewhere) == (chelsea, "None")
    assert elsewhere.query_params["image"] in ("chelsea", ["chelsea"])


def test_an_upload_is_kept_by_hash_and_an_unknown_hash_gives_a_notice():
    at = open_app()
    coffee = images.sample_bytes("coffee")
    uploader(at).set_value(("my coffee.png", coffee, "image/png")).run()
    token = at.query_params["image"]
    token = token[0] if isinstance(token, list) else token
    assert token == chain.url_token(images.image_digest(coffee))
    assert shown(open_app(image=token))[0] == images.image_digest(coffee)

    unknown = open_app(image="h-" + "0123456789abcdef")
    assert shown(unknown)[0] == images.image_digest(images.sample_bytes("chelsea"))
    assert any("kept by its hash" in notice.value for notice in unknown.info)


def test_the_parent_keeps_the_name_its_maker_saw(tmp_path, monkeypatch):
    """The store keeps one name per bytes (the first it saw): another session's upload of the same photo
    under another name must not rename this session's original, in the caption or in the comparison."""
    monkeypatch.setenv("GLASSBOX_CACHE", str(tmp_path / "fresh"))
    upload = open_app()
    uploader(upload).set_value(("someone's photo.png", images.sample_bytes("astronaut"), "image/png")).run()
    assert chain.find(images.image_digest(images.sample_bytes("astronaut"))).name == "someone's photo.png"
    at = open_app(image="astronaut")
    at.button(key="invert").click().run()
    assert not at.exception, at.exception
    assert shown(at)[1] == "astronaut"
    assert "from **astronaut**" in origin_caption(at)
    derivation = chain.find(shown(at)[0])
    assert derivation.parent_name == "astronaut"
    again = chain.import_zip(chain.export_zip(derivation.digest))  # the ZIP carries it too
    assert again.parent_name == "astronaut"
    at.sidebar.button(key="back_to_original").click().run()  # back to the sample, not to someone's upload
    assert at.query_params["image"] in ("astronaut", ["astronaut"])
