"""Glassbox: the router and the shared frame (page config + sidebar) of every page.

Run with ``streamlit run streamlit_app.py``. Pages live in ``app_pages/`` (not ``pages/``: Streamlit
lists a ``pages/`` folder in the sidebar by itself, with lowercase file names, before the router's
navigation exists) and stay thin: each is ``main()`` plus ``*_controls()`` that return a frozen
config and ``render_*()`` that draw a result. ``main()`` calls :func:`ensure_frame` first, which
returns the shared :class:`Selection` (model, image). Long work goes through :func:`start_job` and
:func:`show_job`: one find-or-start by key, one polling fragment, for every page.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st
from PIL import Image

from engine import cache, chain, images, jobs, models
from engine.errors import GlassboxError, ImageError

# The selection of the page run in progress, set by the router for the duration of one run.
# A thread-local, not session_state: it must never outlive the run that set it.
_current = threading.local()
DEFAULT_SAMPLE = "chelsea"
CHECKPOINT_TYPES = ["pt", "pth", "safetensors"]


@dataclass(frozen=True)
class PageEntry:
    path: str
    title: str
    icon: str
    url_path: str
    blurb: str
    default: bool = False


# Only pages that exist are listed; each demo issue adds its line here and nothing else.
PAGES: tuple[PageEntry, ...] = (
    PageEntry("app_pages/home.py", "Home", ":material/home:", "home",
              "What Glassbox is and what each demo shows.", default=True),
    PageEntry("app_pages/lecture.py", "Lecture", ":material/co_present:", "lecture",
              "The lecture's story, one step per screen: classify, saliency, occlusion, dissection, anatomy, "
              "relabel, a universal perturbation and the Mind's Eye, each live on your image; add ?present=1 "
              "to project it."),
    PageEntry("app_pages/classify.py", "Classify", ":material/bar_chart:", "classify",
              "The chosen image as the model sees it, with its five most likely ImageNet classes."),
    PageEntry("app_pages/anatomy.py", "Anatomy", ":material/biotech:", "anatomy",
              "What has a trained network learned? Its first-layer filters, a layer's activations, the patches of many "
              "images that excite a unit most (and a tour from edges to parts), nearest neighbours and a t-SNE map of "
              "its last features, and a unit projected back to the pixels (deconvnet)."),
    PageEntry("app_pages/relabel.py", "Relabel", ":material/swap_horiz:", "relabel",
              "Make the photo take any ImageNet label while it looks unchanged (Robinson & Graham 2015), "
              "with FGSM, PGD and least-likely attacks, and the checks that show where it stops working."),
    PageEntry("app_pages/saliency.py", "Saliency", ":material/blur_on:", "saliency",
              "Which pixels made the model decide? Grad-CAM, Grad-CAM++, guided Grad-CAM, gradients, "
              "integrated gradients, occlusion and RISE side by side, two classes compared, and each map "
              "scored by deletion and insertion."),
    PageEntry("app_pages/inversion.py", "Class inversion", ":material/auto_fix_high:", "inversion",
              "Change the photo until the model strongly calls it another class, with content, style, TV and "
              "colour losses, masks and jitter so the change means something (Anosheh et al.), and rebuild an "
              "image from one layer's features (Mahendran & Vedaldi)."),
    PageEntry("app_pages/dissection.py", "Dissection", ":material/grid_view:", "dissection",
              "Which units of a layer detect which concepts? Network Dissection's IoU between each unit's "
              "strongest activations and concept masks, on a bundled set of colours, textures and shapes "
              "or your own Broden-format data."),
    PageEntry("app_pages/patterns.py", "Patterns", ":material/checkroom:", "patterns",
              "Paint what the classifier thinks a class looks like onto a garment: Chaplygin & Chacksfield's "
              "conditional GAN from a trained checkpoint, or a quick direct optimisation with the same losses."),
    PageEntry("app_pages/minds_eye.py", "Mind's Eye", ":material/view_in_ar:", "minds_eye",
              "A classifier that must redraw what it sees (Berntsen et al.): estimate a 3D object's rotation, draw it, "
              "compare the drawing with the image; its error rates, and how much harder it is to fool than a direct "
              "network."),
    PageEntry("app_pages/attacks_lab.py", "Attacks lab", ":material/bug_report:", "attacks_lab",
              "The lecture's fooling half on many images and models: universal perturbations, transfer between "
              "networks, accuracy against ε, the smallest change that flips a label, effort to flip, a black-box "
              "attack, and the defences with the attacks that see through them."),
)


@dataclass(frozen=True)
class Selection:
    """What the sidebar chose, shared by every page of one browser session."""

    model_name: str
    image_name: str
    image_bytes: bytes
    digest: str
    handle: models.ModelHandle | None
    model_error: str | None
    origin: chain.Derivation | None = None  # this image's manifest when it was made from another image

    def image(self) -> Image.Image:
        return Image.fromarray(cache.decoded_image(self.digest, self.image_bytes))

    def array(self) -> np.ndarray:
        return cache.decoded_image(self.digest, self.image_bytes)

    def parent(self) -> tuple[str, bytes, str] | None:
        """(name, encoded bytes, digest) of the image this one was made from, or None (a root, or
        the parent is no longer stored): the "original" a page can show beside a derived image."""
        if self.origin is None or self.origin.parent is None:
            return None
        try:
            derivation, data = chain.load(self.origin.parent)
        except GlassboxError:
            return None
        return self.origin.parent_name or _link_name(derivation), data, derivation.digest


# ---------------------------------------------------------------------------------------------
# URL binding: a teacher can share a link that opens the same model, image and class.


def url_value(key: str, default: str | None = None) -> str | None:
    return st.query_params.get(key, default)


def set_url_value(key: str, value: str | None) -> None:
    if value is None:
        st.query_params.pop(key, None)
    elif st.query_params.get(key) != value:
        st.query_params[key] = value


def url_widget(widget: Callable[..., Any], label: str, *, key: str, default: Any, param: str | None = None,
               parse: Callable[[str], Any] = str, dump: Callable[[Any], str] = str, **kwargs: Any) -> Any:
    """A widget whose value lives in the page's URL as ``param`` (default: ``key``).

    A fresh session (a reload, a second tab, a shared link) starts from the URL's value, so the
    page computes the same job key and finds the same running or finished job. Values equal to
    ``default`` are left out of the URL. A link value that ``parse`` refuses, or that is not among
    ``options`` or outside ``min_value``..``max_value``, gets a warning and the default. Do not pass
    ``value``/``index``: the session state holds it.
    """
    param = param or key
    if key not in st.session_state:
        value, raw = default, url_value(param)
        if raw is not None:
            try:
                value = parse(raw)
                allowed = list(kwargs.get("options", ()))
                chosen = value if isinstance(value, (list, tuple)) else [value]
                if "options" in kwargs and any(item not in allowed for item in chosen):
                    raise ValueError(raw)
                low, high = kwargs.get("min_value"), kwargs.get("max_value")  # a number input's or a slider's
                if any(low is not None and item < low or high is not None and item > high for item in chosen):
                    raise ValueError(raw)
                if any(isinstance(item, float) and not math.isfinite(item) for item in chosen):  # nan, inf
                    raise ValueError(raw)
            except (ValueError, TypeError, KeyError):
                value = default
                st.warning(f"The link's {param}={raw!r} is not a valid setting here; using {dump(default)} instead.")
        st.session_state[key] = value
    value = widget(label, key=key, **kwargs)
    set_url_value(param, None if value == default or value is None else dump(value))
    return value


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def dump_bool(value: bool) -> str:
    return "1" if value else "0"


def class_picker(handle: models.ModelHandle, *, label: str = "Class", key: str = "class",
                 default: int | None = None, help: str | None = None) -> int:
    """A searchable class selectbox bound to the URL parameter ``key`` (class id)."""
    names = handle.class_names
    state_key = f"_class_{key}_{handle.name}"
    if state_key not in st.session_state:
        try:
            st.session_state[state_key] = handle.class_index(url_value(key) or default or 0)
        except GlassboxError as error:
            st.warning(f"{error} Showing class 0 instead.")
            st.session_state[state_key] = 0
    else:  # the same key on another page is another widget: hand it the class chosen so far, not index 0
        st.session_state[state_key] = st.session_state[state_key]
    chosen = st.selectbox(label, range(len(names)), key=state_key, help=help,
                          format_func=lambda i: f"{names[i]}  ({i})")
    set_url_value(key, str(chosen))
    return int(chosen)


# ---------------------------------------------------------------------------------------------
# The frame


# A bundled file, not a ":material/...:" icon: Streamlit fetches those from fonts.gstatic.com on every
# page load, which fails in a classroom without internet (bench/bench_load.py counted the requests).
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"


def setup_page() -> None:
    present = presenter_mode()
    st.set_page_config(page_title="Glassbox", page_icon=str(FAVICON), layout="wide",
                       initial_sidebar_state="collapsed" if present else "expanded")
    if present:
        st.html(PRESENTER_CSS)
        st.sidebar.button("Leave presenter mode", key="leave_present_sidebar", on_click=leave_presenter_mode)


# Presenter mode (?present=1): for a 1280x720 projector, read from the back of a room. Streamlit sizes
# its text and widgets in rem, so a larger root font enlarges everything at once; the top padding is
# trimmed so a step's demo fits on one screen.
PRESENTER_CSS = """<style>
html { font-size: 21px; }
[data-testid="stMainBlockContainer"] { padding: 2.5rem 2.5rem 1rem; max-width: 100%; }
[data-testid="stHeader"] { height: 2.3rem; min-height: 2.3rem; }
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { font-size: 0.95rem; }
</style>"""


def presenter_mode() -> bool:
    """Whether the app is being projected: ``?present=1`` turns it on for the session (every page), ``0``
    off. It is kept in the session and written back to the link on every page, because switching pages
    drops the link's parameters."""
    raw = url_value("present")
    if raw is not None:
        try:
            st.session_state["_present"] = parse_bool(raw)
        except ValueError:
            _notify(f"The link's present={raw!r} is not 1 or 0; presenter mode stays "
                    f"{'on' if st.session_state.get('_present') else 'off'}.")
    on = bool(st.session_state.get("_present", False))
    set_url_value("present", "1" if on else None)
    return on


