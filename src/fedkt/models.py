"""The four client architectures: LeNet, AlexNet (CIFAR-sized), ResNet-18 and ShuffleNetV2 x1.0.

Every model maps (B, in_channels, H, W) float images to (B, num_classes) logits, for any H, W >= 28.

- `norm="batch"` puts a BatchNorm2d after every convolution of LeNet and AlexNet (the source paper's
  improvement #1); `norm="none"` leaves them without normalization. ResNet-18 and ShuffleNetV2 keep
  their own BatchNorm layers whatever `norm` says.
- `stem="cifar"` (default) gives ResNet-18 / ShuffleNetV2 a 3x3 stride-1 first convolution and no
  max-pool, as usual for 32x32 inputs; `stem="imagenet"` keeps torchvision's original stem. LeNet and
  AlexNet have a single design and accept either value.

Weights are drawn from torch's global RNG: call torch.manual_seed first for a reproducible model.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedkt.config import ARCHITECTURES, NORMS, STEMS



def _conv_block(in_channels, out_channels, kernel_size, norm, stride=1, padding=0):
    """Conv2d, then BatchNorm2d when norm == "batch", then ReLU."""
    use_bn = norm == "batch"
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not use_bn)]
    if use_bn:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class LeNet(nn.Module):
    """LeNet-5 for 32x32 inputs: conv5-6, pool, conv5-16, pool, fc120, fc84, fc out.

    An adaptive average pool to 5x5 before the classifier is an identity at 32x32 and lets other input
    sizes (28, 64, ...) through with the same classifier.
    """

    def __init__(self, num_classes=10, in_channels=3, norm="none"):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 6, 5, norm),
            nn.MaxPool2d(2),
            *_conv_block(6, 16, 5, norm),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((5, 5)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNet(nn.Module):
    """The usual small AlexNet for 32x32 inputs.

    Five 3x3 convolutions (64-192-384-256-256), the first with stride 2, three 2x2 max-pools, then a
    classifier 1024 -> 512 -> 512 -> num_classes with dropout. At 32x32 the features end at 256 x 2 x 2;
    an adaptive average pool keeps that shape for other input sizes.
    """

    def __init__(self, num_classes=10, in_channels=3, norm="none", dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 64, 3, norm, stride=2, padding=1),
            nn.MaxPool2d(2),
            *_conv_block(64, 192, 3, norm, padding=1),
            nn.MaxPool2d(2),
            *_conv_block(192, 384, 3, norm, padding=1),
            *_conv_block(384, 256, 3, norm, padding=1),
            *_conv_block(256, 256, 3, norm, padding=1),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((2, 2)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * 2 * 2, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        # He initialisation of the convolutions: torch's default init shrinks the activations about 20-fold through
        # the five ReLU convolutions, and without BatchNorm the model then stays at its majority class for 10+
        # epochs on a 480-image shard (docs/RESULTS.md, "Every client learns").
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


def resnet18(num_classes=10, in_channels=3, stem="cifar"):
    """torchvision's ResNet-18; the CIFAR stem is a 3x3 stride-1 conv without max-pool."""
    import torchvision  # here, not at the top: importing it takes seconds, and LeNet/AlexNet clients never need it

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def shufflenetv2(num_classes=10, in_channels=3, stem="cifar"):
    """torchvision's ShuffleNetV2 x1.0; the CIFAR stem has conv1 3x3 stride 1 and no max-pool."""
    import torchvision  # here, not at the top: as in resnet18 (seconds to import; LeNet/AlexNet never need it)

    model = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    stride = 1 if stem == "cifar" else 2
    if stem == "cifar" or in_channels != 3:
        out_channels = model.conv1[0].out_channels
        model.conv1[0] = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
    if stem == "cifar":
        model.maxpool = nn.Identity()
    return model


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(allowed)}")


def check_positive_int(name, value):
    """ValueError naming `name` unless value is an int >= 1 (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; expected a positive integer")


def build_model(arch, num_classes=10, in_channels=3, norm="none", stem="cifar"):
    """Build one client model by name. See the module docstring for `norm` and `stem`."""
    _check_choice("arch", arch, ARCHITECTURES)
    _check_choice("norm", norm, NORMS)
    _check_choice("stem", stem, STEMS)
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if arch == "lenet":
        return LeNet(num_classes, in_channels, norm)
    if arch == "alexnet":
        return AlexNet(num_classes, in_channels, norm)
    if arch == "resnet18":
        return resnet18(num_classes, in_channels, stem)
    return shufflenetv2(num_classes, in_channels, stem)


def _inputs_channels_last(module, args):
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def to_channels_last(model):
    """The model with its 4-D weights stored channels-last (NHWC) and its inputs converted on the way in, so every
    convolution runs in that layout: the same function, other rounding. On a 2-core Xeon it makes a LeNet and a
    ShuffleNetV2 step 0.6-0.9x as long and an AlexNet or ResNet-18 step 1.0-1.15x (docs/RESULTS.md)."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_inputs_channels_last)
    return model


