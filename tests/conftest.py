"""Shared fixtures: one cached handle per real model, the tiny net, and sample images."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("GLASSBOX_TEST_MODELS", "1")
os.environ.setdefault("GLASSBOX_DEVICE", "cpu")
# Generated concept sets and dissection results go to a scratch folder, never the home directory.
# It is removed when the session ends (a few hundred MB a run would pile up on a CI machine).
_SCRATCH = None if "GLASSBOX_CACHE" in os.environ else tempfile.mkdtemp(prefix="glassbox-test-cache-")
if _SCRATCH:
    os.environ["GLASSBOX_CACHE"] = _SCRATCH

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


def pytest_sessionfinish(session, exitstatus):
    if _SCRATCH:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
