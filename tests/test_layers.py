"""Listing and choosing layers, truncation, and the converted module's eval-mode guarantees."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import onnx_graphs as G
import pytest
import torch
from torch import nn

from onnx_infodiscard import layouts as L
from onnx_infodiscard.check import open_model, prepare
from onnx_infodiscard.convert import convert, truncate
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.layers import auto_layers, auto_selection, list_layers, select_layers, selection
from onnx_infodiscard.passes import normalise


@pytest.fixture(scope="module")
def vgg_path(tmp_path_factory):
    return G.export(G.VGGLike(), tmp_path_factory.mktemp("vgg") / "vgg.onnx", dynamo=False, opset=17)


@pytest.fixture(scope="module")
def vgg(vgg_path):
    return open_model(vgg_path)[1]


@pytest.fixture(scope="module")
def zoo_resnet50():
    return open_model(G.zoo_path("resnet50"))[1]


@pytest.fixture(scope="module")
def zoo_inception():
    return open_model(G.zoo_path("inception_v1"))[1]


RELU_1 = "/features/features.1/Relu_output_0"
RELU_3 = "/features/features.3/Relu_output_0"
RELU_6 = "/features/features.6/Relu_output_0"


# --- listing -----------------------------------------------------------------------------------


def test_layers_are_listed_in_graph_order_with_shapes(vgg):
    layers = list_layers(vgg)
    assert [layer.index for layer in layers] == list(range(len(layers)))
    names = [layer.name for layer in layers]
    assert len(set(names)) == len(names)
    assert names.index(RELU_1) < names.index(RELU_3) < names.index(RELU_6)
    by_name = {layer.name: layer for layer in layers}
    assert by_name[RELU_1].shape == ("N", 8, 32, 32)
    assert by_name[RELU_6].op_type == "Relu"
    assert layers[-1].shape == ("N", 10)


@pytest.mark.parametrize("fixture", ["vgg", "zoo_inception", "zoo_resnet50"])
def test_relative_depth_runs_from_0_to_1_and_grows_along_every_edge(fixture, request):
    model = request.getfixturevalue(fixture)
    layers = list_layers(model)
    depth = {layer.name: layer.depth for layer in layers}
    depth[model.input_name] = 0.0
    assert all(0.0 < layer.depth <= 1.0 for layer in layers)
    output = model.proto.graph.output[0].name
    assert depth[output] == 1.0
    edges = 0
    for node in model.proto.graph.node:
        for out in node.output:
            if out in depth:
                for src in node.input:
                    if src in depth:
                        assert depth[src] < depth[out], (src, out)
                        edges += 1
    assert edges >= len(layers)


def test_relative_depth_increases_with_index_in_a_chain(vgg):
    depths = [layer.depth for layer in list_layers(vgg)]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)


# --- selection ---------------------------------------------------------------------------------


def test_select_by_exact_name(vgg):
    layers = list_layers(vgg)
    (chosen,) = select_layers(layers, [RELU_3])
    assert chosen.name == RELU_3 and chosen.op_type == "Relu"


def test_select_by_index_including_negative(vgg):
    layers = list_layers(vgg)
    assert select_layers(layers, ["0"]) == [layers[0]]
    assert select_layers(layers, ["-1"]) == [layers[-1]]
    assert select_layers(layers, [f"-{len(layers)}"]) == [layers[0]]
    assert select_layers(layers, ["3", "-2"]) == [layers[3], layers[-2]]
    with pytest.raises(InputError, match=r"out of range.*0\.\.\d+"):
        select_layers(layers, [str(len(layers))])
    with pytest.raises(InputError, match="out of range"):
        select_layers(layers, [f"-{len(layers) + 1}"])


def test_select_by_glob(vgg):
    chosen = select_layers(list_layers(vgg), ["/features/*/Relu_output_0"])
    assert [layer.name for layer in chosen] == [RELU_1, RELU_3, RELU_6]
    with pytest.raises(InputError, match="matches no layer"):
        select_layers(list_layers(vgg), ["/nothing/*"])


def test_selection_is_in_graph_order_without_duplicates(vgg):
    layers = list_layers(vgg)
    chosen = select_layers(layers, ["-1", RELU_3, "/features/*/Relu_output_0", "auto"])
    assert [layer.index for layer in chosen] == sorted({layer.index for layer in chosen})
    assert [layer.name for layer in chosen] == [RELU_1, RELU_3, RELU_6, layers[-1].name]


def test_unknown_name_lists_three_close_names(vgg):
    with pytest.raises(InputError) as err:
        select_layers(list_layers(vgg), ["/features/features.3/Relu_outptu_0"])
    suggestions = re.findall(r"'([^']*)'", str(err.value).split("did you mean", 1)[1])
    assert len(suggestions) == 3 and RELU_3 in suggestions


def test_auto_on_a_small_model_takes_the_spatial_activations(vgg):
    """Three ReLUs have spatial extent; the head's ReLU (after the flatten) is not a feature map."""
    chosen = select_layers(list_layers(vgg), ["auto"])
    assert [layer.name for layer in chosen] == [RELU_1, RELU_3, RELU_6]