def enter_presenter_mode() -> None:
    st.session_state["_present"] = True
    st.query_params["present"] = "1"


def leave_presenter_mode() -> None:
    st.session_state["_present"] = False
    st.query_params.pop("present", None)


def _model_options() -> list[str]:
    mine = st.session_state.setdefault("my_checkpoints", [])
    builtin = [spec.name for spec in models.list_models() if spec.source != "checkpoint"]
    return builtin + [name for name in mine if name not in builtin]


def _model_label(name: str) -> str:
    try:
        return models.model_spec(name).label
    except GlassboxError:
        return name


def _notify(message: str) -> None:
    """A one-time notice shown above the page (for links that name things that do not exist)."""
    st.session_state.setdefault("_notices", []).append(message)


def _sidebar_model() -> tuple[str, models.ModelHandle | None, str | None]:
    options = _model_options()
    if "_next_model" in st.session_state:
        st.session_state["model"] = st.session_state.pop("_next_model")
    if "model" not in st.session_state:
        wanted = url_value("model", models.DEFAULT_MODEL)
        st.session_state["model"] = wanted if wanted in options else models.DEFAULT_MODEL
        if wanted not in options:
            _notify(f"The link asked for a model called '{wanted}', which is not here; using the bundled model.")
    elif st.session_state["model"] not in options:
        st.session_state["model"] = models.DEFAULT_MODEL
    name = st.selectbox("Model", options, key="model", format_func=_model_label)
    set_url_value("model", name if not name.startswith("ckpt:") else None)
    handle, error = None, None
    try:
        handle = cache.get_handle(name)
    except GlassboxError as failure:
        error = str(failure)
    if handle is not None:
        st.caption(f"Runs on **{models.describe_device(handle.device)}** · input {handle.input_size} px")
    else:
        st.error(error)
        st.button("Use the bundled model", on_click=_use_default_model, type="primary")
    _checkpoint_form()
    return name, handle, error


