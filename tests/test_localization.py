"""Box rule, IoU, pointing game, deletion curves and scores, and choices made by cross-validation, on
inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_infodiscard.localization import (
    DEFAULT_FRACTION,
    best_option,
    box_from_map,
    cross_validated_accuracy,
    cross_validated_choice,
    deletion_curve,
    deletion_score,
    fraction_preference,
    image_folds,
    iou,
    localized,
    pointing_hit,
    sweep_hits,
)


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


def test_folds_partition_the_images_and_depend_only_on_the_seed():
    folds = image_folds(23, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert all(np.array_equal(a, b) for a, b in zip(folds, image_folds(23, 5, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, image_folds(23, 5, seed=4)))
    assert len(image_folds(3, 5)) == 3  # never more folds than images


def _adversarial_hits(n: int = 20, k: int = 5, seed: int = 0) -> np.ndarray:
    """Option f hits every image except those of fold f: 0.8 on all images, but on the images
    outside fold f option f is perfect, so choosing on them always picks the option that misses fold f."""
    hits = np.ones((n, k), dtype=bool)
    for f, fold in enumerate(image_folds(n, k, seed)):
        hits[fold, f] = False
    return hits


def test_cross_validation_differs_from_tuning_on_all_images_on_an_adversarial_set():
    hits = _adversarial_hits()
    assert hits[:, best_option(hits)].mean() == pytest.approx(0.8)  # tuned on the test images themselves
    cv = cross_validated_accuracy(hits, k=5, seed=0)
    assert cv.accuracy == 0.0 and cv.se == 0.0
    assert cv.chosen == (0, 1, 2, 3, 4)  # fold f gets option f, the one that misses it
    assert cross_validated_accuracy(hits, k=5, seed=1).accuracy > 0  # other folds: the trap is not sprung


def test_a_held_out_image_never_influences_its_own_choice():
    rng = np.random.default_rng(0)
    hits = rng.random((30, 19)) < 0.4
    cv = cross_validated_accuracy(hits, k=5, seed=7)
    for f, fold in enumerate(cv.folds):
        changed = hits.copy()
        changed[list(fold)] = rng.random((len(fold), 19)) < 0.9  # rewrite the held-out images' hits
        changed[list(fold), cv.chosen[f]] = False
        again = cross_validated_accuracy(changed, k=5, seed=7)
        assert again.chosen[f] == cv.chosen[f] and again.folds == cv.folds
    # ... while the images a fold is chosen on do decide it.
    adversarial = _adversarial_hits(30, 5, 7)
    assert cross_validated_accuracy(adversarial, k=5, seed=7).chosen == (0, 1, 2, 3, 4)


def test_ties_go_to_the_fraction_nearest_the_fixed_one_then_the_first_group():
    fractions = (0.1, 0.3, 0.5, 0.7)
    hits = np.array([[1, 0, 1, 1], [0, 1, 1, 1]], dtype=bool)
    assert best_option(hits, fraction_preference(fractions)) == 2
    assert best_option(np.ones((2, 3), dtype=bool), fraction_preference((0.1, 0.7, 0.3))) == 1  # 0.7 and 0.3: first
    two_grids = np.concatenate([hits, hits], axis=1)
    assert best_option(two_grids, fraction_preference(fractions, 2)) == 2  # the first grid's 0.5
    assert DEFAULT_FRACTION == 0.5


def test_a_map_and_its_fraction_are_chosen_together_on_the_training_folds_only():
    """Two lattices: the coarse one hits every image at 0.3 except fold f's, where only the fine one
    hits (at 0.7). Choosing on the other folds always prefers coarse 0.3: the held-out images are lost."""
    fractions = (0.3, 0.5, 0.7)
    n, folds = 15, image_folds(15, 5, seed=2)
    fine, coarse = np.zeros((n, 3), dtype=bool), np.ones((n, 3), dtype=bool)
    coarse[:, 1:] = False
    for fold in folds[:1]:
        coarse[fold, 0], fine[fold, 2] = False, True
    cv, chosen = cross_validated_choice([fine, coarse], fractions, k=5, seed=2)
    assert chosen[0] == (1, 0.3) and cv.accuracy == pytest.approx(12 / 15)  # fold 0 lost, the rest kept
    assert all(choice == (1, 0.3) for choice in chosen)
    both = np.concatenate([fine, coarse], axis=1)
    assert both[:, best_option(both)].mean() == pytest.approx(12 / 15)


def test_cross_validation_needs_two_images():
    cv = cross_validated_accuracy(np.ones((1, 3), dtype=bool))
    assert np.isnan(cv.accuracy) and cv.chosen == ()


def test_sweep_hits_a_peaked_map_only_at_a_low_fraction():
    attribution = np.full((20, 20), 0.2)
    attribution[:, 10:] = 0.0
    attribution[5, 5] = 1.0  # a single peak inside the box: at 0.5 the box is one pixel
    hits = sweep_hits(attribution[None], [(0, 0, 10, 20)], (0.1, 0.5))
    assert hits.tolist() == [[True, False]]


def test_deletion_score_ranks_the_used_region_first_and_is_not_dominated_by_unsure_images():
    """A 'model' whose probability is the mean of one region (in [0, 1]): deleting that region first
    gives a lower area than deleting elsewhere, on every image and on average."""
    rng = np.random.default_rng(1)
    probability = lambda batch: batch[:, 0, 2:6, 2:6].mean(axis=(1, 2))  # noqa: E731
    right, wrong = np.zeros((16, 16)), np.zeros((16, 16))
    right[2:6, 2:6], wrong[10:14, 10:14] = 1.0, 1.0
    images = rng.uniform(0.5, 1.0, (4, 1, 16, 16)).astype(np.float32)
    curves = {
        name: np.stack([deletion_curve(probability, image, m, steps=16)[0] for image in images])
        for name, m in (("right", right), ("wrong", wrong))
    }
    correct = np.ones(4, dtype=bool)
    score_right, score_wrong = deletion_score(curves["right"], correct), deletion_score(curves["wrong"], correct)
    assert score_right.auc < score_wrong.auc and score_right.n_images == 4
    assert score_right.curve[1] == pytest.approx(0.0) and len(score_right.curve) == 17
    # A barely recognised image whose probability rises under deletion (0.01 -> 0.5): the old rule
    # scores it 25 and lets it swamp the mean; the area of the probability stays in [0, 1].
    x = np.linspace(0, 1, 17)
    unsure = np.stack([x, np.minimum(0.01 + x, 0.5)], axis=1)
    mixed = np.concatenate([curves["right"], unsure[None]])
    both = deletion_score(mixed, np.ones(5, dtype=bool))
    assert both.auc_normalised > 5 > 1 >= both.auc
    # An image the model gets wrong does not enter the new score (the old one counts every image).
    misclassified = deletion_score(mixed, np.array([True] * 4 + [False]))
    assert misclassified.auc == pytest.approx(score_right.auc) and misclassified.n_images == 4
    assert misclassified.auc_normalised == both.auc_normalised
