"""Weight resolution: checkpoints round-trip (file and runs:/), ImageNet files are found in the local
caches, and every failure is a one-line WeightsError that says what to do — without hanging offline."""

from __future__ import annotations

import time

import pytest
import torch

from tlbench.backbones import BACKBONES
from tlbench.backbones.weights import load_backbone_weights, offline_reason, save_backbone
from tlbench.errors import WeightsError

torch.set_num_threads(1)

SMALL = {"family": "small_cnn"}
WRAPPED = {"family": "timm", "model": "resnet18", "input_size": 32}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, so ImageNet lookups see only what a test puts there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def outputs(backbone, size=32, chans=3):
    torch.manual_seed(1)
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        return backbone.eval()(x)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("cfg", [SMALL, WRAPPED], ids=["small_cnn", "timm_resnet18"])
def test_save_and_load_round_trip(tmp_path, cfg):
    torch.manual_seed(0)
    trained = BACKBONES.build(cfg)
    with torch.no_grad():  # make the BatchNorm statistics non-default too
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
    path = save_backbone(trained, tmp_path / "ckpt" / "backbone.pt")
    torch.manual_seed(123)
    fresh = BACKBONES.build(cfg)
    assert not torch.equal(outputs(fresh), outputs(trained))
    load_backbone_weights(fresh, str(path))
    torch.testing.assert_close(outputs(fresh), outputs(trained), rtol=0, atol=0)
    # the same through the config: weights: <path>
    rebuilt = BACKBONES.build({**cfg, "weights": str(path)})
    torch.testing.assert_close(outputs(rebuilt), outputs(trained), rtol=0, atol=0)


def test_runs_uri_round_trip(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("weights", artifact_location=(tmp_path / "artifacts").as_uri())
        trained = BACKBONES.build(SMALL)
        path = save_backbone(trained, tmp_path / "backbone.pt")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(path), artifact_path="checkpoints")
        path.unlink()  # the only copy left is MLflow's
        uri = f"runs:/{run.info.run_id}/checkpoints/backbone.pt"
        restored = BACKBONES.build({**SMALL, "weights": uri})
        torch.testing.assert_close(outputs(restored), outputs(trained), rtol=0, atol=0)
        with pytest.raises(WeightsError) as info:
            BACKBONES.build({**SMALL, "weights": f"runs:/{run.info.run_id}/checkpoints/missing.pt"})
        assert "runs:/" in one_line(info)
    finally:
        mlflow.set_tracking_uri("")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({**SMALL, "weights": str(missing)})
    assert str(missing) in one_line(info)