def _use_default_model() -> None:
    st.session_state["model"] = models.DEFAULT_MODEL


def _checkpoint_form() -> None:
    with st.expander("Use your own model"):
        st.caption("A state_dict saved with `torch.save(model.state_dict(), ...)` or a .safetensors "
                   "file, for one of the architectures below. Pickles that need code and TorchScript are refused.")
        with st.form("checkpoint_form", clear_on_submit=False, border=False):
            weights = st.file_uploader("Weights", type=CHECKPOINT_TYPES, key="ckpt_file", max_upload_size=2048)
            archs = list(models.LITE_SIZES) + [a for a in models.torchvision_architectures() if a not in models.LITE_SIZES]
            arch = st.selectbox("Architecture", archs, index=archs.index("resnet50"), key="ckpt_arch")
            names = st.file_uploader("Class names (optional, .txt or .json)", type=["txt", "json"], key="ckpt_names")
            mean = st.text_input("Mean (optional)", placeholder="architecture default, e.g. 0.485, 0.456, 0.406")
            std = st.text_input("Std (optional)", placeholder="architecture default, e.g. 0.229, 0.224, 0.225")
            submitted = st.form_submit_button("Load checkpoint")
        if submitted:
            _load_checkpoint(weights, arch, names, mean, std)


def _parse_triple(text: str, what: str) -> tuple[float, float, float] | None:
    if not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        raise GlassboxError(f"The {what} must be three numbers separated by commas, like 0.5, 0.5, 0.5.") from None
    if len(values) != 3:
        raise GlassboxError(f"The {what} must have exactly three numbers (one per colour channel).")
    return values


def _load_checkpoint(weights, arch, names, mean, std) -> None:
    if weights is None:
        st.error("Choose a weights file first.")
        return
    try:
        request = models.CheckpointRequest(filename=weights.name, arch=arch,
                                           mean=_parse_triple(mean, "mean"), std=_parse_triple(std, "std"))
        class_file = (names.getvalue(), names.name) if names is not None else None
        with st.spinner("Loading your checkpoint…"):
            handle = models.load_checkpoint(weights.getvalue(), request, class_file=class_file)
    except GlassboxError as error:
        st.error(str(error))
        return
    mine = st.session_state.setdefault("my_checkpoints", [])
    if handle.name not in mine:
        mine.append(handle.name)
    st.session_state["_next_model"] = handle.name  # the picker is already drawn; switch on rerun
    st.rerun()