def test_auto_on_resnet50_is_six_evenly_spaced_relus_before_the_head(zoo_resnet50):
    layers = list_layers(zoo_resnet50)
    chosen = select_layers(layers, ["auto"])
    assert len(chosen) == 6
    assert all(layer.op_type == "Relu" and layer.activation for layer in chosen)
    assert all(layer.shape[2] * layer.shape[3] > 1 for layer in chosen)
    spatial_relus = [layer for layer in layers if layer.op_type == "Relu" and layer.shape[2] > 1]
    assert len(spatial_relus) == 49
    positions = [spatial_relus.index(layer) for layer in chosen]
    gaps = np.diff([-1, *positions])
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert chosen[-1] == spatial_relus[-1]  # the last feature map before global pooling
    head_start = next(layer.index for layer in layers if layer.op_type == "AveragePool" and layer.shape[2] == 1)
    assert all(layer.index < head_start for layer in chosen)
    assert [layer.depth for layer in chosen] == sorted(layer.depth for layer in chosen)


def test_auto_takes_composite_activations_not_their_gates(tmp_path):
    """Hard-swish exported at opset 13 is `x * HardSigmoid(x)`; GELU is `x * 0.5 * (1 + erf(..))`.
    auto takes the products (the activations), not the gate or the erf."""
    mobilenet = open_model(G.export(G.MobileNetLike(), tmp_path / "m.onnx", dynamo=False, opset=13))[1]
    chosen = auto_layers(list_layers(mobilenet))
    assert [layer.op_type for layer in chosen] == ["Mul", "Mul", "Mul"]
    convnext = open_model(G.export(G.ConvNextLike(), tmp_path / "c.onnx", dynamo=False, opset=13))[1]
    (gelu,) = auto_layers(list_layers(convnext))
    assert gelu.op_type == "Mul" and gelu.shape == ("N", 8, 8, 64)
    # The squeeze-excitation ReLU works on a 1x1 map: not a feature map, not chosen.
    assert all("/se/" not in layer.name for layer in chosen)


# --- truncation ----------------------------------------------------------------------------------


