"""Studies (issue #17): the bootstrap answers claims correctly, STUDY.toml is validated up front,
and accuracy equals a direct onnxruntime count."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from onnx_infodiscard.accuracy import accuracy, read_labels
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.rowcache import RowCache
from onnx_infodiscard.study import (
    ModelMetrics,
    answer,
    evaluate_hypothesis,
    parse_hypothesis,
    read_study,
    spearman,
    verdict,
    write_study,
)

ROOT = Path(__file__).resolve().parent.parent
CLUTTERED = ROOT / "models" / "cluttered_digits"
MODEL = CLUTTERED / "cluttered_digits.onnx"
IMAGES = CLUTTERED / "images"


def synthetic(
    group: str,
    n_models: int,
    mean: float,
    rng,
    n_images: int = 40,
    spread: float = 0.3,
    depth_slope: float = 0.0,
    correct_p: float | None = None,
    prefix: str = "",
) -> list[ModelMetrics]:
    """Models whose per-image CID at depth 1 is `mean` + model offset + image effect + noise."""
    image_effect = np.random.default_rng(123).normal(0, spread, n_images)  # shared: paired images
    out = []
    for k in range(n_models):
        offset = rng.normal(0, 0.05)
        deep = mean + offset + image_effect + rng.normal(0, 0.1, n_images)
        shallow = deep - depth_slope
        values = {m: np.stack([shallow, deep]) for m in ("cid", "delta_cid", "concentration")}
        correct = rng.random(n_images) < correct_p if correct_p is not None else None
        out.append(ModelMetrics(f"{prefix or group}{k}", group, ("a", "b"), (0.3, 1.0), values, correct))
    return out


def test_known_group_difference_is_covered_and_holds():
    rng = np.random.default_rng(0)
    models = synthetic("deep", 3, 1.5, rng) + synthetic("shallow", 3, 1.0, rng)
    true_effect = np.mean([m.values["cid"][1].mean() for m in models[:3]]) - np.mean(
        [m.values["cid"][1].mean() for m in models[3:]]
    )
    result = evaluate_hypothesis(parse_hypothesis("cid[1.0] deep > shallow"), models, np.random.default_rng(1), 2000)
    assert result.low < 0.5 < result.high  # the generating effect
    assert result.effect == pytest.approx(true_effect)
    assert result.verdict == "holds"
    flipped = evaluate_hypothesis(parse_hypothesis("cid[1.0] deep < shallow"), models, np.random.default_rng(1))
    assert flipped.verdict == "contradicted"


def test_no_effect_is_inconclusive():
    rng = np.random.default_rng(5)
    models = synthetic("a", 3, 1.0, rng) + synthetic("b", 3, 1.0, rng)
    result = evaluate_hypothesis(parse_hypothesis("cid[0.9] a < b"), models, np.random.default_rng(2))
    assert result.low < 0 < result.high
    assert result.verdict == "inconclusive"


def test_within_model_depth_difference():
    rng = np.random.default_rng(3)
    models = synthetic("deep", 3, 1.0, rng, depth_slope=0.4)
    result = evaluate_hypothesis(
        parse_hypothesis("concentration[1.0] > concentration[0.3] in deep"), models, np.random.default_rng(0)
    )
    assert result.effect == pytest.approx(0.4)
    assert result.verdict == "holds"
    assert result.layers["deep0"] == "b - a"


def test_correlation_with_accuracy():
    rng = np.random.default_rng(4)
    models = []
    for k, p in enumerate(np.linspace(0.2, 0.9, 8)):  # concentration rises with accuracy
        models += synthetic("ckpt", 1, 0.2 + p, rng, n_images=400, spread=0.02, correct_p=p, prefix=f"c{k}_")
    result = evaluate_hypothesis(parse_hypothesis("concentration[1.0] ~ accuracy"), models, np.random.default_rng(0))
    assert result.effect > 0.8 and result.verdict == "holds"
    negative = evaluate_hypothesis(parse_hypothesis("concentration[1.0] ~ -accuracy"), models, np.random.default_rng(0))
    assert negative.verdict == "contradicted"


def test_verdict_rule_and_spearman_ties():
    assert verdict(0.1, 0.5, +1) == "holds" and verdict(-0.5, -0.1, +1) == "contradicted"
    assert verdict(-0.1, 0.5, -1) == "inconclusive" and verdict(float("nan"), 1, 1) == "inconclusive"
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 2, 3])) == pytest.approx(1.0)
    assert np.isnan(spearman(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))


def test_bootstrap_uses_only_the_given_generator():
    rng = np.random.default_rng(0)
    models = synthetic("a", 2, 1.2, rng) + synthetic("b", 2, 1.0, rng)
    h = parse_hypothesis("cid[1.0] a > b")
    np.random.seed(0)
    first = evaluate_hypothesis(h, models, np.random.default_rng(9), 500)
    np.random.seed(1)
    second = evaluate_hypothesis(h, models, np.random.default_rng(9), 500)
    assert (first.low, first.high) == (second.low, second.high)


# --- STUDY.toml validation: one-line InputError before any analysis ---------------------------


def write_study_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "STUDY.toml"
    path.write_text(body)
    return path


GOOD = f"""
images = "{IMAGES}"
labels = "{IMAGES / "boxes.csv"}"
foreground = "{IMAGES / "boxes.csv"}"
hypotheses = ["cid[1.0] big > small", "concentration[0.5] ~ accuracy"]
[groups.big]
models = ["{MODEL}"]
[groups.small]
models = [{{path = "{MODEL}", name = "again", layout = "nchw", preprocessing = {{mean = 0.5, std = 0.3}}}}]
"""


def test_good_study_parses():
    study = read_study_from(GOOD)
    assert [m.name for m in study.models] == ["cluttered_digits", "again"]
    assert study.models[1].preprocessing == {"mean": (0.5,), "std": (0.3,), "layout": "nchw"}
    assert len(study.images) == 200 and study.bootstrap == 2000


def read_study_from(body: str, tmp=None):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return read_study(write_study_toml(Path(folder), body))


@pytest.mark.parametrize(
    "body, words",
    [
        ("images = [", "not valid TOML"),
        (GOOD.replace("big > small", "big > medium"), "unknown group 'medium'"),
        (GOOD.replace("cid[1.0]", "entropy[1.0]"), "unknown metric 'entropy'"),
        (GOOD.replace("cid[1.0]", "ru[1.0]"), "needs ru = true"),
        (GOOD.replace('models = ["', 'models = ["missing/'), "not found"),
        (GOOD.replace("big > small", "big >> small"), "is not 'METRIC[DEPTH]"),
        (GOOD.replace("cid[1.0]", "cid[1.5]"), "not in [0, 1]"),
        (GOOD.replace("hypotheses", "hypothesis"), "unknown key 'hypothesis'"),
        (GOOD.replace('name = "again", ', ""), "appears in groups"),
    ],
)
def test_malformed_study_is_one_line_input_error(body, words):
    with pytest.raises(InputError) as err:
        read_study_from(body)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_labels_missing_for_some_images(tmp_path):
    labels = tmp_path / "labels.csv"
    rows = list(csv.DictReader(open(IMAGES / "boxes.csv")))
    with open(labels, "w") as f:
        f.write("file,label\n" + "".join(f"{r['file']},{r['label']}\n" for r in rows[:-3]))
    body = GOOD.replace(f'labels = "{IMAGES / "boxes.csv"}"', f'labels = "{labels}"')
    with pytest.raises(InputError, match=r"no label for 3 of 200 images \(bench_197") as err:
        read_study(write_study_toml(tmp_path, body))
    assert "\n" not in str(err.value)


# --- accuracy: onnxruntime on the original graph ----------------------------------------------


def test_accuracy_equals_direct_onnxruntime_count(tmp_path):
    import onnxruntime as ort
    from PIL import Image

    rows = list(csv.DictReader(open(IMAGES / "boxes.csv")))[::10]
    files = [IMAGES / r["file"] for r in rows]
    result = accuracy(MODEL, files, read_labels(IMAGES / "boxes.csv"))
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(Image.open(f), np.float32)[None] / 255.0 for f in files])
    logits = session.run(None, {"image": ((x - 0.5) / 0.3).astype(np.float32)})[0]
    direct = int((logits.argmax(1) == np.array([int(r["label"]) for r in rows])).sum())
    assert result.n_correct == direct and result.accuracy == pytest.approx(direct / len(files))
    # class names from the card work as labels too, and a missing label is named
    names = tmp_path / "names.csv"
    names.write_text("file,label\n" + "".join(f"{r['file']},{r['label']}\n" for r in rows[1:]))
    with pytest.raises(InputError, match=rf"no label for 1 of {len(files)} images \({rows[0]['file']}\)"):
        accuracy(MODEL, files, read_labels(names))


def test_small_study_end_to_end(tmp_path, monkeypatch):
    from onnx_infodiscard.perturb import SolverSettings
    from onnx_infodiscard.study import run_study

    body = GOOD.replace('["cid[1.0] big > small", "concentration[0.5] ~ accuracy"]', '["cid[1.0] big > small"]')
    body = body.replace("hypotheses", 'layers = ["/relu2/Relu_output_0", "/relu6/Relu_output_0"]\nhypotheses')
    study = read_study(write_study_toml(tmp_path, body))
    settings = SolverSettings(steps=3, eval_samples=16, max_eval_samples=16)

    def run():  # twice: the second run must come from the cache
        return run_study(
            study,
            settings=settings,
            max_images=2,
            device="cpu",
            rng=np.random.default_rng(0),
            converged_only=False,
            cache=RowCache(tmp_path / "cache"),
        )

    result = run()
    (r,) = result.results
    assert r.effect == pytest.approx(0.0, abs=1e-6)  # the same network twice, same images: the same rows
    assert set(result.accuracy) == {"cluttered_digits", "again"}
    assert r.layers == {"cluttered_digits": "/relu6/Relu_output_0", "again": "/relu6/Relu_output_0"}
    folder = write_study(result, tmp_path / "out")
    names = {p.name for p in folder.iterdir()}
    assert {"study.json", "study.csv", "study.html"} <= names
    assert next(folder.glob("hypothesis_1_*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert answer(study, result.models, np.random.default_rng(0))[0].effect == pytest.approx(r.effect)
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    import onnx_infodiscard.execute as execute

    monkeypatch.setattr(execute, "solve_groups", lambda *a, **k: pytest.fail("a cached row was solved again"))
    again = run()
    assert again.results[0].effect == pytest.approx(r.effect) and again.accuracy == result.accuracy
    assert sorted((tmp_path / "cache").rglob("*.npz")) == entries


def test_unknown_layer_fails_before_any_analysis(tmp_path, monkeypatch):
    import onnx_infodiscard.analysis as analysis
    from onnx_infodiscard.study import run_study

    body = GOOD.replace("hypotheses", 'layers = ["/relu9/Relu_output_0"]\nhypotheses')
    study = read_study(write_study_toml(tmp_path, body))
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: pytest.fail("analysis ran"))
    with pytest.raises(InputError, match="no layer '/relu9/Relu_output_0'; did you mean") as err:
        run_study(study, max_images=2, device="cpu")
    assert err.value.option == "layers"


def test_compare_groups_through_the_cli_on_a_shipped_study_subset(tmp_path):
    """`infodiscard compare --groups` end to end on two groups of the shipped zoo (few images, few steps)."""
    import json
    import subprocess
    import sys

    zoo = Path(__file__).resolve().parent.parent / "models" / "studies" / "zoo"
    images = Path(__file__).resolve().parent.parent / "models" / "cluttered_digits" / "images"
    study = tmp_path / "STUDY.toml"
    study.write_text(f'''
images = "{images}"
labels = "{images / "boxes.csv"}"
foreground = "{images / "boxes.csv"}"
bootstrap = 200
hypotheses = ["cid[1.0] deep > shallow", "concentration[1.0] ~ accuracy in shallow, deep"]
[groups.shallow]
models = ["{zoo / "shallow_s0.onnx"}", "{zoo / "shallow_s1.onnx"}"]
[groups.deep]
models = ["{zoo / "deep_s0.onnx"}", "{zoo / "deep_s1.onnx"}"]
''')
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_infodiscard_cli.main",
            "compare",
            "--groups",
            str(study),
            "--max-images",
            "2",
            "--steps",
            "3",
            "--samples",
            "4",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert [r["verdict"] in ("holds", "contradicted", "inconclusive") for r in answer["hypotheses"]] == [True, True]
    assert (out / "study.html").is_file() and (out / "study.csv").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_infodiscard_cli.main",
            "compare",
            "--groups",
            str(tmp_path / "missing.toml"),
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_options_the_other_mode_would_ignore_are_refused(tmp_path):
    """A study names its own models and images; --max-images means nothing without one."""
    from test_cli import cli

    study = write_study_toml(tmp_path, GOOD)
    out = tmp_path / "out"
    mixed = cli("compare", "--groups", str(study), "--images", str(IMAGES), "--out", str(out))
    assert mixed.code == 2 and len(mixed.lines) == 1 and "drop --images" in mixed.stderr and study.name in mixed.stderr
    alone = cli("compare", str(MODEL), str(MODEL), "--max-images", "3", "--out", str(out))
    assert alone.code == 2 and len(alone.lines) == 1 and "--max-images needs --groups" in alone.stderr
    assert not out.exists()


def test_each_model_is_analysed_only_at_the_depths_of_its_own_hypotheses(tmp_path):
    """A depth named only for one group costs no rows in the others (the shipped study: 0.15 is for
    deep and teacher only)."""
    from onnx_infodiscard.study.run import layers_near, needed_depths

    body = GOOD.replace(
        '["cid[1.0] big > small", "concentration[0.5] ~ accuracy"]',
        '["cid[1.0] big > small", "cid[1.0] > cid[0.2] in big"]',
    )
    study = read_study(write_study_toml(tmp_path, body))
    assert needed_depths(study, "big") == (0.2, 1.0) and needed_depths(study, "small") == (1.0,)
    assert needed_depths(study) == (0.2, 1.0)
    big, small = (layers_near(e, None, needed_depths(study, e.group)) for e in study.models)
    assert len(big) == 2 and small == big[-1:]