def _sidebar_image() -> tuple[str, bytes, str, chain.Derivation | None]:
    """The sidebar's image: a sample (by name in the URL) or an upload / a page's result (by content
    hash in the URL, ``image=h-<16 hex>``, kept in engine/chain.py's store so a reload finds it)."""
    samples = images.list_samples()
    if "_next_image" in st.session_state:  # set by a page (use_image): it acts as an upload
        pending = st.session_state.pop("_next_image")
        name, data = pending[0], pending[1]
        _set_upload(name, data, pending[2] if len(pending) > 2 and pending[2] is not None else _remember(name, data))
    if "_next_sample" in st.session_state:  # set by a page preset after the picker was drawn
        st.session_state["sample"] = st.session_state.pop("_next_sample")
        st.session_state["image_source"] = "sample"
    if "sample" not in st.session_state:
        wanted = str(url_value("image", DEFAULT_SAMPLE))
        st.session_state["sample"] = wanted if wanted in samples else DEFAULT_SAMPLE
        if wanted.startswith("h-") and "upload" not in st.session_state and not _open_stored(wanted):
            _notify(f"The link pointed at an image kept by its hash ({wanted}), which this server does not have "
                    "(it may have been removed to make room, or the link comes from another server); showing a "
                    "sample instead.")
        elif wanted not in samples and not wanted.startswith(("upload", "h-")):
            _notify(f"The link asked for a sample called '{wanted}', which does not exist; showing {DEFAULT_SAMPLE}.")
        if wanted.startswith("upload") and "upload" not in st.session_state:
            _notify("The link pointed at an uploaded image, which only lives in its own browser session; showing a sample instead.")
        st.session_state.setdefault("image_source", "sample")
    st.selectbox("Sample image", samples, key="sample", on_change=_use_sample,
                 format_func=lambda s: s.replace("_", " "))
    uploaded = st.file_uploader("…or upload your own", type=None, key="upload_widget", on_change=_use_upload,
                                max_upload_size=images.MAX_BYTES // (1024 * 1024),
                                help="PNG, JPEG, WEBP, GIF (first frame), BMP or TIFF, up to 40 megapixels; or a "
                                     "chain ZIP from \"Download the chain (ZIP)\", which brings back its last image "
                                     "and where it came from.")
    if uploaded is not None and st.session_state.get("_pending_upload"):
        st.session_state["_pending_upload"] = False
        data = uploaded.getvalue()
        try:
            if data[:2] == b"PK" or uploaded.name.lower().endswith(".zip"):  # a chain ZIP: its leaf, with its origin
                leaf = chain.import_zip(data)
                _set_upload(leaf.name, chain.load(leaf.digest)[1], leaf)
            else:
                images.decode_image(data)
                _set_upload(uploaded.name, data, _remember(uploaded.name, data))
        except GlassboxError as error:
            st.session_state["_upload_error"] = f"{uploaded.name}: {error}"
            st.session_state["image_source"] = st.session_state.get("_source_before_upload", "sample")
    if st.session_state.get("_upload_error"):
        st.error(st.session_state["_upload_error"] + " The previous image is kept.")
    origin = None
    if st.session_state.get("image_source") == "upload" and "upload" in st.session_state:
        name, data, digest = st.session_state["upload"]
        origin = st.session_state.get("upload_origin")
        set_url_value("image", chain.url_token(digest) if _is_stored(digest) else f"upload-{digest[:8]}")
        st.caption(f"Showing **{name}**.")
        if origin is None:
            st.button("Back to the sample", on_click=_use_sample, key="back_to_sample")
    else:
        name = st.session_state["sample"]
        data = images.sample_bytes(name)
        digest = images.image_digest(data)
        set_url_value("image", name)
    return name, data, digest, origin


def _set_upload(name: str, data: bytes, derivation: chain.Derivation | None) -> None:
    """Make encoded ``data`` the current image; ``derivation`` is its manifest (an origin only when it
    names a parent)."""
    st.session_state["upload"] = (name, data, images.image_digest(data))
    st.session_state["upload_origin"] = (derivation if derivation is not None and (derivation.parent or derivation.operation)
                                         else None)
    st.session_state["image_source"] = "upload"
    st.session_state.pop("_upload_error", None)


def _remember(name: str, data: bytes) -> chain.Derivation | None:
    """Keep an upload (a root) in the chain store, so its link works after a reload. Bytes stored
    before with a parent keep that manifest, which is then returned (the image remembers its origin).
    None when it cannot be stored (a full disk): the image still works, its link does not."""
    try:
        return chain.store(data, name=name)
    except (GlassboxError, OSError):
        return None


def _is_stored(digest: str) -> bool:
    try:
        return chain.find(digest) is not None
    except GlassboxError:
        return False


