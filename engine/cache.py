"""The one engine file that imports streamlit: process-wide caches for handles and results.

Handles are keyed by model *name*, never by the model object. Results are keyed by content: the
sha256 of the image bytes (Streamlit's own hashing of large arrays samples them, so two images
differing in one pixel could collide), the model name and the settings.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from . import classify, images, models


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def get_handle(name: str) -> models.ModelHandle:
    return models.load_model(name)


@st.cache_data(show_spinner=False, max_entries=64)
def decoded_image(digest: str, _data: bytes) -> np.ndarray:
    """The uploaded/sample image as uint8 RGB; ``digest`` is the cache key, the bytes are not hashed."""
    return np.asarray(images.decode_image(_data))


@st.cache_data(show_spinner=False, max_entries=512)
def prediction(model_name: str, digest: str, _data: bytes, top_k: int = 5) -> models.Prediction:
    from PIL import Image

    image = Image.fromarray(decoded_image(digest, _data))
    return classify.classify_image(get_handle(model_name), image, top_k=top_k)


@st.cache_data(show_spinner=False, max_entries=256)
def explanation(model_name: str, digest: str, _data: bytes, method: str, target: int, config_key: str):
    """A fast saliency method's map (the slow ones run as jobs). ``config_key`` is the config as JSON."""
    import json

    from PIL import Image

    from . import saliency

    handle = get_handle(model_name)
    view = classify.model_view(handle, Image.fromarray(decoded_image(digest, _data)))
    config = saliency.METHODS[method].Config(**json.loads(config_key))
    return saliency.explain(handle, images.to_tensor(view, device=handle.device), method, target, config)
