"""models.py: timm registry, create_model (names, heads, offline weights), check_input, stats."""

from __future__ import annotations

import pytest
import timm
import torch

from kaggle_kit import KitError
from kaggle_kit.models import check_input, create_model, model_stats

TINY = "test_resnet.r160_in1k"  # timm's own test net: ~0.5 M params


def test_registry_lists_kit_nets():
    assert {"kit_resnet9", "kit_resnet9_s", "kit_baseline_cnn", "kit_vgg16", "kit_vgg19"} <= set(
        timm.list_models("kit_*"))
    m = timm.create_model("kit_resnet9", num_classes=15)
    assert m.pretrained_cfg["input_size"] == (3, 32, 32)
    assert m.pretrained_cfg["num_classes"] == 1000 and m.num_classes == 15


@pytest.mark.parametrize(("name", "size"), [("kit_resnet9", 32), ("kit_resnet9", 64),
                                            ("kit_baseline_cnn", 64), ("kit_baseline_cnn", 32),
                                            ("test_resnet", 32)])
def test_forward_shapes(name, size):
    m = create_model(name, 15, drop_rate=0.1)
    out = m(torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 15)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_kit_resnet9_width_and_drop_path():
    small = timm.create_model("kit_resnet9", num_classes=3, width_mult=0.5, drop_path_rate=0.1)
    big = timm.create_model("kit_resnet9", num_classes=3)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters()) / 3
    assert create_model("kit_resnet9", 3, drop_path_rate=0.2).stages[0][1].drop_path.drop_prob == 0.2


def test_unknown_name_suggests_close_timm_names():
    with pytest.raises(KitError, match=r"resnet_18: unknown model; did you mean resnet18"):
        create_model("resnet_18", 10)
    with pytest.raises(KitError, match="kit_resnet9"):
        create_model("kit_resnet", 10)


def test_unsupported_kwarg_is_a_kit_error():
    with pytest.raises(KitError, match="drop_path_rate"):
        create_model("vgg11", 10, drop_path_rate=0.1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_round_trip(tmp_path, suffix):
    src = create_model(TINY, 15)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # weights unlike any fresh init
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save({"model": src.state_dict(), "epoch": 3}, path)  # a training checkpoint
    same = create_model(TINY, 15, pretrained_file=str(path))
    for (k, a), b in zip(src.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = create_model(TINY, 4, pretrained_file=str(path))  # new head, same trunk
    assert other.get_classifier().out_features == 4
    sd = other.state_dict()
    head = other.pretrained_cfg["classifier"]
    trunk = [k for k in sd if not k.startswith(head)]
    assert len(trunk) == len(sd) - 2
    assert all(torch.equal(sd[k], src.state_dict()[k]) for k in trunk)


def test_pretrained_file_for_kit_net(tmp_path):
    src = create_model("kit_resnet9", 15)
    torch.save(src.state_dict(), tmp_path / "kit.pth")
    again = create_model("kit_resnet9", 15, pretrained_file=str(tmp_path / "kit.pth"))
    assert torch.equal(again.head.weight, src.head.weight)
    x = torch.randn(2, 3, 32, 32)
    src.eval(), again.eval()
    assert torch.allclose(src(x), again(x))


def test_pretrained_file_from_another_competitions_run(tmp_path):
    """A fold's model.pt of a run on another competition (10 classes) initialises a 15-class net:
    the trunk is copied, the head is new (pretraining on a related competition)."""
    src = create_model("kit_resnet9", 10)
    torch.save({"model": src.state_dict(), "config": {"competition": "cifar10-mini"}},
               tmp_path / "model.pt")
    net = create_model("kit_resnet9", 15, pretrained_file=str(tmp_path / "model.pt"))
    assert net.head.weight.shape[0] == 15
    trunk = [k for k in src.state_dict() if not k.startswith("head")]
    assert trunk and all(torch.equal(net.state_dict()[k], src.state_dict()[k]) for k in trunk)


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(KitError, match="nope.pth not found"):
        create_model(TINY, 3, pretrained_file=str(tmp_path / "nope.pth"))
    torch.save(create_model("kit_resnet9", 3).state_dict(), tmp_path / "kit.pth")
    with pytest.raises(KitError, match="does not fit"):
        create_model(TINY, 3, pretrained_file=str(tmp_path / "kit.pth"))
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(KitError, match="not a readable weights file"):
        create_model(TINY, 3, pretrained_file=str(tmp_path / "junk.pth"))


def test_pretrained_without_weights_is_a_kit_error():
    with pytest.raises(KitError, match="pretrained"):
        create_model("kit_resnet9", 3, pretrained=True)


def test_check_input():
    m = create_model("vgg11", 10)
    check_input(m, 32)
    with pytest.raises(KitError, match=r"vgg11 cannot take 16x16 inputs.*data.image_size >= 32"):
        check_input(m, 16)
    assert m.training  # mode restored


def test_model_stats():
    assert model_stats(create_model("vgg11", 3)) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = model_stats(create_model("kit_resnet9", 3))
    assert len(mean) == len(std) == 3 and all(0 < s < 1 for s in std)


def test_kit_vgg_small_head():
    m = create_model("kit_vgg16", 15, drop_rate=0.2)
    assert m.get_classifier().in_features == 512 and m.head.drop.p == 0.2
    assert sum(p.numel() for p in m.parameters()) < 20e6  # timm's vgg16 head alone is 120 M
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 15)
    assert model_stats(m)[0] == (0.485, 0.456, 0.406)  # ImageNet stats: its weights' inputs


@pytest.mark.slow
def test_kit_vgg_pretrained_file_round_trip(tmp_path):
    src = create_model("kit_vgg16", 15)
    torch.save({"model": src.state_dict()}, tmp_path / "kit_vgg.pth")
    same = create_model("kit_vgg16", 15, pretrained_file=str(tmp_path / "kit_vgg.pth"))
    assert torch.equal(same.head.fc.weight, src.head.fc.weight)
    other = create_model("kit_vgg16", 4, pretrained_file=str(tmp_path / "kit_vgg.pth"))
    assert torch.equal(other.features[0].weight, src.features[0].weight)
    assert other.head.fc.out_features == 4