def _open_stored(token: str) -> bool:
    """Open a link's ``h-...`` image from the store; False when this server does not have it."""
    digest = chain.digest_from_token(token)
    if digest is None:
        return False
    try:
        derivation, data = chain.load(digest)
    except GlassboxError:
        return False
    _set_upload(derivation.name, data, derivation)
    return True


def _sidebar_chain(origin: chain.Derivation) -> None:
    """Under the sidebar image of a derived image: where it came from, the way back, the chain ZIP."""
    links = chain.lineage(origin.digest)  # root first; the parent is the one before last
    made = f"Made on {origin.page}" if origin.page else "Made"
    if origin.parent is None:  # made from something other than a sidebar image (a garment, a render)
        st.caption(f"{made} by {origin.operation or 'a page'}")
        st.button("Back to the sample", on_click=_use_sample, key="back_to_sample")
        return
    parent_name = (origin.parent_name or _link_name(links[-2]) if len(links) >= 2
                   else "an image that is no longer stored")
    st.caption(f"{made} by {origin.operation or 'a page'} from **{parent_name}**")
    st.button("Back to the original", on_click=_back_to_original, args=(links[0].digest if links else None,),
              key="back_to_original", help="The first image of this chain (the sample or upload it started from).")
    if len(links) >= 2:
        if len(links) > 2:
            with st.expander(f"The chain ({len(links)} images)"):
                for number, link in enumerate(links):
                    how = f" · {link.operation} on {link.page}" if link.operation else ""
                    st.caption(f"{number}. **{_link_name(link)}**{how}")
        st.download_button("Download the chain (ZIP)", functools.partial(chain.export_zip, origin.digest),
                           file_name=f"{chain._slug(origin.name)}-chain.zip", mime="application/zip",
                           key="chain_zip", icon=":material/download:",
                           help="Every image of the chain with its manifest; upload the ZIP here to bring it back.")


@functools.lru_cache(maxsize=1)
def _sample_names_by_digest() -> dict[str, str]:
    return {images.image_digest(images.sample_bytes(name)): name for name in images.list_samples()}


def _link_name(link: chain.Derivation) -> str:
    """A stored image's name: a bundled sample's own name when the bytes are a sample's (the store keeps
    the first name it saw for some bytes, which may be another session's upload of the same photo)."""
    return _sample_names_by_digest().get(link.digest, link.name)


def _back_to_original(root_digest: str | None) -> None:
    try:
        root, data = chain.load(root_digest or "")
    except GlassboxError:
        _use_sample()
        return
    sample = _sample_names_by_digest().get(root.digest)  # the store may know a sample under an upload's name
    if sample is not None:
        st.session_state["sample"] = sample
        _use_sample()
    else:
        _set_upload(root.name, data, root)


def use_image(name: str, data: bytes, *, operation: str | None = None, settings: dict | None = None,
              from_current: bool = True) -> None:
    """Make ``data`` (encoded image bytes) the current image of every page, as an upload would, and rerun.

    With ``operation`` (what made it: "I-FGSM → half-track") the image is a derived one: the current
    image (its parent) and it are kept in engine/chain.py's store with page, settings and model, so
    the sidebar shows where it came from and the link (``image=h-...``) reopens it after a reload.
    Without, it is a root (a picked image of a set). ``from_current=False``: a result the page made
    from something other than the sidebar's image (a painted garment, a rendered object): it keeps its
    origin (page, operation, settings) but has no parent to compare with. Call it in the page's run
    (not a callback), so the current selection is known.
    """
    derivation = None
    if operation is not None:
        selection = getattr(_current, "selection", None)
        try:
            parent = _store_current(selection) if selection is not None and from_current else None
            derivation = chain.store(data, name=name, parent=parent.digest if parent else None,
                                     page=getattr(_current, "page_title", None), operation=operation,
                                     settings=settings, model=selection.model_name if selection else None,
                                     parent_name=selection.image_name if parent else None)
        except ImageError as error:
            st.error(f"This result cannot be used as the image: {error}")
            return
        except (GlassboxError, OSError) as error:
            _notify(f"The new image is used, but it could not be kept with its origin ({error}), so a reload "
                    "will not find it.")
    st.session_state["_next_image"] = (name, data, derivation)
    st.rerun()


def _store_current(selection: Selection) -> chain.Derivation:
    """The current image in the store (the parent of what a page makes from it)."""
    origin = selection.origin
    if origin is not None and not _is_stored(selection.digest):  # removed meanwhile: record it again
        try:
            return chain.store(selection.image_bytes, name=selection.image_name, parent=origin.parent,
                               page=origin.page, operation=origin.operation, settings=origin.settings,
                               model=origin.model, parent_name=origin.parent_name)
        except chain.ChainError:  # its own parent is gone too: it becomes a root
            pass
    return chain.store(selection.image_bytes, name=selection.image_name)


USE_AS_IMAGE_HELP = ("Make this result the image of every page (the sidebar's image). It remembers where it came "
                     "from, and the page's link keeps it, so a reload or a shared link opens it again.")


