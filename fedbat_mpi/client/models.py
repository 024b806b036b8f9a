"""The paper's networks (docs/FEDBAT.md §2.1): CNN4 for FMNIST/SVHN and ResNet-10 for CIFAR.

Every Conv2d/Linear is bias-free with N(0, 0.01) weights drawn from the global torch RNG (callers seed
it); BatchNorm keeps its default initialisation.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fedbat_mpi.errors import UsageError

MODEL_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "cnn4-mnist": (1, 28, 28),
    "cnn4": (3, 32, 32),
    "resnet10": (3, 32, 32),
}

_INIT_STD = 0.01


def _cnn4(in_channels: int, spatial: int, num_classes: int) -> nn.Sequential:
    """Four conv3x3-BN-ReLU-maxpool2 blocks (32, 64, 128, 256 channels), then one linear layer.

    Each block computes max-pooling before the ReLU: the same values and gradients (the two commute),
    with a quarter of the entries to rectify."""
    layers: list[tuple[str, nn.Module]] = []
    for i, width in enumerate((32, 64, 128, 256), start=1):
        layers += [
            (f"conv{i}", nn.Conv2d(in_channels, width, 3, padding=1, bias=False)),
            (f"bn{i}", nn.BatchNorm2d(width)),
            (f"pool{i}", nn.MaxPool2d(2)),
            (f"relu{i}", nn.ReLU()),
        ]
        in_channels, spatial = width, spatial // 2
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(in_channels * spatial * spatial, num_classes, bias=False))]
    return nn.Sequential(OrderedDict(layers))


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity or 1x1-conv-BN projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet10(nn.Module):
    """CIFAR-style ResNet with one BasicBlock per stage (64/128/256/512), avg-pool 4, linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = BasicBlock(64, 64, 1)
        self.layer2 = BasicBlock(64, 128, 2)
        self.layer3 = BasicBlock(128, 256, 2)
        self.layer4 = BasicBlock(256, 512, 2)
        self.fc = nn.Linear(512, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.fc(out)


def check_model_fits(name: str, image_shape: tuple[int, ...], dataset: str) -> None:
    """A UsageError when model ``name`` cannot take the images of ``dataset`` (C x H x W); an unknown
    name is left to ``build_model``."""
    expected = MODEL_INPUT_SHAPES.get(name)
    if expected is not None and tuple(image_shape) != expected:
        shown = "x".join(map(str, expected)), "x".join(map(str, image_shape))
        raise UsageError(f"--model: {name} takes {shown[0]} images, but --dataset {dataset} holds {shown[1]}")


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build model `name` (a key of MODEL_INPUT_SHAPES) with freshly initialised weights."""
    if name == "cnn4-mnist":
        model: nn.Module = _cnn4(1, 28, num_classes)
    elif name == "cnn4":
        model = _cnn4(3, 32, num_classes)
    elif name == "resnet10":
        model = ResNet10(num_classes)
    else:
        raise UsageError(f"--model: expected one of {', '.join(MODEL_INPUT_SHAPES)}, got {name!r}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
    return model


def binarized_names(model: nn.Module) -> list[str]:
    """State-dict keys of every Conv2d/Linear weight (the tensors FedBAT binarizes), in state_dict order."""
    weights = {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }
    return [key for key in model.state_dict() if key in weights]