def _ancestors(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Nodes (by first output) that the tensors `names` depend on, computed independently."""
    producer = {out: node for node in model.graph.node for out in node.output}
    needed, stack = set(), list(names)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.output[0] not in needed:
            needed.add(node.output[0])
            stack.extend(node.input)
    return sorted(needed)


def test_truncation_keeps_only_the_nodes_the_layer_needs(vgg):
    chosen = select_layers(list_layers(vgg), [RELU_3])
    truncated = truncate(vgg, chosen)
    assert [node.op_type for node in truncated.graph.node] == ["Conv", "Relu", "Conv", "Relu"]
    assert [output.name for output in truncated.graph.output] == [RELU_3]
    assert len(truncated.graph.initializer) == 4  # two conv weights and biases, not the head's
    module = convert(vgg, chosen).module
    called = [node.target for node in module.graph_module.graph.nodes if node.op == "call_module"]
    assert len(called) == 4


def test_truncation_on_a_branching_graph_stops_at_the_deepest_layer(zoo_inception):
    layers = list_layers(zoo_inception)
    chosen = select_layers(layers, [str(len(layers) // 3), str(len(layers) // 2)])
    truncated = truncate(zoo_inception, chosen)
    kept = sorted(node.output[0] for node in truncated.graph.node)
    assert kept == _ancestors(zoo_inception.proto, {layer.name for layer in chosen})
    deepest = max(layer.index for layer in chosen)
    assert all(name in {layer.name for layer in layers[: deepest + 1]} for name in kept)
    assert len(kept) < deepest + 1 < len(layers)  # other branches and the head are left out


# --- the converted module ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_prepared(tmp_path_factory):
    model = G.randomise_batchnorm(G.ResNetLike())
    path = G.export(model, tmp_path_factory.mktemp("resnet") / "resnet.onnx", dynamo=False, opset=13)
    return prepare(path, ["*Relu*"])


def test_batch_norm_running_stats_unchanged_after_batched_runs(resnet_prepared):
    module = resnet_prepared.module
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "the exported ResNet-like keeps a BatchNormalization node"
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()  # a caller may do this; the module stays in eval mode
    assert not any(m.training for m in module.modules())
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    features = module(x)
    sum(f.sum() for f in features.values()).backward()
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    # Running statistics, not batch statistics: one sample's features do not depend on the batch.
    with torch.no_grad():
        single = module(x[:1].detach())
    for name, feature in features.items():
        torch.testing.assert_close(feature[:1].detach(), single[name], rtol=1e-4, atol=1e-5)


def test_module_weights_are_frozen(resnet_prepared):
    assert not any(p.requires_grad for p in resnet_prepared.module.parameters())


# --- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, hint, expected",
    [
        ((1, 256, 56, 56), "unknown", "nchw"),
        ((1, 56, 56, 384), "unknown", "nhwc"),  # Swin-T's stage-1 map: not NCHW with C = 56
        ((1, 56, 56, 96), "nhwc", "nhwc"),
        ((1, 64, 112, 112), "nchw", "nchw"),
        ((64, 49, 96), "unknown", "windows"),  # window-partitioned tokens: batch × 64 windows
        ((1, 8, 7, 8, 7, 96), "unknown", "windows"),
        ((1, 197, 768), "unknown", "tokens"),
        ((1, 2048, 1, 1), "nchw", "nchw"),
        ((1, 1000), "unknown", "vector"),
        (None, "unknown", "unknown"),
    ],
)
def test_layout_from_shape_and_producer(shape, hint, expected):
    assert L.from_shape(shape, hint, "N", 224, 224) == expected


def test_text_recogniser_maps_with_unequal_strides_are_nchw():
    """PaddleOCR's recogniser pools height to 1 and keeps width/4: (N, C, 1, 80) of a 48×320 input."""
    assert L.from_shape(("N", 480, 1, 80), "unknown", "N", 48, 320) == "nchw"


def test_transpose_permutes_a_known_layout():
    assert L.transposed("nchw", (0, 2, 3, 1)) == "nhwc"
    assert L.transposed("nhwc", (0, 3, 1, 2)) == "nchw"
    assert L.transposed("nchw", (0, 1, 3, 2)) == "other"


def test_convnext_channels_last_mlp_is_nhwc(tmp_path):
    convnext = open_model(G.export(G.ConvNextLike(), tmp_path / "c.onnx", dynamo=False, opset=13))[1]
    (gelu,) = auto_layers(list_layers(convnext))
    assert gelu.layout == "nhwc" and gelu.spatial


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    """torchvision's own Swin Transformer, small, exported by TorchScript with a dynamic batch: its
    shapes run through Shape/Gather chains that static inference leaves unknown."""
    from torchvision.models.swin_transformer import SwinTransformer

    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4], num_classes=10
    ).eval()
    path = tmp_path_factory.mktemp("swin") / "swin.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.rand(1, 3, 32, 32),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            dynamic_axes={"image": {0: "N"}},
        )
    return open_model(path)[1]


def test_auto_on_swin_takes_its_channels_last_maps_not_windows(swin):
    layers = list_layers(swin)
    chosen, note = auto_selection(layers)
    assert [(layer.shape, layer.layout) for layer in chosen] == [(("N", 8, 8, 64), "nhwc")] * 2 + [
        (("N", 4, 4, 128), "nhwc")
    ] * 2
    assert "only 4" in note
    assert any(layer.layout == "windows" for layer in layers)  # the attention's partitioned tokens
    assert all(layer.layout != "windows" for layer in chosen)


def test_vit_tokens_are_feature_maps(tmp_path):
    vit = open_model(G.export(G.TinyViT(), tmp_path / "v.onnx", dynamo=False, opset=17))[1]
    chosen = auto_layers(list_layers(vit))
    assert chosen and all(layer.layout == "tokens" for layer in chosen)


def _graph_with_unknown_op() -> onnx.ModelProto:
    """conv → relu → an op nobody knows → three more conv/relu pairs."""
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2")
    make = onnx.helper.make_node
    nodes = [
        make("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
        make("Relu", ["c1"], ["r1"], name="relu1"),
        make("Frobnicate", ["r1"], ["f"], domain="com.example", name="frob"),
    ]
    name = "f"
    for i in range(2, 5):
        nodes += [
            make("Conv", [name, "w2"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"),
            make("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        name = f"r{i}"
    image = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 16, 16])
    graph = onnx.helper.make_graph(
        nodes, "g", [image], [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)], [w1, w2]
    )
    return onnx.helper.make_model(
        graph,
        ir_version=8,
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)],
    )


def test_auto_says_why_it_kept_one_layer_before_an_unknown_op():
    layers = list_layers(normalise(_graph_with_unknown_op()))
    chosen = selection(layers, ["auto"])
    assert [layer.name for layer in chosen.layers] == ["r1"]
    (note,) = chosen.notes
    assert "kept 1 layer" in note and "3 of unknown shape" in note and "'frob' (Frobnicate)" in note


def test_auto_is_silent_when_it_finds_enough(zoo_resnet50):
    assert selection(list_layers(zoo_resnet50), ["auto"]).notes == ()
