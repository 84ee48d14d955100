"""Model registry: real classification offline, torchvision weights, user checkpoints, refusals."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from engine import classify, images, models
from engine.errors import CheckpointError, ConfigError, ModelError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# --- the bundled models -------------------------------------------------------------------------


def test_registry_lists_bundled_and_seed_paper_nets():
    names = [spec.name for spec in models.list_models(include_test=False)]
    assert names[0] == models.DEFAULT_MODEL
    assert {"efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert set(models.SEED_PAPER_NETS) <= set(names)
    assert models.TEST_MODEL not in names
    spec = models.model_spec("efficientnet_lite0")
    assert (spec.input_size, spec.mean, spec.std) == (224, (0.5,) * 3, (0.5,) * 3)
    assert models.model_spec("efficientnet_lite2").input_size == 260


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_bundled_models_classify_real_photos(name):
    handle = models.load_model(name)
    chelsea = classify.classify_image(handle, images.load_sample("chelsea"), top_k=3)
    assert CAT_CLASSES & set(chelsea.indices), chelsea
    coffee = classify.classify_image(handle, images.load_sample("coffee"), top_k=1)
    assert coffee.labels[0] in ("espresso", "cup"), coffee
    assert abs(sum(handle.probabilities(classify.image_tensor(handle, images.load_sample("coffee")))[0]) - 1) < 1e-4


def test_handle_is_frozen_in_eval_mode_with_spatial_default_layer(lite0):
    assert not lite0.model.training
    assert not any(p.requires_grad for p in lite0.model.parameters())
    assert lite0.num_classes == 1000 and lite0.class_names[285] == "Egyptian cat"
    layer = lite0.layer(None)
    assert layer.name == lite0.default_layer and layer.height == layer.width == 7
    names = [info.name for info in lite0.layers]
    assert "_swish" not in names  # reused activation module: a hook on it would be ambiguous
    with pytest.raises(ConfigError, match="no spatial output"):
        lite0.layer("_fc")
    with pytest.raises(ConfigError, match="no layer called"):
        lite0.layer("layer99")


def test_normalisation_lives_in_the_handle(lite0):
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        direct = lite0.model((x - 0.5) / 0.5)
        via_handle = lite0.logits(x)
    assert torch.equal(direct, via_handle)


def test_probabilities_do_not_depend_on_batch_size(tiny):
    x = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(tiny.probabilities(x, batch_size=2), tiny.probabilities(x, batch_size=7), atol=1e-6)


def test_class_lookup(lite0):
    assert lite0.class_index("Egyptian cat") == 285
    assert lite0.class_index(" egyptian CAT ") == 285
    assert lite0.class_index("285") == 285
    assert lite0.class_index("espresso") == 967
    with pytest.raises(ConfigError, match="no class called"):
        lite0.class_index("unicorn")
    with pytest.raises(ConfigError, match="Did you mean tiger cat"):
        lite0.class_index("tigr cat")
    with pytest.raises(ConfigError, match="several classes"):
        lite0.class_index("cat")
    with pytest.raises(ConfigError, match="0 to 999"):
        lite0.class_index(1000)


def test_prediction_top_and_rank(lite0, chelsea_tensor):
    ranking = lite0.classify(chelsea_tensor, top_k=1000)
    assert ranking.top(5) == lite0.classify(chelsea_tensor, top_k=5)
    assert ranking.rank_of(ranking.indices[3]) == 3
    assert list(ranking.probs) == sorted(ranking.probs, reverse=True)


def test_tiny_model_is_deterministic():
    a, b = models.TinyCNN(), models.TinyCNN()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_unknown_model_and_device():
    with pytest.raises(ModelError, match="no model called"):
        models.load_model("not_a_net")
    assert models.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            models.pick_device("cuda")


# --- torchvision weights --------------------------------------------------------------------------


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path


def test_torchvision_model_offline_says_so(empty_hub, monkeypatch):
    monkeypatch.setattr(models, "_host_reachable", lambda url, timeout=3.0: False)
    assert not models.torchvision_weights_cached("vgg16")
    assert "needs download" in models.model_spec("vgg16").label
    with pytest.raises(ModelError, match="not on this machine.*bundled efficientnet_lite0"):
        models.load_model("vgg16")


def test_torchvision_model_loads_from_hub_cache(empty_hub):
    reference = models.build_architecture("resnet18")
    path = models.torchvision_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    handle = models.load_model("resnet18")
    assert handle.spec.source == "torchvision" and handle.default_layer == "layer4"
    assert handle.spec.mean == models.IMAGENET_MEAN
    for key, value in reference.state_dict().items():
        assert torch.equal(value, handle.model.state_dict()[key]), key


# --- user checkpoints -------------------------------------------------------------------------------


def small_net(num_classes: int = 1000) -> torch.nn.Module:
    return models.build_architecture("squeezenet1_1", num_classes).eval()


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def predictions(handle, net, mean=models.IMAGENET_MEAN, std=models.IMAGENET_STD):
    x = torch.rand(2, 3, handle.input_size, handle.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        return handle.logits(x), expected


def test_checkpoint_state_dict_round_trip():
    net = small_net()
    handle = models.load_checkpoint(saved(net.state_dict()), models.CheckpointRequest("mine.pt", "squeezenet1_1"))
    got, expected = predictions(handle, net)
    assert torch.allclose(got, expected, atol=1e-5)
    assert handle.name.startswith("ckpt:mine:") and handle.class_names[0] == "tench"
    assert handle.name in [s.name for s in models.list_models()]
    assert models.load_model(handle.name) is handle


def test_checkpoint_safetensors_with_custom_classes_and_normalisation():
    from safetensors.torch import save

    net = small_net(num_classes=3)
    names = json.dumps(["apple", "pear", "plum"]).encode()
    request = models.CheckpointRequest("fruit.safetensors", "squeezenet1_1", mean=(0.5,) * 3, std=(0.25,) * 3)
    handle = models.load_checkpoint(save(net.state_dict()), request, class_file=(names, "names.json"))
    assert handle.class_names == ("apple", "pear", "plum")
    got, expected = predictions(handle, net, (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(got, expected, atol=1e-5)


def test_checkpoint_wrapped_and_dataparallel_prefixed():
    net = small_net(num_classes=4)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    handle = models.load_checkpoint(saved(wrapped), models.CheckpointRequest("run.pth", "squeezenet1_1"),
                                    class_file=(b"a\nb\nc\nd\n", "names.txt"))
    assert handle.class_names == ("a", "b", "c", "d")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/glassbox-pwned",))


def test_malicious_pickle_is_refused_and_never_runs():
    if os.path.exists("/tmp/glassbox-pwned"):
        os.remove("/tmp/glassbox-pwned")
    data = saved({"weight": Exploit()})
    with pytest.raises(CheckpointError, match="needs to run code"):
        models.load_checkpoint(data, models.CheckpointRequest("evil.pt", "squeezenet1_1"))
    raw = pickle.dumps(Exploit())
    with pytest.raises(CheckpointError):
        models.read_state_dict(raw, "evil.pth")
    assert not os.path.exists("/tmp/glassbox-pwned")


def test_torchscript_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # the layout torch.jit.save writes
        archive.writestr("model/code/__torch__.py", "def forward(self, x): return x\n")
        archive.writestr("model/constants.pkl", b"")
        archive.writestr("model/data.pkl", pickle.dumps({}))
    with pytest.raises(CheckpointError, match="TorchScript"):
        models.read_state_dict(buffer.getvalue(), "scripted.pt")


def test_mismatched_state_dict_is_reported_per_tensor():
    state = small_net().state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 5, 5)
    state["extra.bias"] = torch.zeros(3)
    del state["features.3.squeeze.bias"]
    with pytest.raises(CheckpointError) as caught:
        models.load_checkpoint(saved(state), models.CheckpointRequest("bad.pt", "squeezenet1_1"))
    message = str(caught.value)
    assert "features.0.weight: checkpoint has [32, 3, 5, 5], model expects [64, 3, 3, 3]" in message
    assert "features.3.squeeze.bias: missing" in message
    assert "extra.bias: not part of" in message
    resnet_state = models.build_architecture("resnet18").state_dict()
    with pytest.raises(CheckpointError, match="does not fit squeezenet1_1"):
        models.load_checkpoint(saved(resnet_state), models.CheckpointRequest("r.pt", "squeezenet1_1"))


@pytest.mark.parametrize("data,filename,match", [
    (b"", "x.pt", "empty"),
    (b"not a checkpoint at all", "x.pt", "could not be read"),
    (b"garbage", "x.safetensors", "safetensors"),
    (b"x", "x.onnx", ".pt, .pth or .safetensors"),
])
def test_unreadable_checkpoints(data, filename, match):
    with pytest.raises(CheckpointError, match=match):
        models.read_state_dict(data, filename)


def test_class_name_file_problems():
    state = saved(small_net(num_classes=3).state_dict())
    request = models.CheckpointRequest("three.pt", "squeezenet1_1")
    with pytest.raises(CheckpointError, match="has 2 names but the checkpoint predicts 3"):
        models.load_checkpoint(state, request, class_file=(b"a\nb\n", "n.txt"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        models.parse_class_names(b"[1, 2", "n.json")
    assert models.parse_class_names(b'{"1": "b", "0": "a"}', "n.json") == ("a", "b")
    with pytest.raises(CheckpointError, match="std"):
        models.load_checkpoint(state, models.CheckpointRequest("z.pt", "squeezenet1_1", std=(0.2, 0.0, 0.2)),
                               class_file=(b"a\nb\nc", "n.txt"))


def test_the_seed_nets_written_down_match_torchvisions_metadata():
    from torchvision import models as tvm

    for name, (filename, crop) in models.SEED_PAPER_WEIGHTS.items():
        weights = tvm.get_model_weights(name).DEFAULT
        preprocess = weights.transforms()
        assert weights.url.rsplit("/", 1)[-1] == filename, name
        spec = models.torchvision_spec(name)
        assert spec.input_size == int(preprocess.crop_size[0]) == crop
        assert spec.mean == tuple(preprocess.mean) and spec.std == tuple(preprocess.std)
    assert set(models.SEED_PAPER_WEIGHTS) == set(models.SEED_PAPER_NETS)


def test_the_architecture_list_read_from_sources_equals_torchvisions():
    from torchvision import models as tvm

    assert models.torchvision_architectures() == tuple(sorted(tvm.list_models(module=tvm)))
