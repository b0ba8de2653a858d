"""Small models and graphs the tests build themselves: PyTorch modules to export, and ONNX graphs
written with `onnx.helper` (NHWC Keras-style graphs, broken models). Random weights only."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO_NAMES = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)


def zoo_path(name: str) -> Path:
    return ZOO / f"light_{name}.onnx"


# --- PyTorch models to export ------------------------------------------------------------------


class VGGLike(nn.Module):
    """Plain conv/relu/maxpool stack; `reshape(batch, -1)` hard-codes batch 1 in a fixed export."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(x.reshape(x.shape[0], -1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    """Conv-BN-ReLU stem, two residual blocks (one downsampling), a final BN-ReLU, global pool,
    flatten, linear. Exporters fold a BN that follows a Conv into it; the final one follows a ReLU,
    so a BatchNormalization node stays in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = BasicBlock(8, 8, 1)
        self.block2 = BasicBlock(8, 16, 2)
        self.final = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MobileNetLike(nn.Module):
    """Inverted residual with a depthwise conv, hard-swish, and a squeeze-excitation gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), nn.BatchNorm2d(24), nn.Hardswish()
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(24, 8, 1), nn.ReLU(), nn.Conv2d(8, 24, 1), nn.Hardsigmoid()
        )
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.depthwise(self.expand(x))
        y = self.project(y * self.se(y))
        x = x + y
        return self.head(x.mean((2, 3)))


class ConvNextLike(nn.Module):
    """Depthwise conv, then channels-last LayerNorm + Linear + GELU + Linear, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.dwconv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
        self.head_norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        x = x + y
        return self.head(self.head_norm(x.mean((2, 3))))


class TinyViT(nn.Module):
    """Patch embedding, class token, one pre-norm attention block with a GELU MLP."""

    def __init__(self, dim: int = 32, heads: int = 4, patch: int = 8, size: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.1)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        batch, tokens, dim = x.shape
        x = torch.cat([self.cls.expand(batch, -1, -1), x], dim=1) + self.pos
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens + 1, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens + 1, dim))
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


class BatchFolding(nn.Module):
    """Written for batch 1: `reshape(4, -1)` folds channel groups into dim 0 and `reshape(-1, ...)`
    unfolds them. At batch N the group statistics mix samples while every shape stays right, so a
    batched run is silently wrong; no surgery can tell, and only the per-sample loop is correct."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        groups = y.reshape(4, -1)
        y = (groups - groups.mean(1, keepdim=True)).reshape(-1, 8, 32, 32)
        return torch.relu(self.conv2(y))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine weights, so a BN that is skipped or fed batch
    statistics shows up in the features."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def export(model: nn.Module, path: Path, dynamo: bool, opset: int, size: int = 32) -> Path:
    """Export with a fixed batch of 1 (no dynamic axes), as most users' exports are."""
    torch.manual_seed(0)
    model = randomise_batchnorm(model).eval()
    x = torch.rand(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            # The dynamo exporter prints progress to stdout; keep test output readable.
            with open(os.devnull, "w") as devnull, _redirect_stdout(devnull):
                torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset, external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["image"])
    return path


def _redirect_stdout(stream):
    import contextlib

    return contextlib.redirect_stdout(stream)


# --- graphs written with onnx.helper -----------------------------------------------------------


def _weights(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def save(model: onnx.ModelProto, path: Path, check: bool = True) -> Path:
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def nhwc_keras_like(size: int = 32) -> onnx.ModelProto:
    """What tf2onnx writes for a Keras CNN: an NHWC input with an unknown batch dim, a Transpose to
    NCHW right after it, convolutions, and a Transpose back before a flattening Reshape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(_weights(rng, 8, 3, 3, 3), "conv1/kernel"),
        numpy_helper.from_array(_weights(rng, 8, scale=0.1), "conv1/bias"),
        numpy_helper.from_array(_weights(rng, 16, 8, 3, 3), "conv2/kernel"),
        numpy_helper.from_array(_weights(rng, 16, scale=0.1), "conv2/bias"),
        numpy_helper.from_array(np.array([-1, 16 * (size // 4) ** 2], dtype=np.int64), "flatten/shape"),
        numpy_helper.from_array(_weights(rng, 16 * (size // 4) ** 2, 10, scale=0.05), "dense/kernel"),
        numpy_helper.from_array(_weights(rng, 10, scale=0.1), "dense/bias"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["conv1__6:0"], name="transpose_in", perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv",
            ["conv1__6:0", "conv1/kernel", "conv1/bias"],
            ["conv1/BiasAdd:0"],
            name="conv1",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv1/BiasAdd:0"], ["conv1/Relu:0"], name="conv1/Relu"),
        helper.make_node("MaxPool", ["conv1/Relu:0"], ["pool1:0"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Conv",
            ["pool1:0", "conv2/kernel", "conv2/bias"],
            ["conv2/BiasAdd:0"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv2/BiasAdd:0"], ["conv2/Relu:0"], name="conv2/Relu"),
        helper.make_node("MaxPool", ["conv2/Relu:0"], ["pool2:0"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["pool2:0"], ["pool2__nhwc:0"], name="transpose_out", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["pool2__nhwc:0", "flatten/shape"], ["flatten/Reshape:0"], name="flatten"),
        helper.make_node("MatMul", ["flatten/Reshape:0", "dense/kernel"], ["dense/MatMul:0"], name="dense/MatMul"),
        helper.make_node("Add", ["dense/MatMul:0", "dense/bias"], ["dense/BiasAdd:0"], name="dense/BiasAdd"),
        helper.make_node("Softmax", ["dense/BiasAdd:0"], ["dense"], name="dense/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_like",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__6", size, size, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__7", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx", ir_version=8)


def small_cnn(
    nodes_before: Sequence[onnx.NodeProto] = (),
    input_type: int = TensorProto.FLOAT,
    opset: int = 13,
    first: str = "x",
    extra_inits: Sequence[onnx.TensorProto] = (),
    conv_weight: np.ndarray | None = None,
) -> onnx.ModelProto:
    """x -> [nodes_before] -> Conv -> Relu -> GlobalAveragePool: the base of most broken models.

    `first` is the tensor the Conv reads (the output of `nodes_before`, or the input itself).
    """
    rng = np.random.default_rng(1)
    weight = _weights(rng, 4, 3, 3, 3) if conv_weight is None else conv_weight
    inits = [numpy_helper.from_array(weight, "conv.weight"), *extra_inits]
    nodes = [
        *nodes_before,
        helper.make_node(
            "Conv", [first, "conv.weight"], ["conv_out"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pooled"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", input_type, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 1, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
