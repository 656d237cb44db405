"""Client architectures: shapes, the BatchNorm option, the two stems, argument errors."""

import itertools

import pytest
import torch
import torch.nn as nn

from fedkt import models
from fedkt.models import (ARCHITECTURES, NORMS, STEMS, build_model, count_parameters, live_taps, skip_padding_taps,
                          to_channels_last)


def _forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _convs_and_followers(model):
    """(conv, module right after it) for every Conv2d, in registration order (our models are sequential)."""
    modules = [m for m in model.modules() if not isinstance(m, (nn.Sequential,)) and m is not model
               and not list(m.children())]
    return [(m, modules[i + 1] if i + 1 < len(modules) else None) for i, m in enumerate(modules)
            if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch,norm,stem", list(itertools.product(ARCHITECTURES, NORMS, STEMS)))
def test_every_combination_builds_and_outputs_logits(arch, norm, stem):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, norm=norm, stem=stem)
    out = _forward(model, torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("size", [28, 32, 64])
def test_grayscale_seven_classes_any_size(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=1, norm="batch")
    out = _forward(model, torch.randn(2, 1, size, size))
    assert out.shape == (2, 7)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_step_runs_and_changes_weights(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("arch", ["lenet", "alexnet"])
def test_norm_batch_puts_batchnorm_after_every_conv(arch):
    model = build_model(arch, norm="batch")
    pairs = _convs_and_followers(model)
    assert len(pairs) == (2 if arch == "lenet" else 5)
    for conv, follower in pairs:
        assert isinstance(follower, nn.BatchNorm2d)
        assert follower.num_features == conv.out_channels
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == len(pairs)


@pytest.mark.parametrize("arch", ["lenet", "alexnet"])
def test_norm_none_has_no_normalization(arch):
    model = build_model(arch, norm="none")
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norm_types) for m in model.modules())
    assert len(_convs_and_followers(model)) == (2 if arch == "lenet" else 5)