USE_AS_NEW_IMAGE_HELP = ("Make this result the image of every page (the sidebar's image). It was not made from the "
                         "sidebar's image, so it starts a chain of its own; the page's link keeps it.")


def use_as_image_button(image: np.ndarray | bytes, *, name: str, operation: str, settings: dict | None = None,
                        key: str, label: str = "Use as the image", help: str | None = None,
                        from_current: bool = True) -> None:
    """The one button every result image gets: on click the result becomes the current image of
    every page, with its origin (see :func:`use_image`). ``image`` is encoded bytes or a uint8
    H x W x 3 array (encoded as a lossless PNG only when clicked). ``from_current=False`` for a result
    not made from the sidebar's image (it has an origin but no original to compare with)."""
    default_help = USE_AS_IMAGE_HELP if from_current else USE_AS_NEW_IMAGE_HELP
    if st.button(label, key=key, help=help or default_help, icon=":material/input:"):
        if isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            data = images.to_png_bytes(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
        use_image(name, data, operation=operation, settings=settings, from_current=from_current)


def _use_sample() -> None:
    st.session_state["image_source"] = "sample"
    st.session_state.pop("_upload_error", None)


def _use_upload() -> None:
    st.session_state["_pending_upload"] = True
    st.session_state["_source_before_upload"] = st.session_state.get("image_source", "sample")
    st.session_state["image_source"] = "upload"


def render_sidebar() -> Selection:
    with st.sidebar:
        st.markdown("### :material/visibility: Glassbox")
        model_name, handle, error = _sidebar_model()
        st.divider()
        image_name, data, digest, origin = _sidebar_image()
        try:
            st.image(cache.decoded_image(digest, data), caption=image_name, width="stretch")
        except GlassboxError as failure:  # a corrupt sample on disk should still not crash the page
            st.error(str(failure))
        if origin is not None:
            _sidebar_chain(origin)
    for notice in st.session_state.pop("_notices", []):
        st.info(notice)
    return Selection(model_name, image_name, data, digest, handle, error, origin)


def ensure_frame() -> Selection:
    """The shared selection. A page run without the router (a test running the file alone) runs
    the router instead, which draws the frame and runs this same page once, properly framed."""
    selection = getattr(_current, "selection", None)
    if selection is not None:
        return selection
    main()
    st.stop()


# ---------------------------------------------------------------------------------------------
# Long work: the one job controller every page uses (find or start by key, one polling fragment)


def start_job(key: str, fn: Callable[..., Any], *args: Any, title: str, pool: str = "default",
              kind: str = "thread", records: bool = False, **kwargs: Any) -> jobs.JobStatus | None:
    """Find the job for ``key`` or start it (a failed or cancelled one starts again).

    The key must be built from the page's settings, which live in the URL, so a reload or a second
    tab with the same link computes the same key and finds the same job. ``records=True`` gives the
    work an ``observer`` whose per-step records live (bounded) in the job. A refusal (full queue,
    work that cannot run in a process) is shown as a sentence and gives None. The job's owner is
    this browser session, so the queue is fair across students (one running job per session,
    served round-robin; see :class:`engine.jobs.JobRegistry`).
    """
    import uuid

    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx(suppress_warning=True)
    owner = None
    if context is not None:
        # The session's id, made unique in session state: AppTest gives every session the same
        # id ("test session id"), while its session state is its own, as a browser session's is.
        owner = st.session_state.setdefault("_job_owner", f"{context.session_id}|{uuid.uuid4().hex[:8]}")
    try:
        return jobs.registry(pool).find_or_start(key, fn, *args, title=title, kind=kind, records=records,
                                                 owner=owner, **kwargs)
    except GlassboxError as error:
        st.error(str(error))
        return None


def find_job(key: str, *, pool: str = "default") -> jobs.JobStatus | None:
    return jobs.registry(pool).find(key)


LiveView = Callable[[jobs.JobStatus], None]


def show_job(key: str, *, pool: str = "default", live: LiveView | None = None,
             idle: str | None = "Press **Run** to start.", cancel_label: str = "Cancel",
             cancelled: str = "Cancelled. Press **Run** to start again.",
             again: Callable[[], Any] | None = None) -> jobs.JobStatus | None:
    """Draw the job for ``key`` as every page does; return its status once it is done.

    None yet: the ``idle`` sentence. Queued or running: the shared polling fragment (progress, queue
    position, ETA, Cancel, and ``live(status)`` for the page's live view of ``status.records``);
    when it ends the page reruns by itself. Failed: its sentence. Cancelled: ``cancelled``.
    Unknown here but started by a server process that is gone (the job journal): "lost when the
    server restarted", with a button that calls ``again()`` (the page's own start call) and reruns;
    without ``again`` the sentence points to the page's Run button.
    """
    lost = jobs.lost_job(key, pool) if find_job(key, pool=pool) is None else None
    if lost is not None:
        title = lost.get("title") or "your job"
        if again is None:
            st.warning(f"This job ({title}) was lost when the server restarted. "
                       "Press the page's **Run** button to start it again.")
        else:
            st.warning(f"This job ({title}) was lost when the server restarted.")
            if st.button("Start it again", key=f"again_{abs(hash((pool, key)))}", type="primary"):
                again()
                if find_job(key, pool=pool) is not None:  # a refusal (a full queue) keeps its sentence
                    st.rerun()
        return None
    done = show_jobs([key], pool=pool, live=live, idle=idle, cancel_label=cancel_label, cancelled=cancelled)
    return done.get(key)


def show_jobs(keys: Sequence[str], *, pool: str = "default", live: LiveView | None = None,
              idle: str | None = None, cancel_label: str = "Cancel",
              cancelled: str = "Cancelled. Press **Run** to start again.") -> dict[str, jobs.JobStatus]:
    """:func:`show_job` for several keys at once (one fragment polls all the unfinished ones);
    returns the done ones by key."""
    statuses = {key: find_job(key, pool=pool) for key in keys}
    running = [status.id for status in statuses.values() if status is not None and not status.finished]
    if running:
        _poll_jobs(tuple(running), pool, live, cancel_label, _POLL_EVERY_S.get(pool, 0.8))
    for status in statuses.values():
        if status is None or not status.finished or status.done:
            continue
        if status.state is jobs.JobState.FAILED:
            st.error(status.error or "The job failed.")
        else:
            st.info(cancelled)
    if idle and all(status is None for status in statuses.values()):
        st.info(idle)
    return {key: status for key, status in statuses.items() if status is not None and status.done}


def job_row(status: jobs.JobStatus, *, cancel_label: str = "Cancel") -> None:
    """One job as every page shows it: progress with queue position (or the session's own job it
    waits for) and ETA, and a Cancel button."""
    where = f" (queued, position {status.queue_position})" if status.queue_position else ""
    eta = f" · about {status.eta_s:.0f} s left" if status.eta_s is not None and not status.finished else ""
    text = f"{status.title}: {status.message or status.state.value}{where}{eta}"
    mine = status.owner is not None and status.owner == st.session_state.get("_job_owner")
    if status.waiting_for and mine and not status.finished:  # one session runs one job at a time
        text = f"{status.title}: waits for your other job ({status.waiting_for}) to finish"
    c1, c2 = st.columns([5, 1])
    c1.progress(status.fraction, text=text)
    if not status.finished and c2.button(cancel_label, key=f"cancel_{status.id}"):
        jobs.registry(status.pool).cancel(status.id)


_POLL_EVERY_S = {"default": 0.8, "training": 2.0}


def _poll_jobs(job_ids: tuple[str, ...], pool: str, live: LiveView | None, cancel_label: str,
               every: float) -> None:
    fragment = _POLLERS.get(every)
    if fragment is None:
        fragment = _POLLERS.setdefault(every, st.fragment(_poll_body, run_every=every))
    fragment(job_ids, pool, live, cancel_label)


def _poll_body(job_ids: tuple[str, ...], pool: str, live: LiveView | None, cancel_label: str) -> None:
    """The one polling fragment: rows (and the live view) until every job ended, then a page rerun."""
    registry = jobs.registry(pool)
    try:
        statuses = [registry.status(job_id) for job_id in job_ids]
    except GlassboxError:  # forgotten meanwhile (server restarted its registry): let the page decide
        st.rerun()
    for status in statuses:
        job_row(status, cancel_label=cancel_label)
        if live is not None:
            live(status)
    if all(status.finished for status in statuses):
        st.rerun()


_POLLERS: dict[float, Callable[..., None]] = {}


def watch(draw: Callable[[], bool], *, every: float = 2.0) -> None:
    """Redraw ``draw()`` every ``every`` seconds in the frame's polling fragment, for work this process
    does not run (a training in another server process, seen through its files); when ``draw``
    returns False (that work stopped) the whole page reruns."""
    fragment = _WATCHERS.get(every)
    if fragment is None:
        fragment = _WATCHERS.setdefault(every, st.fragment(_watch_body, run_every=every))
    fragment(draw)


def _watch_body(draw: Callable[[], bool]) -> None:
    if not draw():
        st.rerun()


_WATCHERS: dict[float, Callable[..., None]] = {}


# ---------------------------------------------------------------------------------------------
# Image sets (the pages that work on many images: Anatomy, the Attacks lab)

SET_SOURCES = {"bundled": "bundled photos", "crops": "random crops of the bundled photos",
               "heldout": "held-out photos (not bundled)", "concepts": "bundled concept images (drawn)",
               "zip": "a ZIP of images", "folder": "a folder on this machine", "broden": "a Broden folder"}
NAMED_SETS = ("bundled", "crops", "heldout", "concepts")


@dataclass(frozen=True)
class SetChoice:
    """Which image set a page uses: ``spec`` reopens it anywhere (a job, another session)."""

    source: str
    spec: str  # "bundled", "crops", "heldout", "concepts", a stored ZIP's key, or a folder path ("": not given)

    @property
    def ready(self) -> bool:
        return bool(self.spec)


def folders_allowed() -> bool:
    """A folder on the server is offered only when the app runs on this machine (a user of a shared
    server must not browse its disk)."""
    import os

    if os.environ.get("GLASSBOX_ALLOW_FOLDERS", "").strip() in ("1", "true", "yes"):
        return True
    try:
        host = (st.context.url or "").split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    except Exception:  # an AppTest run has no request: it runs locally
        return True
    return host in ("", "localhost", "127.0.0.1", "::1", "[::1]")


SET_HELP = ("Bundled: every real photo that ships with Glassbox (20, not ImageNet). Crops: 500 random crops of "
            "them, at many scales (made once, about 10 s). Held-out: 20 photos and crops of 4 photos that are not "
            "bundled (scikit-learn's and matplotlib's). Concept images: the dissection page's drawn colours, "
            "textures and shapes on photos. A ZIP: your own images. A folder or a Broden folder: when the app "
            "runs on your machine.")


def image_set_controls(*, key_prefix: str, default: str, sources: Sequence[str], label: str = "Image set",
                       param: str = "set", path_param: str = "folder", columns=None) -> SetChoice:
    """An image set: the source, then the ZIP or path it needs. Every choice lives in the URL."""
    offered = [s for s in sources if folders_allowed() or s not in ("folder", "broden")]
    left, right = columns if columns is not None else st.columns([2, 3])
    source = url_widget(left.selectbox, label, key=f"{key_prefix}_source", param=param, default=default,
                        options=offered, format_func=SET_SOURCES.get, help=SET_HELP)
    spec = source if source in NAMED_SETS else ""
    if source == "zip":
        spec = _zip_control(right, key_prefix)
    elif source in ("folder", "broden"):
        placeholder = "/data/broden1_224" if source == "broden" else "/data/my_photos"
        spec = url_widget(right.text_input, "Folder", key=f"{key_prefix}_path", param=path_param, default="",
                          placeholder=placeholder).strip()
    return SetChoice(source, spec)


def _zip_control(column, key_prefix: str) -> str:
    from engine import imagesets

    uploaded = column.file_uploader(
        f"ZIP of images (up to {imagesets.MAX_ZIP_BYTES >> 20} MB and {imagesets.MAX_ZIP_MEMBERS} images)",
        type=["zip"], key=f"{key_prefix}_zip")
    if uploaded is None:
        return st.session_state.get(f"{key_prefix}_zip_spec") or ""
    try:
        spec = cache.zip_image_set(uploaded.getvalue(), uploaded.name)
    except GlassboxError as error:
        column.error(f"{uploaded.name}: {error}")
        return ""
    st.session_state[f"{key_prefix}_zip_spec"] = spec
    return spec


def open_image_set(handle: models.ModelHandle, choice: SetChoice, *, what: str = "Image set"):
    """The chosen set, described on screen (size first, so 20 photos are not mistaken for ImageNet);
    None with a sentence when it cannot be opened."""
    if not choice.ready:
        st.info("Upload a ZIP of images first." if choice.source == "zip" else "Type the folder's path first.")
        return None
    try:
        imageset = cache.image_set(choice.spec, handle.input_size)
    except GlassboxError as error:
        st.error(str(error))
        return None
    st.caption(f"**{what}:** {imageset.describe()}")
    if imageset.skipped:
        with st.expander(f"{len(imageset.skipped)} file(s) skipped"):
            st.dataframe([{"file": name, "why": why} for name, why in imageset.skipped], hide_index=True)
    return imageset


def page_header(title: str, caption: str) -> tuple[Selection, models.ModelHandle]:
    """Every demo page's opening: the shared selection, the model (or a sentence and a stop), the
    title and the one-paragraph caption saying which paper's experiment this is."""
    selection = ensure_frame()
    handle = require_model(selection)
    st.title(title)
    st.caption(caption)
    return selection, handle


def require_model(selection: Selection) -> models.ModelHandle:
    """The handle, or a sentence plus a way back to the bundled model (and the page stops)."""
    if selection.handle is None:
        st.error(selection.model_error or "The model could not be loaded.")
        st.button("Use the bundled model instead", on_click=_use_default_model, key="use_default_main")
        st.stop()
    return selection.handle


def navigation_pages() -> list:
    return [st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path, default=p.default) for p in PAGES]


def main() -> None:
    setup_page()
    page = st.navigation(navigation_pages())
    _current.page_title = page.title  # use_image records the page that made an image
    _current.selection = render_sidebar()
    try:
        page.run()
    finally:
        _current.selection = None
        _current.page_title = None


if __name__ == "__main__":
    # Run as the importable module, so pages (which import streamlit_app) share its state.
    import streamlit_app

    streamlit_app.main()
