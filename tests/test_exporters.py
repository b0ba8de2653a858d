"""Models the tests export from PyTorch with both exporters, at a fixed batch of 1, through the
whole pipeline: they convert, cross-check against onnxruntime, pass gradients to the input, run
noise batches of 16, and agree with the PyTorch model they came from.

The dynamo exporter writes opset 18; asked for 13 or 17 it warns and keeps 18 for most models
(onnx's version converter has no adapters down from Relu-14 / ReduceMean-18), so it is tested at
18 and the TorchScript exporter at 13 and 17.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphs as G
import pytest
import torch
from onnx import numpy_helper

from onnx_infodiscard.check import prepare

EXPORTS = [("torchscript", 13), ("torchscript", 17), ("dynamo", 18)]
CNNS = {"vgg": G.VGGLike, "resnet": G.ResNetLike, "mobilenet": G.MobileNetLike, "layernorm_gelu": G.ConvNextLike}
BATCH_RTOL = 1e-4


def _export(factory, tmp_path_factory, name: str, exporter: str, opset: int):
    torch.manual_seed(0)
    model = G.randomise_batchnorm(factory()).eval()
    path = tmp_path_factory.mktemp(name) / f"{name}_{exporter}_{opset}.onnx"
    G.export(model, path, dynamo=exporter == "dynamo", opset=opset)
    return model, path


@pytest.fixture(
    scope="module", params=[(m, e, o) for m in CNNS for e, o in EXPORTS], ids=lambda p: f"{p[0]}-{p[1]}{p[2]}"
)
def exported_cnn(request, tmp_path_factory):
    """(torch model, path, prepared pipeline at every layer of the graph) for one export."""
    name, exporter, opset = request.param
    model, path = _export(CNNS[name], tmp_path_factory, name, exporter, opset)
    return model, path, prepare(path, ["*"])


def _batch(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def _assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = BATCH_RTOL) -> None:
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-12)
    assert float((got - want).abs().max() / scale) <= rtol


def test_every_layer_converts_and_cross_checks(exported_cnn):
    _, _, prepared = exported_cnn
    assert prepared.crosscheck.passed
    assert len(prepared.layers) >= 8
    for agreement in prepared.crosscheck.layers:
        assert agreement.rel_l2_error <= 1e-4 or agreement.max_abs_error <= 1e-6, agreement
    assert prepared.normalised.input_shape == (1, 3, 32, 32)


def test_auto_layers_cross_check(exported_cnn):
    _, path, _ = exported_cnn
    prepared = prepare(path)
    assert prepared.crosscheck.passed
    assert 1 <= len(prepared.layers) <= 6
    assert all(layer.activation for layer in prepared.layers)


def test_matches_the_pytorch_model(exported_cnn):
    """The graph output of the converted module is the original model's output."""
    model, _, prepared = exported_cnn
    x = _batch(4)
    with torch.no_grad():
        logits = prepared.module(x)[prepared.layers[-1].name]
        _assert_close(logits, model(x), rtol=1e-4)


def test_gradients_reach_the_input(exported_cnn):
    _, _, prepared = exported_cnn
    for layer in prepared.layers:
        x = _batch(2).requires_grad_(True)
        prepared.module(x)[layer.name].square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), layer.name
        assert x.grad.abs().sum() > 0, layer.name
        assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0, layer.name


def test_batch_16_matches_single_runs(exported_cnn):
    """Exported with batch 1, the module runs a batch of 16 natively and gives per-sample features."""
    _, _, prepared = exported_cnn
    assert prepared.conversion.batch_safe, "batch surgery should make these CNNs batch-free"
    x = _batch(16)
    with torch.no_grad():
        batched = prepared.module(x)
        singles = [prepared.module(x[i : i + 1]) for i in range(16)]
    for layer in prepared.layers:
        assert batched[layer.name].shape[0] == 16
        _assert_close(batched[layer.name], torch.cat([s[layer.name] for s in singles]))


# --- ViT: a class token folded into a batch-1 constant -------------------------------------------


@pytest.fixture(scope="module", params=EXPORTS, ids=lambda p: f"{p[0]}{p[1]}")
def exported_vit(request, tmp_path_factory):
    exporter, opset = request.param
    model, path = _export(G.TinyViT, tmp_path_factory, "vit", exporter, opset)
    return model, prepare(path, ["auto", "-1"])