def test_lenet_is_lenet5():
    model = build_model("lenet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [(l.in_features, l.out_features) for l in linears] == [(400, 120), (120, 84), (84, 10)]


def test_alexnet_conv_widths_and_dropout():
    model = build_model("alexnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())



def test_alexnet_keeps_its_signal_through_the_convolutions_without_batchnorm():
    """With torch's default init the activations shrink ~20-fold through AlexNet's five ReLU convolutions (std
    0.34 -> 0.018) and the model stays at its majority class for 10+ epochs without BatchNorm; He init keeps them."""
    torch.manual_seed(0)
    model = build_model("alexnet", norm="none").eval()
    h, stds = torch.randn(64, 3, 32, 32), []
    with torch.no_grad():
        for layer in model.features:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                stds.append(h.std().item())
    assert len(stds) == 5 and stds[-1] / stds[0] > 0.5

@pytest.mark.parametrize("norm", NORMS)
def test_big_models_keep_their_own_batchnorm(norm):
    for arch in ("resnet18", "shufflenetv2"):
        model = build_model(arch, norm=norm)
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_parameters(build_model("resnet18", norm="none")) == count_parameters(
        build_model("resnet18", norm="batch"))


def test_resnet18_stems():
    cifar, imagenet = build_model("resnet18", stem="cifar"), build_model("resnet18", stem="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.padding == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    # The CIFAR stem keeps 32x32 resolution into layer1; the ImageNet stem divides it by 4.
    x = torch.randn(1, 3, 32, 32)
    stem = lambda m: m.maxpool(m.relu(m.bn1(m.conv1(x))))  # noqa: E731
    with torch.no_grad():
        assert stem(cifar.eval()).shape[-1] == 32
        assert stem(imagenet.eval()).shape[-1] == 8


def test_shufflenetv2_stems():
    cifar, imagenet = build_model("shufflenetv2", stem="cifar"), build_model("shufflenetv2", stem="imagenet")
    assert cifar.conv1[0].kernel_size == (3, 3) and cifar.conv1[0].stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1[0].stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert count_parameters(cifar) == count_parameters(imagenet)


def test_imagenet_stem_with_one_channel():
    model = build_model("resnet18", in_channels=1, stem="imagenet")
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    model = build_model("shufflenetv2", in_channels=1, stem="imagenet")
    assert model.conv1[0].in_channels == 1 and model.conv1[0].stride == (2, 2)


@pytest.mark.parametrize("kwargs,name", [
    (dict(arch="vgg16"), "arch"),
    (dict(arch="lenet", norm="group"), "norm"),
    (dict(arch="resnet18", stem="tiny"), "stem"),
    (dict(arch="lenet", num_classes=0), "num_classes"),
    (dict(arch="lenet", in_channels=-1), "in_channels"),
])
def test_bad_arguments_raise_clear_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        build_model(**kwargs)
    if name in ("arch", "norm", "stem"):
        assert "allowed" in str(info.value)


def test_torchvision_is_imported_only_for_its_models():
    """A deployed ClientApp process starts for every message: LeNet/AlexNet clients skip torchvision's
    seconds-long import."""
    import subprocess
    import sys

    code = ("import sys, fedkt.client_app, fedkt.server_app\n"
            "from fedkt.models import build_model\n"
            "build_model('lenet'); build_model('alexnet')\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "build_model('shufflenetv2')\n"
            "assert 'torchvision' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_channels_last_is_the_same_function_in_another_layout(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, norm="batch")
    x = torch.randn(4, 3, 32, 32)  # an ordinary NCHW batch: the model converts it on the way in
    expected = _forward(model, x)
    fast = to_channels_last(model)
    convs = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(not w.is_contiguous() for w in convs if w.shape[2] * w.shape[3] > 1 and w.shape[1] > 1)
    seen = []
    handle = next(m for m in fast.modules() if isinstance(m, nn.Conv2d)).register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(_forward(fast, x), expected, rtol=1e-4, atol=1e-5)
    handle.remove()
    assert seen == [True]


def test_live_taps_hold_every_tap_that_reads_the_input():
    """Against enumerating every output position and tap: the range holds them all, and no more at stride 1."""
    for size, kernel, stride, padding in itertools.product(range(1, 7), range(1, 6), range(1, 4), range(0, 4)):
        out = (size + 2 * padding - kernel) // stride + 1
        if out < 1:
            continue
        live = [j for j in range(kernel) if any(0 <= o * stride - padding + j < size for o in range(out))]
        first, last, got_out = live_taps(size, kernel, stride, padding)
        assert got_out == out and all(first <= j <= last for j in live), (size, kernel, stride, padding)
        if stride == 1:
            assert (first, last) == (live[0], live[-1]), (size, kernel, padding)


@pytest.mark.parametrize("size,kernel,stride,padding,groups", [
    (1, 3, 1, 1, 1), (2, 3, 2, 1, 1), (2, 3, 1, 1, 4), (1, 3, 2, 1, 4), (3, 5, 1, 2, 1), (2, 5, 2, 2, 2),
    (1, 7, 2, 3, 1), (4, 3, 1, 1, 1), (5, 3, 2, 1, 2)])
def test_skipping_padding_taps_is_the_same_convolution_and_gradient(size, kernel, stride, padding, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4 * groups, kernel, stride=stride, padding=padding, groups=groups)
    fast = skip_padding_taps(nn.Sequential(nn.Conv2d(8, 4 * groups, kernel, stride=stride, padding=padding,
                                                     groups=groups)))[0]
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(3, 8, size, size + 1)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [conv(xs[0]), fast(xs[1])]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(outs[0])
    outs[0].backward(grad)
    outs[1].backward(grad)
    for a, b in ((conv.weight.grad, fast.weight.grad), (conv.bias.grad, fast.bias.grad), (xs[0].grad, xs[1].grad)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    first_h, last_h, _ = live_taps(size, kernel, stride, padding)
    dead = torch.ones(kernel, dtype=torch.bool)
    dead[first_h:last_h + 1] = False
    assert torch.all(fast.weight.grad[:, :, dead, :] == 0)  # the dropped taps get exactly no gradient


@pytest.mark.parametrize("arch", ["resnet18", "shufflenetv2"])
def test_skipping_padding_taps_in_the_imagenet_stem_models(arch, monkeypatch):
    """ResNet-18's and ShuffleNetV2's last stage runs on 1x1 and 2x2 maps with the ImageNet stem at 32x32: those
    convolutions run smaller kernels, the logits and the state_dict stay the same."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, norm="batch", stem="imagenet")
    x = torch.randn(4, 3, 32, 32)
    expected, keys = _forward(model, x), list(model.state_dict())
    kernels = []
    conv2d = models.F.conv2d
    def spy(x, weight, *args):  # the whole kernels are the modules' Parameters, the smaller ones views of them
        if not isinstance(weight, nn.Parameter):
            kernels.append(tuple(weight.shape[2:]))
        return conv2d(x, weight, *args)
    monkeypatch.setattr(models.F, "conv2d", spy)
    fast = skip_padding_taps(model)
    torch.testing.assert_close(_forward(fast, x), expected, rtol=1e-4, atol=1e-5)
    assert kernels == ([(2, 2)] * 2 + [(1, 1)] * 3 if arch == "shufflenetv2" else [(2, 2)] + [(1, 1)] * 3)
    assert list(fast.state_dict()) == keys
    kernels.clear()
    _forward(fast, torch.randn(2, 3, 64, 64))  # larger images: every tap reads the input, nothing skipped
    assert kernels == []
