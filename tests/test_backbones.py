"""Backbones: stages are ordered, disjoint and complete; forward gives (N, out_features); the bundled
EfficientNet-Lite0 ImageNet weights are real (they recognise a photo)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import CONF_DIR, compose
from omegaconf import OmegaConf
from torch import nn

from tlbench.backbones import BACKBONES, Backbone
from tlbench.errors import ConfigError

torch.set_num_threads(1)

# (family, model, input size): random weights, small inputs.
TORCHVISION = [
    ("resnet18", 32),
    ("mobilenet_v3_small", 32),
    ("efficientnet_b0", 32),
    ("convnext_tiny", 32),
    ("vit_b_16", 32),
    ("inception_v3", 75),
    ("densenet121", 32),
    ("regnet_y_400mf", 32),
    ("swin_t", 32),
    ("squeezenet1_1", 64),
]
TIMM = [
    ("resnet18", 32),
    ("efficientnet_b0", 32),
    ("mobilenetv3_small_100", 32),
    ("convnext_atto", 32),
    ("vit_tiny_patch16_224", 32),
    ("densenet121", 32),
    ("inception_v3", 75),
]


def stage_index_of_parameters(backbone: Backbone) -> dict[int, int]:
    return {id(p): i for i, stage in enumerate(backbone.stages()) for p in stage.parameters()}


def check_stages(backbone: Backbone) -> None:
    """Every parameter is in exactly one stage, and stages are met in forward order."""
    stages = backbone.stages()
    assert len(stages) >= 2
    per_stage = [[id(p) for p in stage.parameters()] for stage in stages]
    assert all(per_stage), "empty stage"
    flat = [pid for ids in per_stage for pid in ids]
    assert len(flat) == len(set(flat)), "a parameter is in two stages"
    everything = {id(p) for p in backbone.parameters()}
    assert set(flat) == everything, f"{len(everything - set(flat))} parameters in no stage"
    assert sum(p.numel() for s in stages for p in s.parameters()) == sum(p.numel() for p in backbone.parameters())

    # Forward order: modules holding parameters directly, in the order they start running, must
    # belong to non-decreasing stages.
    stage_of = stage_index_of_parameters(backbone)
    order: list[int] = []
    hooks = []
    for module in backbone.modules():
        direct = [p for p in module._parameters.values() if p is not None]
        if direct:
            indices = {stage_of[id(p)] for p in direct}
            hooks.append(module.register_forward_pre_hook(lambda m, a, idx=min(indices): order.append(idx)))
    try:
        with torch.no_grad():
            size = backbone.preprocessing.input_size
            dtype = next(backbone.parameters()).dtype
            backbone.eval()(torch.randn(1, backbone.preprocessing.in_chans, size, size, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    assert order, "no parameterised module ran"
    assert order == sorted(order), f"stages not in forward order: {order}"
    assert order[0] == 0 and order[-1] == len(stages) - 1


def check_forward(backbone: Backbone, size: int) -> None:
    assert backbone.preprocessing.input_size == size
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)  # any size/channels → preprocessing
    x = backbone.preprocessing(images)
    assert x.shape == (2, backbone.preprocessing.in_chans, size, size)
    backbone.train()
    out = backbone(x)
    assert out.shape == (2, backbone.out_features)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model,size", TORCHVISION, ids=[m for m, _ in TORCHVISION])
def test_torchvision_backbones(model, size):
    backbone = BACKBONES.build({"family": "torchvision", "model": model, "weights": "none", "input_size": size})
    check_stages(backbone)
    check_forward(backbone, size)
    # the network is stored once: state_dict keys are the network's own, not repeated per stage
    assert all(k.startswith("net.") for k in backbone.state_dict())


@pytest.mark.parametrize("model,size", TIMM, ids=[m for m, _ in TIMM])
def test_timm_backbones(model, size):
    backbone = BACKBONES.build({"family": "timm", "model": model, "input_size": size})
    check_stages(backbone)
    check_forward(backbone, size)
    assert all(k.startswith("net.") for k in backbone.state_dict())


def test_timm_fine_stages_split_blocks():
    coarse = BACKBONES.build({"family": "timm", "model": "resnet18", "input_size": 32})
    fine = BACKBONES.build({"family": "timm", "model": "resnet18", "input_size": 32, "coarse": False})
    assert len(coarse.stages()) == 5  # stem, layer1..4
    assert len(fine.stages()) == 9  # stem, 8 basic blocks
    check_stages(fine)


def test_known_stage_layouts():
    resnet = BACKBONES.build({"family": "torchvision", "model": "resnet18", "input_size": 32})
    assert resnet.stages()[1] is resnet.net.layer1 and resnet.stages()[4] is resnet.net.layer4
    assert {n for n, _ in resnet.stages()[0].named_parameters()} == {"conv1.weight", "bn1.weight", "bn1.bias"}
    vgg = BACKBONES.build({"family": "torchvision", "model": "vgg11", "input_size": 32})
    assert len(vgg.stages()) == 6 and vgg.out_features == 4096  # 5 conv blocks (split at max-pools) + fc6/fc7
    check_stages(vgg)
    check_forward(vgg, 32)
    vit = BACKBONES.build({"family": "timm", "model": "vit_tiny_patch16_224", "input_size": 32})
    assert any(p is vit.net.cls_token for p in vit.stages()[0].parameters())  # loose parameters are owned too


@pytest.mark.parametrize("name,size,chans,features", [("lenet", 28, 1, 500), ("dtn", 32, 3, 512), ("small_cnn", 32, 3, 72)])
def test_digit_nets(name, size, chans, features):
    backbone = BACKBONES.build({"family": name})
    assert backbone.out_features == features
    assert backbone.preprocessing.in_chans == chans and backbone.preprocessing.mean == (0.5,) * chans
    check_stages(backbone)
    check_forward(backbone, size)
    if name == "small_cnn":
        assert 25_000 < sum(p.numel() for p in backbone.parameters()) < 35_000


def test_efficientnet_lite0_default_backbone():
    backbone = BACKBONES.build(OmegaConf.load(CONF_DIR / "backbone" / "efficientnet_lite0.yaml"))
    names = [[n for n, _ in stage.named_parameters()] for stage in backbone.stages()]
    assert len(names) == 9  # stem, 7 MBConv stages, head conv
    assert set(names[0]) == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    assert set(names[-1]) == {"conv_head.weight", "bn2.weight", "bn2.bias"}
    assert backbone.out_features == 1280
    check_stages(backbone)
    check_forward(backbone, 32)


def test_efficientnet_lite0_weights_recognise_a_photo():
    """china.jpg (a Chinese palace) → ImageNet class 698 'palace' among the top 5: the weights are real."""
    from sklearn.datasets import load_sample_image

    from tlbench.backbones.efficientnet_lite0 import load_efficientnet_lite0_imagenet_classifier

    classifier = load_efficientnet_lite0_imagenet_classifier()
    backbone = BACKBONES.build({"family": "efficientnet_lite0", "weights": "imagenet", "input_size": 224}).eval()
    image = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)[None]
    h, w = image.shape[-2:]
    scale = 224 / min(h, w)
    resized = nn.functional.interpolate(image.float(), size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False)
    top, left = (resized.shape[-2] - 224) // 2, (resized.shape[-1] - 224) // 2
    crop = resized[..., top : top + 224, left : left + 224].round().clamp(0, 255).to(torch.uint8)
    x = backbone.preprocessing(crop)
    with torch.no_grad():
        logits = classifier(x)
        features = backbone(x)
    assert 698 in logits.topk(5).indices[0].tolist()
    assert logits.softmax(-1)[0, 698] > 0.1
    # the backbone carries the same weights: its features are the classifier's pre-logits
    with torch.no_grad():
        pre_logits = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, pre_logits)


def test_unknown_model_names_suggest_close_ones():
    with pytest.raises(ConfigError, match=r"resnet18.*list_models") as info:
        BACKBONES.build({"family": "torchvision", "model": "resnet181"})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"convnext_atto.*list_models"):
        BACKBONES.build({"family": "timm", "model": "convnext_ato"})


def test_preprocessing_comes_from_weight_metadata():
    from tlbench.backbones.torchvision_models import preprocessing_for

    assert preprocessing_for("inception_v3", None).input_size == 299
    assert preprocessing_for("resnet18", None).input_size == 224
    vit = BACKBONES.build({"family": "timm", "model": "vit_tiny_patch16_224", "input_size": 32})
    assert vit.preprocessing.mean == (0.5, 0.5, 0.5)


def test_every_backbone_yaml_validates():
    files = sorted((CONF_DIR / "backbone").glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "efficientnet_lite0",
        "small_cnn",
        "lenet",
        "dtn",
        "resnet18",
        "resnet50",
        "vgg16",
        "mobilenet_v3_small",
        "inception_v3",
        "timm",
    }
    for path in files:
        node = OmegaConf.load(path)
        typed = BACKBONES.validate(node)
        assert set(OmegaConf.to_container(node)) == {f for f in vars(typed)}, f"{path.name} does not list every field"
        # the display name is the model for the families that build many (resnet18, not torchvision)
        assert typed.name == (typed.model if typed.family in ("torchvision", "timm") else typed.family), path.name
        if typed.family == "torchvision":
            assert typed.name == path.stem


def test_run_names_show_the_model_not_the_family():
    from tlbench.config import flatten, to_plain_dict, validate
    from tlbench.plan import default_run_name

    run = validate(compose(["backbone=resnet18", "backbone.weights=none", "adapt=dann"]))
    assert (run.backbone.family, run.backbone.name) == ("torchvision", "resnet18")
    assert "resnet18" in default_run_name(run) and "torchvision" not in default_run_name(run)
    assert flatten(to_plain_dict(run))["backbone.family"] == "torchvision"


def test_stages_follow_device_and_dtype_moves_and_copies():
    backbone = BACKBONES.build({"family": "timm", "model": "vit_tiny_patch16_224", "input_size": 32})
    backbone.double()
    assert all(p.dtype == torch.float64 for s in backbone.stages() for p in s.parameters())
    twin = copy.deepcopy(backbone)
    check_stages(twin)
    assert {id(p) for p in twin.parameters()}.isdisjoint({id(p) for p in backbone.parameters()})