def test_vit_batched_noise_is_never_silently_wrong(exported_vit):
    """Either the graph became batch-free, or the module runs one sample at a time; either way a
    batch of 16 gives the per-sample features and the PyTorch model's logits."""
    model, prepared = exported_vit
    assert prepared.crosscheck.passed
    x = _batch(16, seed=3)
    with torch.no_grad():
        batched = prepared.module(x)
        singles = [prepared.module(x[i : i + 1]) for i in range(16)]
        logits = model(x)
    for layer in prepared.layers:
        _assert_close(batched[layer.name], torch.cat([s[layer.name] for s in singles]))
    _assert_close(batched[prepared.layers[-1].name], logits)


def test_vit_class_token_is_expanded_to_the_batch(exported_vit):
    """The class token, folded into a [1, 1, D] constant, is expanded at run time: the graph runs
    batches natively rather than falling back to one sample at a time."""
    _, prepared = exported_vit
    assert "expand_batch_constants" in [p.name for p in prepared.normalised.passes]
    assert prepared.conversion.batch_safe


def test_batch_mixing_graph_falls_back_per_sample(tmp_path):
    """A graph that mixes samples when batched, with every shape still right: the batch-safety
    check notices, the module runs one sample at a time, and its features are the model's."""
    torch.manual_seed(0)
    model = G.BatchFolding().eval()
    prepared = prepare(G.export(model, tmp_path / "folding.onnx", dynamo=False, opset=17), ["auto", "-1"])
    assert prepared.crosscheck.passed
    assert not prepared.conversion.batch_safe
    module = prepared.module
    x = _batch(16, seed=4)
    with torch.no_grad():
        batched = module(x)
        expected = torch.cat([model(x[i : i + 1]) for i in range(16)])
        raw = module._run(x)  # the graph run batched, without the fallback
    out = prepared.layers[-1].name
    _assert_close(batched[out], expected)
    assert raw[out].shape == expected.shape and not torch.allclose(raw[out], expected, rtol=1e-3)
    for layer in prepared.layers:
        singles = [module(x[i : i + 1])[layer.name] for i in range(16)]
        _assert_close(batched[layer.name], torch.cat(singles))
    x.requires_grad_(True)
    module(x[:3])[out].sum().backward()
    assert all(x.grad[i].abs().sum() > 0 for i in range(3))


def test_vit_gradients_reach_the_input(exported_vit):
    _, prepared = exported_vit
    x = _batch(3).requires_grad_(True)
    features = prepared.module(x)
    sum(f.square().sum() for f in features.values()).backward()
    assert torch.isfinite(x.grad).all() and all(x.grad[i].abs().sum() > 0 for i in range(3))


# --- NHWC graph as tf2onnx writes Keras models ---------------------------------------------------


def test_nhwc_keras_like_graph(tmp_path):
    model = G.nhwc_keras_like(size=32)
    path = G.save(model, tmp_path / "keras_like.onnx")
    prepared = prepare(path, ["auto", "-1"])
    assert prepared.crosscheck.passed
    assert prepared.normalised.input_shape == (1, 32, 32, 3)
    assert [layer.name for layer in prepared.layers] == ["conv1/Relu:0", "conv2/Relu:0", "dense"]
    assert prepared.conversion.batch_safe

    # The converted module agrees with onnxruntime on the original graph, at batch 16.
    import onnxruntime as ort

    x = np.random.default_rng(2).random((16, 32, 32, 3), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(["dense"], {"input_1": x})
    with torch.no_grad():
        got = prepared.module(torch.from_numpy(x))["dense"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    xt = torch.from_numpy(x[:2]).requires_grad_(True)
    prepared.module(xt)["conv2/Relu:0"].sum().backward()
    assert xt.grad.abs().sum() > 0


def test_nhwc_graph_keeps_its_reshape_batch_free(tmp_path):
    """tf2onnx flattens with Reshape [-1, n]; normalisation must not hard-code a batch into it."""
    prepared = prepare(G.save(G.nhwc_keras_like(), tmp_path / "m.onnx"), ["-1"])
    shapes = {init.name: numpy_helper.to_array(init) for init in prepared.conversion.truncated.graph.initializer}
    assert shapes["flatten/shape"].tolist()[0] in (-1, 0)
    assert onnx.checker.check_model(prepared.conversion.truncated) is None
