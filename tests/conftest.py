"""Shared fixtures: one cached handle per real model, the tiny net, and sample images."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("GLASSBOX_TEST_MODELS", "1")
os.environ.setdefault("GLASSBOX_DEVICE", "cpu")
# Generated concept sets and dissection results go to a scratch folder, never the home directory.
os.environ.setdefault("GLASSBOX_CACHE", tempfile.mkdtemp(prefix="glassbox-test-cache-"))

from engine import classify, images, models  # noqa: E402


@pytest.fixture(scope="session")
def lite0() -> models.ModelHandle:
    return models.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def tiny() -> models.ModelHandle:
    return models.load_model(models.TEST_MODEL)


@pytest.fixture(scope="session")
def chelsea_tensor(lite0):
    return classify.image_tensor(lite0, images.load_sample("chelsea"))
