"""Classifier adapters: every load path on a tiny torchxrayvision DenseNet, thresholds, errors."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torchxrayvision as xrv

import tiny_classifier as tc
from xcounter.classifiers import (Classifier, PreprocessProfile, load_classifier, logit, make_profile,
                                  save_torchscript_classifier, xrv_weights_path)
from xcounter.classifiers import load as load_module
from xcounter.errors import InputError, ModelError, XCounterError

XRV_NAME = "densenet121-res224-all"


@pytest.fixture(scope="module")
def model():
    return tc.make_tiny_densenet(seed=0, op_threshs=tc.TINY_OP_THRESHS)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))


def reference_logits(model, images):
    """What the network computes, written with torchxrayvision's own pieces (no op_norm)."""
    with torch.no_grad():
        return model.classifier(model.features2(images * 2048 - 1024))


def logit_thresholds():
    return [math.log(p / (1 - p)) if not math.isnan(p) else float("nan") for p in tc.TINY_OP_THRESHS]


def save_in_format(fmt, model, path_dir):
    """Returns (spec, load kwargs) for each supported on-disk format."""
    meta = {"labels": tc.TINY_LABELS}
    if fmt == "torchscript":
        return tc.save_torchscript(model, path_dir / "m.pt", thresholds=logit_thresholds()), {}
    if fmt == "state_dict":
        return tc.save_state_dict(model, path_dir / "m.pth"), {"arch": "xrv-densenet", "labels": tc.TINY_LABELS}
    if fmt == "state_dict+meta":
        return tc.save_state_dict(model, path_dir / "m.pt", meta), {"arch": "xrv-densenet"}
    if fmt == "safetensors":
        return tc.save_safetensors(model, path_dir / "m.safetensors", meta), {"arch": "xrv-densenet"}
    if fmt == "pickle":
        return tc.save_pickled_module(model, path_dir / "m.pt"), {"trust_pickle": True}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "state_dict+meta", "safetensors", "pickle"])
def test_every_format_gives_the_same_logits_labels_and_thresholds(model, images, tmp_path, fmt):
    spec, kwargs = save_in_format(fmt, model, tmp_path)
    classifier = load_classifier(spec, **kwargs)
    assert isinstance(classifier, Classifier) and not classifier.training
    torch.testing.assert_close(classifier.logits(images), reference_logits(model, images), rtol=1e-4, atol=1e-3)
    assert classifier.labels == tc.TINY_LABELS
    expected = torch.tensor(logit_thresholds())
    torch.testing.assert_close(classifier.thresholds, expected, equal_nan=True)
    assert classifier.targets == ["Effusion", "Pneumothorax"]  # NaN threshold and '' are not offered
    assert classifier.preprocess.name == "xrv" and classifier.preprocess.size == 224
    assert classifier.sha256 == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert classifier.name == spec.name


def test_thresholds_agree_with_torchxrayvision_op_norm(model, images):
    classifier = load_classifier(model)
    with torch.no_grad():
        normalised = model(images * 2048 - 1024)  # xrv forward: sigmoid + op_norm, 0.5 at the threshold
    margins = classifier.margins(images)
    offered = [classifier.labels.index(t) for t in classifier.targets]
    assert torch.equal(margins[:, offered] > 0, normalised[:, offered] > 0.5)
    probabilities = classifier.probabilities(images)
    torch.testing.assert_close(probabilities[:, offered], torch.sigmoid(margins[:, offered]))
    # exactly at the threshold, the probability is 0.5
    at_threshold = classifier.thresholds[offered] - classifier.thresholds[offered]
    assert torch.allclose(torch.sigmoid(at_threshold), torch.tensor(0.5))


def test_default_threshold_is_logit_zero(model, images):
    classifier = load_classifier(tc.make_tiny_densenet(seed=0))  # no op_threshs
    assert torch.equal(classifier.thresholds, torch.zeros(len(tc.TINY_LABELS)))
    assert classifier.targets == ["Effusion", "Pneumothorax", "Cardiomegaly"]
    torch.testing.assert_close(classifier.probabilities(images), torch.sigmoid(classifier.logits(images)))


def test_a_bare_xrv_model_in_classifier_gives_raw_logits_silently(model, images, capsys):
    classifier = Classifier(model, tc.TINY_LABELS, logit(tc.TINY_OP_THRESHS), make_profile("xrv", size=64))
    small = images[:, :, :64, :64]
    torch.testing.assert_close(classifier.logits(small), reference_logits(model, small), rtol=1e-4, atol=1e-3)
    assert capsys.readouterr().out == ""  # torchxrayvision's print() warnings are bypassed


def test_untrained_xrv_net_without_pathologies_uses_targets():
    net = xrv.models.DenseNet(**{k: v for k, v in tc.TINY_CONFIG.items() if k != "num_classes"})
    assert not hasattr(net, "pathologies")
    assert load_classifier(net).labels == list(xrv.models.DenseNet.targets)


