"""Backbones: output stride, weights from a file or the (offline) weights API, freezing, param groups."""

import urllib.error

import pytest
import torch
import torchvision

from rmi.errors import InputError
from rmi.models.backbones import build_backbone, dilated_resnet101
from rmi.models.segmenter import build_model

DIMS = dict(visual_dim=16, embed_dim=8, lstm_dim=8, mlstm_dim=8, mlp_dim=8)
RANDOM = {"pretrained": False, "freeze_trunk": True, "weights_path": None}
TOKENS = torch.tensor([[0, 2, 3], [4, 5, 6]])
IMAGE_OF = torch.tensor([0, 0])


def images(u: int = 1, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (u, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """A random torchvision ResNet-101 state_dict saved as a file, and the same as a DeepLab one."""
    torch.manual_seed(0)
    state = dilated_resnet101().state_dict()
    root = tmp_path_factory.mktemp("weights")
    torch.save(state, root / "resnet101.pth")
    torch.save({f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}, root / "deeplab101.pth")
    return state, root


def test_resnet101_weights_from_local_file(resnet_files):
    state, root = resnet_files
    cfg = {**RANDOM, "weights_path": str(root / "resnet101.pth")}
    model = build_model("resnet101", "rmi", 10, {**DIMS, "visual_dim": 1000}, cfg)
    assert torch.equal(model.trunk.body.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert torch.equal(model.visual_proj.weight[:, :, 0, 0], state["fc.weight"])
    assert torch.equal(model.visual_proj.bias, state["fc.bias"])
    assert model.visual_proj.weight.requires_grad  # fc1000 is trained
    with torch.no_grad():
        assert model.trunk(images()).shape == (1, 2048, 8, 8)  # output stride 8
        assert model(TOKENS, IMAGE_OF, images=images()).shape == (2, 1, 8, 8)


def test_deeplab101_weights_from_local_file(resnet_files):
    state, root = resnet_files
    trunk, proj = build_backbone("deeplab101", 16, {**RANDOM, "weights_path": str(root / "deeplab101.pth")})
    assert torch.equal(trunk.body.conv1.weight, state["conv1.weight"])
    assert proj.weight.shape == (16, 2048, 1, 1) and torch.all(proj.bias == 0)


def test_weights_path_argument_wins_and_bad_files_are_named(resnet_files, tmp_path):
    _, root = resnet_files
    with pytest.raises(InputError) as err:  # a ResNet file is not a DeepLab one
        build_backbone("deeplab101", 16, RANDOM, weights_path=str(root / "resnet101.pth"))
    assert "resnet101.pth" in str(err.value) and "backbone.conv1.weight" in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pth: cannot read weights"):
        build_backbone("resnet101", 1000, RANDOM, weights_path=str(junk))
    with pytest.raises(InputError, match="missing.pth"):
        build_backbone("resnet101", 1000, {**RANDOM, "weights_path": str(tmp_path / "missing.pth")})


@pytest.mark.parametrize("name", ["resnet101", "deeplab101"])
def test_missing_pretrained_weights_offline_is_one_clear_line(name, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(InputError) as err:
        build_backbone(name, 1000, {**RANDOM, "pretrained": True})
    msg = str(err.value)
    assert "\n" not in msg
    assert f"backbones.{name}.weights_path" in msg and f"snakemake data/weights/{name}.pth" in msg


def test_config_errors():
    with pytest.raises(InputError, match="model.visual_dim: must be 1000"):
        build_backbone("resnet101", 64, RANDOM)
    with pytest.raises(InputError, match="backbones.tiny"):
        build_backbone("tiny", 64, {**RANDOM, "pretrained": True})
    with pytest.raises(InputError, match="unknown backbone"):
        build_backbone("vgg16", 64, RANDOM)
    with pytest.raises(InputError, match="unknown fusion"):
        build_model("tiny", "attention", 10, DIMS, RANDOM)


def tiny(fusion: str, frozen: bool):
    torch.manual_seed(0)
    return build_model("tiny", fusion, 10, DIMS, {**RANDOM, "freeze_trunk": frozen})


def test_frozen_trunk_gets_no_grads_and_keeps_batchnorm_stats():
    model = tiny("rmi", frozen=True).train()
    assert model.frozen_trunk and not model.trunk.training and model.fusion.training
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    model(TOKENS, IMAGE_OF, images=images()).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.trunk.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.trunk.state_dict().items())
    assert model.visual_proj.weight.grad is not None


def test_unfrozen_trunk_trains():
    model = tiny("lstm", frozen=False).train()
    assert not model.frozen_trunk and model.trunk.training
    bn = model.trunk.body.local[1]
    before = bn.running_mean.clone()
    model(TOKENS, IMAGE_OF, images=images()).sum().backward()
    assert model.trunk.body.local[0].weight.grad is not None and model.trunk.body.fuse[0].weight.grad is not None
    assert not torch.equal(bn.running_mean, before)
    model.eval()
    assert not model.trunk.training


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("fusion", ["lstm", "rmi"])
def test_param_groups_partition_trainable_params(fusion, frozen):
    model = tiny(fusion, frozen)
    groups = {g["name"]: g for g in model.param_groups(1e-3, 5e-4, 2.0)}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    decayed = {id(p) for p in groups["conv_weights"]["params"]}
    assert groups["conv_weights"]["weight_decay"] == 5e-4 and groups["conv_weights"]["lr"] == 1e-3
    assert groups["conv_biases"]["weight_decay"] == 0 and groups["conv_biases"]["lr"] == 2e-3
    assert groups["other"]["weight_decay"] == 0 and groups["other"]["lr"] == 1e-3
    head = model.fusion.mlp if fusion == "lstm" else model.fusion.mlstm
    assert id(model.visual_proj.weight) in decayed and id(model.fusion.classifier.weight) in decayed
    assert (id(head.weight) in decayed) == (fusion == "lstm")  # mLSTM weight: no decay
    assert id(model.fusion.language.embedding.weight) not in decayed
    assert any(id(p) in set(trainable) for p in model.trunk.parameters()) == (not frozen)
    torch.optim.Adam(list(groups.values()))  # a valid optimizer spec
