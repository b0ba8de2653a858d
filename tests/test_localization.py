"""Box rule, IoU, pointing game and deletion curve on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_infodiscard.localization import box_from_map, deletion_curve, iou, localized, pointing_hit


def _map_with_blobs() -> np.ndarray:
    attribution = np.zeros((20, 30))
    attribution[4:10, 5:15] = 1.0  # the larger region
    attribution[15:17, 25:27] = 0.9  # a smaller one above the threshold
    attribution[0, 0] = 0.2  # below it
    return attribution


def test_box_is_the_largest_connected_region_above_the_fraction():
    assert box_from_map(_map_with_blobs(), 0.5) == (5, 4, 15, 10)


def test_a_lower_fraction_grows_the_box():
    attribution = np.zeros((10, 10))
    attribution[4:6, 4:6] = 1.0
    attribution[3:7, 3:7] += 0.3
    assert box_from_map(attribution, 0.9) == (4, 4, 6, 6)
    assert box_from_map(attribution, 0.2) == (3, 3, 7, 7)


def test_iou_of_known_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_localisation_and_pointing_on_a_map_with_a_known_answer():
    truth = (5, 4, 15, 10)
    assert localized(_map_with_blobs(), truth)
    assert not localized(_map_with_blobs(), (20, 12, 30, 20))
    assert pointing_hit(_map_with_blobs(), truth)
    assert not pointing_hit(_map_with_blobs(), (25, 15, 27, 17))


def test_deletion_curve_rewards_the_map_of_the_region_the_model_uses():
    """A 'model' whose score is the mean of one region: deleting that region first drops it fastest."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.5, 1.0, (1, 16, 16)).astype(np.float32)
    score = lambda batch: batch[:, 0, 2:6, 2:6].mean(axis=(1, 2))  # noqa: E731
    right = np.zeros((16, 16))
    right[2:6, 2:6] = 1.0
    wrong = np.zeros((16, 16))
    wrong[10:14, 10:14] = 1.0
    curve, area_right = deletion_curve(score, image, right, steps=16)
    _, area_wrong = deletion_curve(score, image, wrong, steps=16)
    assert curve.shape == (17, 2) and curve[0, 0] == 0 and curve[-1, 0] == 1
    assert curve[-1, 1] == 0.0  # everything deleted
    assert area_right < area_wrong
    assert curve[1, 1] == pytest.approx(0.0)  # the first 1/16 of pixels is exactly the used region
    # A per-channel baseline fills each channel with its own value.
    two = np.stack([image[0], image[0]])
    curve, _ = deletion_curve(lambda b: b[:, 1, 2:6, 2:6].mean(axis=(1, 2)), two, right, steps=16, baseline=[0.0, 0.25])
    assert curve[1, 1] == pytest.approx(0.25)