def to_bfloat16_autocast(model):
    """The model with its forward pass under torch.autocast to bfloat16 on the model's device: convolutions and
    matrix products in bfloat16, weights, optimizer and the returned logits in float32 (losses stay float32). Fast
    where the CPU has AMX or AVX-512 BF16 units (AlexNet steps 0.5-0.75x on a Xeon), emulated and slower elsewhere
    (fedkt.config.cpu_bfloat16_units). The instance's forward is wrapped, so its state_dict, and saved states, do
    not change."""
    forward = model.forward
    device_type = next(model.parameters()).device.type

    def forward_in_bfloat16(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs).float()

    model.forward = forward_in_bfloat16
    return model


def live_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int]:
    """Along one dimension of a zero-padded convolution (no dilation): (first, last, out), a range of kernel taps
    that holds every tap reading the input itself, not its padding, at some output position, and the output size.

    Output position o reads input index o * stride - padding + j with tap j, o in [0, out). Tap j can read the
    input only if -padding + j <= size - 1 (at o = 0) and (out - 1) * stride - padding + j >= 0 (at the last o):
    taps outside first..last multiply zeros at every position. At stride 1 the range is exact; at larger strides
    a tap inside it may still read only padding (the reads step over the input), and is kept."""
    out = (size + 2 * padding - kernel) // stride + 1
    return max(0, padding - (out - 1) * stride), min(kernel - 1, size - 1 + padding), out


def _forward_live_taps(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) computed with only the kernel's live taps (live_taps): the same sum without the terms that are
    zero, so the same function and the same gradients (exactly zero for the dropped taps in both), other rounding."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    h, w = x.shape[-2:]
    first_h, last_h, out_h = live_taps(h, kh, sh, ph)
    first_w, last_w, out_w = live_taps(w, kw, sw, pw)
    if (first_h, last_h, first_w, last_w) != (0, kh - 1, 0, kw - 1) and first_h <= last_h and first_w <= last_w:
        # The kept taps with the padding less the taps dropped before them; conv2d pads both sides alike, so
        # this holds only where it gives the same output size (else the whole kernel runs, as before).
        pad = (ph - first_h, pw - first_w)
        if ((h + 2 * pad[0] - (last_h - first_h + 1)) // sh + 1 == out_h
                and (w + 2 * pad[1] - (last_w - first_w + 1)) // sw + 1 == out_w):
            weight = conv.weight[:, :, first_h:last_h + 1, first_w:last_w + 1]
            return F.conv2d(x, weight, conv.bias, conv.stride, pad, 1, conv.groups)
    return conv._conv_forward(x, conv.weight, conv.bias)


def skip_padding_taps(model):
    """The model with every zero-padded convolution computing only the kernel taps that read its input at the
    input's size (live_taps). With the ImageNet stem on 32x32 images, ResNet-18's last stage runs 3x3 kernels on
    1x1 maps, where 8 of 9 taps only ever read padding, and the backward pass of such a convolution takes seven
    times its forward: skipping them makes a ResNet-18 distillation step about 0.85x as long (docs/RESULTS.md;
    ShuffleNetV2's last depthwise convolutions gain too; LeNet and AlexNet, and the CIFAR stem, have no such
    taps). The instance's convolutions' forwards are replaced, so the state_dict, and saved states, do not change."""
    for conv in model.modules():
        if (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and conv.dilation == (1, 1)
                and not isinstance(conv.padding, str) and any(conv.padding)):
            conv.forward = functools.partial(_forward_live_taps, conv)
    return model


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_arrays(model):
    """The model's whole state (parameters and buffers, in state_dict order) as numpy arrays: what FedAvg
    sends and averages."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def load_model_arrays(model, arrays):
    """Load arrays from model_arrays (maybe averaged: cast back to each entry's dtype) into the model."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"expected {len(state)} arrays for this model, got {len(arrays)}")
    new = {}
    for (name, tensor), array in zip(state.items(), arrays):
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(f"{name}: expected shape {tuple(tensor.shape)}, got {tuple(array.shape)}")
        new[name] = torch.as_tensor(array).to(dtype=tensor.dtype)
    model.load_state_dict(new)
