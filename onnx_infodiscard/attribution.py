"""Attribution maps to compare with CID's sensitivity map (issue #7): Captum methods, model-free controls.

The Captum methods run on the same converted torch module the analysis uses, fed the canonical
image (preprocessing inside), so every method sees exactly one function. Maps are (H, W), larger =
more relevant, at the model's input resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import fx, nn

from .convert import FeatureExtractor, copied_graph
from .errors import InputError

#: Methods that need the model (CID is computed by the analysis itself).
MODEL_METHODS = ("cid", "gradcam", "gradient", "ig")
#: Maps that look only at the pixels (or not even those): a benchmark they solve supports no claim.
CONTROLS = ("brightness", "contrast", "edges", "center")
#: Integrated gradients: Riemann steps from the black canonical image.
IG_STEPS = 32


class Classifier(nn.Module):
    """Canonical image -> class scores (B, classes), with an Identity probe after each chosen layer.

    `extractor` must output the chosen layers and, last, the class scores. The probes are real
    modules in the fx graph, so Captum's layer methods can hook them whatever op made the layer.
    """

    def __init__(self, preprocess: nn.Module, extractor: FeatureExtractor, layers: Sequence[str]):
        super().__init__()
        self.preprocess = preprocess
        self.probe_names = {layer: f"probe_{i}" for i, layer in enumerate(layers)}
        self.graph_module = _scores_with_probes(extractor, self.probe_names)
        self.batch_safe = extractor.batch_safe
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_safe and x.shape[0] > 1:
            return torch.cat([self(sample[None]) for sample in x])
        scores = self.graph_module(self.preprocess(x))
        return scores.reshape(scores.shape[0], -1)

    def probe(self, layer: str) -> nn.Module:
        return self.graph_module.get_submodule(self.probe_names[layer])


def _scores_with_probes(extractor: FeatureExtractor, probe_names: dict[str, str]) -> fx.GraphModule:
    """A copy of the extractor's graph that returns only the scores, each layer routed through a probe."""
    graph, remap, outputs = copied_graph(extractor.graph_module)
    graph.output(remap[outputs[-1]])
    module = fx.GraphModule(extractor.graph_module, graph)
    for layer, name in probe_names.items():
        node = remap[outputs[extractor.names.index(layer)]]
        module.add_submodule(name, nn.Identity())
        with module.graph.inserting_after(node):
            probe = module.graph.call_module(name, (node,))
        node.replace_all_uses_with(probe, delete_user_cb=lambda user, probe=probe: user is not probe)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def model_map(
    method: str,
    classifier: Classifier,
    images: torch.Tensor,
    targets: Sequence[int],
    layer: str | None = None,
    chunk: int = 16,
) -> np.ndarray:
    """(N, H, W) maps of a Captum method for `images` (N, C, H, W) canonical, class `targets`."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    maps = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].clone().requires_grad_(True)
        target = torch.as_tensor(list(targets[start : start + chunk]), device=x.device)
        if method == "gradient":  # Simonyan et al.: |∂score/∂x|, max over channels
            found = Saliency(classifier).attribute(x, target=target, abs=True).amax(1)
        elif method == "ig":  # Sundararajan et al., black baseline; |attribution| summed over channels
            found = (
                IntegratedGradients(classifier)
                .attribute(
                    x,
                    baselines=torch.zeros_like(x),
                    target=target,
                    n_steps=IG_STEPS,
                    internal_batch_size=chunk * 4,
                )
                .abs()
                .sum(1)
            )
        elif method == "gradcam":  # Selvaraju et al. at the chosen layer, ReLU, upsampled bilinearly
            cam = LayerGradCam(classifier, classifier.probe(layer)).attribute(x, target=target, relu_attributions=True)
            if cam.dim() != 4:
                raise InputError(f"Grad-CAM needs a spatial layer (C×H×W); '{layer}' has shape {tuple(cam.shape[1:])}")
            found = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear").sum(1)
        else:
            raise InputError(f"unknown method '{method}'; choose from {', '.join(MODEL_METHODS)}")
        maps.append(found.detach().float().cpu().numpy())
    return np.concatenate(maps).astype(np.float64)


def control_map(control: str, image: np.ndarray) -> np.ndarray:
    """A model-free map of a canonical (C, H, W) image."""
    gray = np.asarray(image, dtype=np.float64).mean(0)
    if control == "brightness":
        return gray
    if control == "contrast":  # local standard deviation in a 5×5 window
        mean = ndimage.uniform_filter(gray, 5)
        return np.sqrt(np.maximum(ndimage.uniform_filter(gray**2, 5) - mean**2, 0.0))
    if control == "edges":  # Sobel gradient magnitude
        return np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    if control == "center":  # a Gaussian centred in the image, σ = a quarter of each side
        height, width = gray.shape
        rows = (np.arange(height) - (height - 1) / 2) / (height / 4)
        columns = (np.arange(width) - (width - 1) / 2) / (width / 4)
        return np.exp(-0.5 * (rows[:, None] ** 2 + columns[None, :] ** 2))
    raise InputError(f"unknown control '{control}'; choose from {', '.join(CONTROLS)}")