def test_logits_are_differentiable_wrt_images(model):
    classifier = load_classifier(model)
    images = torch.rand(1, 1, 40, 56, requires_grad=True)  # non-square: centre crop, resize
    classifier.logits(images)[0, 0].backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert images.grad[..., :, :8].abs().sum() == 0  # cropped-away columns do not matter


def test_predict_and_identity(model, images, tmp_path):
    spec = tc.save_torchscript(model, tmp_path / "m.pt", thresholds=logit_thresholds())
    classifier = load_classifier(spec)
    rows = classifier.predict(images)
    assert len(rows) == 2 and [p.label for p in rows[0]] == classifier.targets
    logits = classifier.logits(images)
    for i, prediction in enumerate(rows[1]):
        index = classifier.labels.index(prediction.label)
        assert prediction.logit == pytest.approx(float(logits[1, index]), rel=1e-5)
        assert prediction.positive == (prediction.logit > prediction.threshold)
        assert prediction.probability == pytest.approx(1 / (1 + math.exp(prediction.threshold - prediction.logit)))
    identity = classifier.identity()
    assert identity["sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert identity["thresholds"][2] is None and identity["labels"] == tc.TINY_LABELS
    assert identity["preprocess"] == {"name": "xrv", "channels": 1, "size": 224}
    json.dumps(identity, allow_nan=False)


def test_target_index_and_did_you_mean(model):
    classifier = load_classifier(model)
    assert classifier.target_index("Pneumothorax") == 1
    assert classifier.target_index("effusion") == 0
    with pytest.raises(XCounterError, match="did you mean 'Effusion'"):
        classifier.target_index("Efusion")
    with pytest.raises(XCounterError, match="no decision threshold"):
        classifier.target_index("Cardiomegaly")
    with pytest.raises(XCounterError, match="offered targets: Effusion, Pneumothorax"):
        classifier.target_index("Hernia")


@pytest.mark.parametrize("outputs, value, message", [(4, float("nan"), "NaN"), (3, 0.0, r"shape \(2, 3\)")])
def test_bad_outputs_raise_model_error(tmp_path, outputs, value, message):
    path = tmp_path / "bad.pt"
    save_torchscript_classifier(tc.ConstantLogits(outputs, value), path, tc.TINY_LABELS, preprocess="unit")
    classifier = load_classifier(path)
    with pytest.raises(ModelError, match=message):
        classifier.logits(torch.rand(2, 1, 8, 8))


def test_wrong_input_shape_is_a_model_error(model):
    classifier = load_classifier(model)
    with pytest.raises(ModelError, match=r"\[B, C, H, W\]"):
        classifier.logits(torch.rand(1, 8, 8))


def test_pickle_needs_trust(model, tmp_path):
    path = tc.save_pickled_module(model, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="--trust-pickle") as info:
        load_classifier(path)
    assert "\n" not in str(info.value)


def test_state_dict_needs_arch_and_matching_labels(model, tmp_path):
    path = tc.save_state_dict(model, tmp_path / "weights.pt")
    with pytest.raises(ModelError, match="--arch"):
        load_classifier(path)
    with pytest.raises(ModelError, match="4 outputs but 2 labels"):
        load_classifier(path, arch="xrv-densenet", labels=["A", "B"])
    with pytest.raises(ModelError, match="does not name its labels"):
        load_classifier(path, arch="xrv-densenet")  # 4 outputs: not torchxrayvision's 18 defaults
    with pytest.raises(ModelError, match="unknown architecture 'vgg'"):
        load_classifier(path, arch="vgg")
    with pytest.raises(ModelError, match="do not fit architecture 'resnet50'"):
        load_classifier(path, arch="resnet50", labels=tc.TINY_LABELS)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_classifier(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_classifier(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelError, match="not a TorchScript, state_dict or safetensors"):
        load_classifier(tmp_path / "text.pt")
    # bytes the weights-only unpickler rejects as an unknown opcode are not a pickle to trust
    (tmp_path / "notes.pt").write_text("not a model\n")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for name in ("notes.pt", "image.pt"):
        with pytest.raises(ModelError, match="not a TorchScript, state_dict or safetensors"):
            load_classifier(tmp_path / name, trust_pickle=False)


@pytest.mark.parametrize("arch", ["densenet121", "resnet50"])
def test_torchvision_architectures_from_state_dict(tmp_path, arch):
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=2).eval()
    path = tmp_path / f"{arch}.safetensors"
    tc.save_safetensors(net, path)
    classifier = load_classifier(path, arch=arch, labels=["Melanoma", "Nevus"])
    assert classifier.preprocess.name == "imagenet" and classifier.preprocess.channels == 3
    images = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    classifier.preprocess = make_profile("imagenet", size=32)  # keep the check fast
    with torch.no_grad():
        expected = net((images - mean) / std)
    torch.testing.assert_close(classifier.logits(images), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- xrv:NAME and phantom:NAME

@pytest.fixture
def xrv_cache(tmp_path, monkeypatch):
    """An empty torchxrayvision cache, and a download that fails the test if anyone tries it."""
    cache = tmp_path / "xrv-cache"
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(cache) + "/")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(xrv.utils, "download", no_download)
    return cache


def test_xrv_missing_weights_names_the_expected_file(xrv_cache):
    expected = xrv_cache / "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    assert xrv_weights_path(XRV_NAME) == expected
    with pytest.raises(ModelError) as info:
        load_classifier(f"xrv:{XRV_NAME}")
    message = str(info.value)
    assert str(expected) in message and "download" in message and "\n" not in message


@pytest.mark.parametrize("pickled", [False, True], ids=["state_dict", "pickled-module"])
def test_xrv_loads_from_the_cache(xrv_cache, pickled):
    labels = xrv.models.model_urls[XRV_NAME]["labels"]
    tiny = tc.make_tiny_densenet(seed=2, labels=labels)
    tc.put_in_xrv_cache(tiny, xrv_cache, XRV_NAME, pickled=pickled)
    classifier = load_classifier(f"xrv:{XRV_NAME}")  # a pickle of xrv classes loads without trust
    assert classifier.name == f"xrv:{XRV_NAME}" and classifier.domain == "cxr"
    assert classifier.labels == labels and len(classifier.targets) == 18
    expected = torch.tensor(logit(xrv.models.model_urls[XRV_NAME]["op_threshs"]), dtype=torch.float32)
    torch.testing.assert_close(classifier.thresholds, expected)
    images = torch.rand(1, 1, 224, 224)
    torch.testing.assert_close(classifier.logits(images), reference_logits(tiny, images), rtol=1e-4, atol=1e-3)


def test_xrv_unknown_name_suggests(xrv_cache):
    with pytest.raises(ModelError, match="did you mean densenet121-res224-all"):
        load_classifier("xrv:densenet121-res224-al")


def test_phantom_names(tmp_path, monkeypatch, model):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setattr(load_module, "ZOO_CLASSIFIERS", zoo)
    with pytest.raises(ModelError, match="none are installed"):
        load_classifier("phantom:cxr-shortcut")
    tc.save_torchscript(model, zoo / "cxr-tiny.pt", thresholds=logit_thresholds())
    with pytest.raises(ModelError, match="available: phantom:cxr-tiny"):
        load_classifier("phantom:cxr-shortcut")
    with pytest.raises(ModelError, match="no phantom classifier"):
        load_classifier("phantom:../zoo/cxr-tiny")
    classifier = load_classifier("phantom:cxr-tiny")
    assert classifier.name == "phantom:cxr-tiny" and classifier.domain == "cxr"


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_profiles():
    images = torch.tensor([[[[0.0, 1.0, 0.5, 0.25]]]]).expand(1, 1, 2, 4)
    xrv_profile = make_profile("xrv", size=2)
    out = xrv_profile.apply(images)  # centre crop keeps columns 1..2
    assert out.shape == (1, 1, 2, 2) and torch.allclose(out[0, 0, 0], torch.tensor([1024.0, 0.0]))
    rgb = torch.rand(1, 3, 4, 4)
    gray = make_profile("xrv", size=4).apply(rgb)
    torch.testing.assert_close(gray, rgb.mean(1, keepdim=True) * 2048 - 1024)
    net_in = make_profile("imagenet", size=4).apply(torch.full((1, 1, 4, 4), 0.485))
    assert net_in.shape == (1, 3, 4, 4) and net_in[0, 0].abs().max() < 1e-6
    unit = make_profile("unit")
    assert torch.equal(unit.apply(rgb), rgb)
    for profile in (xrv_profile, make_profile("imagenet"), unit):
        assert PreprocessProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    with pytest.raises(ModelError, match="unknown preprocess profile"):
        make_profile("clip")


def test_save_torchscript_keeps_metadata(model, tmp_path):
    path = tmp_path / "small.pt"
    save_torchscript_classifier(model, path, tc.TINY_LABELS, [0.5, None, float("nan"), 1.0],
                                preprocess={"name": "xrv", "size": 64}, domain="cxr")
    classifier = load_classifier(path)
    assert classifier.preprocess == make_profile("xrv", size=64)
    assert classifier.identity()["thresholds"] == [0.5, None, None, 1.0]
    assert classifier.targets == ["Effusion"]  # '' has a threshold but no name
    images = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(classifier.logits(images), reference_logits(model, images), rtol=1e-4, atol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
