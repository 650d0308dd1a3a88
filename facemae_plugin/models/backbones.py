"""Face recognisers whose state_dict matches arcface_torch's backbones.

`get_backbone(name)` builds IResNet-18/34/50/100 or MobileFaceNet for aligned 112x112 faces.
Module names, parameter/buffer keys and tensor shapes equal those of arcface_torch's
`backbones.get_model(name)`, so an arcface_torch `model.pt` loads into ours with
`strict=True` and ours loads into arcface_torch. The forward pass computes the same
function: input `[N, 3, 112, 112]` (RGB, normalised to [-1, 1]), output `[N, num_features]`
(embeddings before L2 normalisation).
"""
from typing import Dict, Optional

import torch
from torch import nn

from ..core.errors import CheckpointError, UsageError
from .activations import PReLU
from .weights import is_tensor_dict, load_weights_file

IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}
KNOWN_NETWORKS = tuple(IRESNET_LAYERS) + ("mbf",)


def _autocast(x: torch.Tensor, enabled: bool):
    """Mixed precision on whatever device `x` lives on (fp16 on CUDA, bf16 on CPU)."""
    return torch.autocast(device_type=x.device.type, enabled=enabled)


# ----------------------------------------------------------------------------- IResNet

def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN-conv-BN-PReLU-conv(stride)-BN, plus shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C_in, H, W]
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut  # [N, C, H / stride, W / stride]


def _iresnet_stage(in_channels: int, channels: int, num_blocks: int) -> nn.Sequential:
    """One stage: a strided block that halves the resolution, then `num_blocks - 1` plain ones."""
    # Every stage changes resolution (stride 2), so the first block always needs a projection.
    downsample = nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, stride=2, bias=False),
        nn.BatchNorm2d(channels, eps=1e-5),
    )
    blocks = [IBasicBlock(in_channels, channels, stride=2, downsample=downsample)]
    blocks += [IBasicBlock(channels, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class IResNet(nn.Module):
    """ArcFace's improved ResNet for 112x112 faces (four stride-2 stages down to 7x7)."""

    final_resolution = 7  # 112 / 2**4

    def __init__(self, layers, num_features: int = 512, dropout: float = 0.0, fp16: bool = False):
        super().__init__()
        self.fp16 = fp16
        self.num_features = num_features  # the embedding's width
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = PReLU(64)
        widths = (64, 128, 256, 512)
        in_widths = (64,) + widths[:-1]
        self.layer1 = _iresnet_stage(in_widths[0], widths[0], layers[0])
        self.layer2 = _iresnet_stage(in_widths[1], widths[1], layers[1])
        self.layer3 = _iresnet_stage(in_widths[2], widths[2], layers[2])
        self.layer4 = _iresnet_stage(in_widths[3], widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.final_resolution ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The embedding BN keeps a fixed unit scale (only its shift is learnt), as in arcface_torch.
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 112, 112]
        with _autocast(x, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))  # [N, 64, 112, 112]
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, 512, 7, 7]
            x = self.dropout(torch.flatten(self.bn2(x), 1))  # [N, 25088]
        x = self.fc(x.float() if self.fp16 else x)  # [N, F], the head runs in fp32
        return self.features(x)


# ------------------------------------------------------------------------ MobileFaceNet

class StridedDepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution with a stride, run in float32 under CPU autocast: oneDNN's bf16
    kernels for it (forward and both gradients) are several times slower than its float32 ones
    (``benchmarks/train_bench.py``). Elsewhere it is ``nn.Conv2d``; its output under CPU autocast is
    float32, which the next layers take as it is (BatchNorm, PReLU) or cast back (a convolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _conv(in_channels, out_channels, kernel, stride, padding, groups) -> nn.Conv2d:
    depthwise = groups > 1 and groups == in_channels == out_channels
    conv = StridedDepthwiseConv2d if depthwise and stride > 1 else nn.Conv2d
    return conv(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)


class ConvBlock(nn.Module):
    """Conv-BN-PReLU."""

    def __init__(self, in_channels, out_channels, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            _conv(in_channels, out_channels, kernel, stride, padding, groups),
            nn.BatchNorm2d(out_channels),
            PReLU(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv-BN without activation (the projection end of a bottleneck)."""

    def __init__(self, in_channels, out_channels, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `hidden`, 3x3 depthwise, 1x1 project; optional residual."""

    def __init__(self, in_channels, out_channels, hidden, stride=1, residual=False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_channels, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num_blocks` shape-preserving bottlenecks with identity shortcuts."""

    def __init__(self, channels, num_blocks, hidden):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, hidden, residual=True) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, 1, 1]
        return x.reshape(x.size(0), -1)  # [N, C]


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise conv, then linear + BN to the embedding."""

    def __init__(self, num_features: int):
        super().__init__()
        # Index positions matter: keys are features.layers.{0,2,3}.*, Flatten holds index 1.
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, groups=512),
            Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 512, 7, 7]
        return self.layers(x)  # [N, F]


class MobileFaceNet(nn.Module):
    """arcface_torch's `mbf`: MobileFaceNet with width scale 2 and blocks (1, 4, 6, 2)."""

    def __init__(self, num_features: int = 512, fp16: bool = False):
        super().__init__()
        self.fp16 = fp16
        self.num_features = num_features  # the embedding's width
        self.layers = nn.ModuleList([
            ConvBlock(3, 128, kernel=3, stride=2, padding=1),             # [N, 128, 56, 56]
            ConvBlock(128, 128, kernel=3, padding=1, groups=64),
            DepthWise(128, 128, hidden=128, stride=2),                    # [N, 128, 28, 28]
            Residual(128, num_blocks=4, hidden=128),
            DepthWise(128, 256, hidden=256, stride=2),                    # [N, 256, 14, 14]
            Residual(256, num_blocks=6, hidden=256),
            DepthWise(256, 256, hidden=512, stride=2),                    # [N, 256, 7, 7]
            Residual(256, num_blocks=2, hidden=256),
        ])
        self.conv_sep = ConvBlock(256, 512)                               # [N, 512, 7, 7]
        self.features = GDC(num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 112, 112]
        with _autocast(x, self.fp16):
            for layer in self.layers:
                x = layer(x)  # [N, 256, 7, 7] at the end
        x = self.conv_sep(x.float() if self.fp16 else x)  # head in fp32
        return self.features(x)  # [N, F]


# ---------------------------------------------------------------------------- factories

def get_backbone(name: str, num_features: int = 512, fp16: bool = False,
                 dropout: float = 0.0) -> nn.Module:
    """Build recogniser `name` (r18, r34, r50, r100, mbf) with arcface_torch's state_dict layout.

    fp16: run the convolutional body under autocast (fp16 on CUDA, bf16 on CPU); the
    embedding head stays fp32. dropout: before the fc layer (IResNet only; mbf has none).
    """
    if name in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[name], num_features=num_features, dropout=dropout, fp16=fp16)
    if name == "mbf":
        if dropout:
            raise ValueError(f"network 'mbf' has no dropout layer, got dropout={dropout}; "
                             "use dropout=0.0")
        return MobileFaceNet(num_features=num_features, fp16=fp16)
    raise UsageError(f"unknown network {name!r}; expected one of {', '.join(KNOWN_NETWORKS)}")


def _embedding_size(state_dict: Dict[str, torch.Tensor], name: str) -> Optional[int]:
    """The embedding width stored in a checkpoint (the final BatchNorm1d's size), if present."""
    key = "features.layers.3.running_mean" if name == "mbf" else "features.running_mean"
    tensor = state_dict.get(key)
    return None if tensor is None else int(tensor.shape[0])


def _strip_ddp_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Checkpoints saved from a DistributedDataParallel wrapper prefix every key with 'module.'."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def _mismatch_report(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """Empty when `state_dict` fits `model` exactly, else a one-line summary of what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if k in state_dict
                and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if keys:
            parts.append(f"{len(keys)} {label} key(s) (e.g. {keys[0]})")
    return "; ".join(parts)


def _load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The backbone state_dict in an arcface_torch `model.pt` (weights_only, a DDP prefix removed)."""
    state_dict = load_weights_file(path, "recogniser model.pt", map_location="cpu")
    if not is_tensor_dict(state_dict):
        raise CheckpointError(f"{path} is not a backbone state_dict (expected a dict of tensors, "
                              f"as arcface_torch saves in model.pt)")
    return _strip_ddp_prefix(state_dict)


def stored_embedding_size(path: str, name: str) -> int:
    """The embedding width of the `name` network in the `model.pt` at `path` (512 where it does not say)."""
    return _embedding_size(_load_state_dict(path), name) or 512


def load_backbone(path: str, name: str, device: str = "cpu",
                  num_features: Optional[int] = None, fp16: bool = False) -> nn.Module:
    """Load an arcface_torch `model.pt` (a backbone state_dict) into a fresh `name` network.

    Loading is strict and uses `torch.load(weights_only=True)`. num_features: embedding
    width; None reads it from the file. fp16: as `get_backbone`'s. Returns the network on
    `device` in eval mode.
    """
    state_dict = _load_state_dict(path)
    if num_features is None:
        num_features = _embedding_size(state_dict, name) or 512
    model = get_backbone(name, num_features=num_features, fp16=fp16)
    problems = _mismatch_report(model, state_dict)
    if problems:
        raise CheckpointError(f"{path} does not fit network {name!r}: {problems}; "
                         f"was it trained with another network?")
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()
