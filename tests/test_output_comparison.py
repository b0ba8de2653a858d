"""The comparison and localisation folders, from results built straight from their dataclasses (no analysis):
files, contents, the one CSV convention, self-contained HTML, the figure's curves."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
from test_report import make_report

from onnx_infodiscard.audit import RuleOutcome
from onnx_infodiscard.compare import COLUMNS, FILES, Comparison, compared_layers, plot, write_comparison
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.localize import ImageScore, Localization, MethodScore
from onnx_infodiscard.output.encode import csv_cell
from onnx_infodiscard.output.localization import write_localization
from onnx_infodiscard.output.manifest import MANIFEST, unknown_entries


def make_comparison(outcomes: tuple = ()) -> Comparison:
    reports = (
        make_report(seed=0),
        dataclasses.replace(make_report(seed=1, concentration=False), model_path="/models/other.onnx"),
    )
    names = ("tiny", "other")
    rows = [row for name, report in zip(names, reports) for row in compared_layers(name, report)]
    return Comparison(names, reports, tuple(rows), outcomes, seconds=2.5)


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    outcome = RuleOutcome(
        rule="cid[-1] > 100",
        metric="cid",
        layer="relu_1",
        op=">",
        threshold=100.0,
        value=None,
        n_images=0,
        failed=True,
        model="tiny",
        reason="no converged <image>",
    )
    return make_comparison((outcome,))


def test_comparison_files_and_contents(comparison, tmp_path):
    out = write_comparison(comparison, tmp_path / "cmp")
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, MANIFEST))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    data = json.loads((out / "comparison.json").read_text())
    assert data["kind"] == "comparison" and [m["name"] for m in data["models"]] == ["tiny", "other"]
    assert len(data["table"]) == len(comparison.rows) and set(COLUMNS) <= set(data["table"][0])
    with (out / "comparison.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(comparison.rows)
    assert {r["converged"] for r in rows} == {"true", "false"}  # the one CSV convention
    assert all(r["concentration"] == "" for r in rows if r["model"] == "other")  # None: an empty cell
    assert float(rows[0]["cid"]) == comparison.rows[0].cid  # floats round-trip
    page = (out / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "AUDIT FAILED: 1 of 1" in page
    assert "no converged &lt;image&gt;" in page and "<image>" not in page
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page and "<script" not in page
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_comparison(comparison, out) == out  # an earlier comparison is replaced
    assert unknown_entries(out) == []


def test_a_folder_of_other_files_is_refused(comparison, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="keep.txt"):
        write_comparison(comparison, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_plot_has_one_curve_per_model(comparison):
    figure = plot(comparison)
    cid_axis, concentration_axis = figure.axes
    assert [t.get_text() for t in cid_axis.get_legend().get_texts()] == ["tiny", "other"]
    assert [t.get_text() for t in concentration_axis.get_legend().get_texts()] == ["tiny"]  # other: none measured
    assert "relative layer depth" in concentration_axis.get_xlabel()


def make_localization(n: int = 3, size: int = 16) -> Localization:
    rng = np.random.default_rng(0)
    names = ("cid", "center")
    methods = tuple(
        MethodScore(
            name=m,
            method=m,
            control=(m == "center"),
            layer=None if m == "center" else "relu_1",
            loc_acc=0.5,
            loc_acc_se=0.1,
            mean_iou=0.4,
            pointing_acc=2 / 3,
            deletion_auc=0.3,
            best_fraction=0.25,
            loc_acc_best=0.6,
            deletion_curve=tuple(np.linspace(1, 0, 21)),
        )
        for m in names
    )
    images = tuple(
        ImageScore(
            image=f"img_{i}.png",
            truth=(2, 2, 10, 10),
            target=i,
            boxes={m: (3, 3, 9, 9 + i) for m in names},
            ious={"cid": 0.7 - 0.2 * i, "center": float("nan") if i == 0 else 0.1},
            pointing={"cid": np.bool_(i != 1), "center": False},
            deletion_auc={m: 0.3 for m in names},
        )
        for i in range(n)
    )
    crosscheck = make_report().crosscheck
    return Localization(
        tool_version="0.1.0",
        model_path="/m.onnx",
        model_sha256="cd" * 32,
        layers=("relu_1",),
        settings=make_report().settings,
        preprocessing=make_report().preprocessing,
        device="cpu",
        crosscheck=crosscheck,
        methods=methods,
        images=images,
        protocol={"target": "label"},
        verdict="fine",
        controls_beaten=True,
        maps={m: rng.random((n, size, size)).astype(np.float32) for m in names},
        canonical_images=tuple(rng.random((1, size, size)).astype(np.float32) for _ in range(n)),
    )


def test_localization_files_and_the_same_csv_convention(tmp_path):
    result = make_localization()
    out = write_localization(result, tmp_path / "loc", overlays=2)
    assert {"localization.json", "methods.csv", "images.csv", "maps.npz", "localization.png", "overlays", MANIFEST} == {
        p.name for p in out.iterdir()
    }
    assert len(list((out / "overlays").glob("*.png"))) == 2
    with open(out / "methods.csv", newline="") as handle:
        methods = list(csv.DictReader(handle))
    assert [m["control"] for m in methods] == ["false", "true"] and methods[1]["layer"] == ""
    assert float(methods[0]["pointing_acc"]) == 2 / 3
    with open(out / "images.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 2
    cid = [r for r in rows if r["method"] == "cid"]
    assert [r["localized"] for r in cid] == ["true", "false", "false"]
    assert [r["pointing"] for r in cid] == ["true", "false", "true"]
    assert rows[1]["iou"] == "" and rows[1]["localized"] == "false"  # NaN IoU: empty, not localised
    with np.load(out / "maps.npz") as maps:
        assert maps["cid"].shape == (3, 16, 16)
    assert write_localization(result, out, overlays=0) == out  # replaced: the overlays folder goes
    assert not (out / "overlays").exists() and unknown_entries(out) == []


def test_one_csv_cell_convention():
    assert [
        csv_cell(v)
        for v in (None, True, np.bool_(False), 0.1, float("nan"), float("inf"), np.float32(0.5), np.int64(3), 7, "x")
    ] == ["", "true", "false", "0.1", "", "", "0.5", "3", "7", "x"]