def test_corrupt_file(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({**SMALL, "weights": str(corrupt)})
    assert "cannot read" in one_line(info) and "corrupt.pt" in str(info.value)


def test_wrong_shapes_and_wrong_backbone(tmp_path):
    path = save_backbone(BACKBONES.build({"family": "small_cnn", "width": 8}), tmp_path / "narrow.pt")
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({**SMALL, "weights": str(path)})
    assert "shape mismatch" in one_line(info) and "stage_modules.0.0.weight (8, 3, 3, 3) vs (18, 3, 3, 3)" in str(info.value)
    other = save_backbone(BACKBONES.build({"family": "lenet"}), tmp_path / "lenet.pt")
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({**SMALL, "weights": str(other)})
    assert "missing keys" in one_line(info) and "unexpected keys" in str(info.value)


def test_torchvision_imagenet_offline_names_the_file(torch_home):
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({"family": "torchvision", "model": "resnet18", "weights": "imagenet", "input_size": 32})
    message = one_line(info)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message and "TLBENCH_OFFLINE" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_timm_imagenet_offline_names_the_file(torch_home):
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({"family": "timm", "model": "resnet18", "weights": "imagenet", "input_size": 32})
    message = one_line(info)
    assert "huggingface.co/timm/resnet18.a1_in1k" in message and str(torch_home) in message


def test_imagenet_is_taken_from_the_torch_hub_cache(torch_home):
    """A file placed where the offline error says is used, for torchvision (.pth) and timm (.safetensors)."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    torch_home.mkdir(parents=True)
    torch.manual_seed(7)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), torch_home / "resnet18-f37072fd.pth")
    backbone = BACKBONES.build({"family": "torchvision", "model": "resnet18", "weights": "imagenet", "input_size": 32})
    torch.testing.assert_close(backbone.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight, rtol=0, atol=0)
    assert backbone.out_features == 512 and not any(k.startswith("net.fc.") for k in backbone.state_dict())

    reference = timm.create_model("resnet18", num_classes=1000)
    save_file(reference.state_dict(), str(torch_home / "resnet18.a1_in1k.safetensors"))
    backbone = BACKBONES.build({"family": "timm", "model": "resnet18", "weights": "imagenet", "input_size": 32})
    torch.testing.assert_close(backbone.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight, rtol=0, atol=0)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_vit_imagenet_weights_are_resized_to_the_input(torch_home):
    import torchvision

    torch_home.mkdir(parents=True)
    reference = torchvision.models.vit_b_32()  # 224 px: 7x7 patches + class token
    name = torchvision.models.get_model_weights("vit_b_32").DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(reference.state_dict(), torch_home / name)
    backbone = BACKBONES.build({"family": "torchvision", "model": "vit_b_32", "weights": "imagenet", "input_size": 64})
    assert backbone.net.encoder.pos_embedding.shape == (1, 2 * 2 + 1, 768)
    assert outputs(backbone, size=64).shape == (2, 768)


def test_imagenet_for_a_net_without_imagenet_weights():
    with pytest.raises(WeightsError) as info:
        BACKBONES.build({"family": "lenet", "weights": "imagenet"})
    assert "lenet" in one_line(info)


def test_offline_check_does_not_hang(monkeypatch):
    """A host that accepts the connection but never replies (as some sandboxes do) counts as offline."""
    import socket

    import tlbench.backbones.weights as weights

    monkeypatch.delenv("TLBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/models/x-0123abcd.pth"
        start = time.perf_counter()
        reason = offline_reason(url)
        assert reason is not None and "does not answer" in reason
        assert time.perf_counter() - start < 3
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    assert "TLBENCH_OFFLINE" in offline_reason("https://download.pytorch.org/models/x.pth")


def test_download_when_online(tmp_path, monkeypatch):
    """The download branch, against a local HTTP server: fetched once, hash-checked, then cached."""
    import functools
    import hashlib
    import http.server
    import threading

    from tlbench.backbones.weights import ImagenetFile, download_to, resolve_imagenet

    monkeypatch.delenv("TLBENCH_OFFLINE", raising=False)
    served = tmp_path / "served"
    served.mkdir()
    payload = served / "payload.pth"
    torch.save({"w": torch.arange(4.0)}, payload)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    good, bad = f"tiny-{digest[:8]}.pth", "tiny-00000000.pth"
    for name in (good, bad):
        (served / name).write_bytes(payload.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        dest = tmp_path / "cache" / good
        spec = ImagenetFile("tiny", dest, f"{base}/{good}", download=lambda: download_to(f"{base}/{good}", dest))
        assert resolve_imagenet(spec) == dest and torch.load(dest)["w"].tolist() == [0, 1, 2, 3]
        server_calls_before = dest.stat().st_mtime_ns
        assert resolve_imagenet(spec) == dest and dest.stat().st_mtime_ns == server_calls_before  # cached
        wrong = tmp_path / "cache" / bad
        spec = ImagenetFile("tiny", wrong, f"{base}/{bad}", download=lambda: download_to(f"{base}/{bad}", wrong))
        with pytest.raises(WeightsError, match="download failed") as info:
            resolve_imagenet(spec)
        assert not wrong.exists() and not list(wrong.parent.glob("*.part"))  # no half-written file left
        one_line(info)
    finally:
        server.shutdown()
