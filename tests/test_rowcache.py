"""The row cache: a re-run computes nothing, an interrupted run resumes, a comparison with one
more model computes only that model's rows, and a bad entry is recomputed, never used."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_infodiscard import SolverSettings, analyze, open_session
from onnx_infodiscard.compare import compare
from onnx_infodiscard.embedded import DEFAULT_MODEL, MODELS
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.rowcache import RowCache

IMAGES = sorted((MODELS / "digits_cnn" / "images").glob("digit_0[0-4]*.png"))
LAYERS = ["/relu1/Relu_output_0", "/relu3/Relu_output_0"]
#: 2 rows per group, so 10 rows make 5 groups: enough to interrupt between them.
QUICK = SolverSettings(steps=4, samples=8, max_batch=16, eval_samples=16, max_eval_samples=64)


@pytest.fixture(scope="module")
def session():
    return open_session(DEFAULT_MODEL, IMAGES, LAYERS, device="cpu")


def entropies(report) -> np.ndarray:
    return np.stack([r.entropy for r in report.results])


def test_second_run_comes_from_the_cache_with_the_same_numbers(session, tmp_path):
    cache = RowCache(tmp_path)
    first = analyze(session, settings=QUICK, cache=cache)
    second = analyze(session, settings=QUICK, cache=RowCache(tmp_path))
    assert first.cached_rows == 0 and second.cached_rows == len(second.results) == 10
    assert any("10 of 10 rows from the row cache" in note for note in second.notes)
    np.testing.assert_array_equal(entropies(first), entropies(second))
    assert [r.cid for r in first.results] == [r.cid for r in second.results]


def test_a_changed_setting_misses_the_cache(session, tmp_path):
    analyze(session, settings=QUICK, cache=RowCache(tmp_path))
    other = analyze(session, settings=QUICK.__class__(**{**QUICK.__dict__, "tau": 0.2}), cache=RowCache(tmp_path))
    assert other.cached_rows == 0


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(session, tmp_path):
    whole = analyze(session, settings=QUICK)
    calls = []

    def interrupt(stage, advance, total):
        calls.append(advance)
        if sum(calls) > 2.5 * 2 * QUICK.steps:  # in the third group of two rows
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze(session, settings=QUICK, cache=RowCache(tmp_path), progress=interrupt)
    resumed = analyze(session, settings=QUICK, cache=RowCache(tmp_path))
    assert resumed.cached_rows == 4  # the two groups that finished before the interrupt
    np.testing.assert_allclose(entropies(resumed), entropies(whole), atol=1e-5)


def test_a_corrupt_entry_is_recomputed_with_a_warning(session, tmp_path):
    first = analyze(session, settings=QUICK, cache=RowCache(tmp_path))
    entries = sorted(tmp_path.rglob("*.npz"))
    entries[0].write_bytes(entries[0].read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        again = analyze(session, settings=QUICK, cache=RowCache(tmp_path))
    assert again.cached_rows == 9
    assert any("unreadable" in note for note in again.notes)
    np.testing.assert_allclose(entropies(again), entropies(first), atol=1e-5)


def test_entries_hold_no_pickle(session, tmp_path):
    analyze(session, settings=QUICK, layers=LAYERS[:1], cache=RowCache(tmp_path))
    for entry in tmp_path.rglob("*.npz"):
        with np.load(entry, allow_pickle=False) as data:
            assert set(data.files) == {"log_sigma", "scalars"}


def test_a_cache_that_is_a_file_is_refused_up_front(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(InputError, match="not a writable folder") as err:
        RowCache(target)
    assert err.value.option == "cache"


def test_compare_with_one_more_model_solves_only_that_model(tmp_path):
    models = [DEFAULT_MODEL, MODELS / "torchscript_digits" / "torchscript_digits.onnx"]
    settings = SolverSettings(steps=3, samples=8, eval_samples=16, max_eval_samples=32)
    first = compare(models[:1], IMAGES[:2], ["auto"], settings=settings, device="cpu", cache=RowCache(tmp_path))
    both = compare(models, IMAGES[:2], ["auto"], settings=settings, device="cpu", cache=RowCache(tmp_path))
    assert [r.cached_rows for r in both.reports] == [len(first.reports[0].results), 0]
    assert both.reports[1].results  # the new model's rows were solved


def test_an_interrupted_localize_resumes_and_equals_an_uninterrupted_one(tmp_path):
    """Ctrl-C in the middle of `localize`, then the same call again: the finished rows come from the
    cache and the scores equal those of a run that was never interrupted."""
    from onnx_infodiscard.localize import localize

    benchmark = MODELS / "cluttered_digits"
    images = sorted((benchmark / "images").glob("bench_00[0-3]_*.png"))
    one_row_groups = SolverSettings(steps=3, samples=4, max_batch=4, eval_samples=8, max_eval_samples=16, extra_steps=0)
    quick = dict(images=images, methods=("cid",), controls=(), settings=one_row_groups, device="cpu", grids=[None])
    whole = localize(**quick, cache=None)
    calls = []

    def interrupt(stage, advance, total):
        calls.append(advance if stage.startswith("CID") else 0)
        if sum(calls) > 2.5 * one_row_groups.steps:  # in the third of four one-row groups
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        localize(**quick, cache=RowCache(tmp_path), progress=interrupt)
    assert len(list(tmp_path.rglob("*.npz"))) == 2
    resumed = localize(**quick, cache=RowCache(tmp_path))
    assert "cid@pixel: 2 of 4 rows from the row cache" in resumed.notes  # and says so
    assert resumed.maps.keys() == whole.maps.keys()
    for name in whole.maps:
        np.testing.assert_allclose(resumed.maps[name], whole.maps[name], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(resumed.methods, whole.methods, strict=True):
        assert (ours.loc_acc, ours.pointing_acc, ours.mean_iou) == pytest.approx(
            (theirs.loc_acc, theirs.pointing_acc, theirs.mean_iou), abs=1e-6
        )
