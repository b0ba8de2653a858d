"""STUDY.toml: named groups of models, the images, labels, settings and the claims to test.

Everything is checked here, before any analysis runs, so that a typo in the last hypothesis does
not cost an hour of optimisation: the TOML itself, every model file, every group a hypothesis
names, every metric, the images, and that the labels cover every image.

    images = "images"                  # folder or list, relative to the TOML
    labels = "images/boxes.csv"        # file,label (index or class name); optional
    foreground = "images/boxes.csv"    # boxes CSV for concentration; optional
    tau = 0.1                          # optional: steps, samples, seed, bootstrap, ru, layers, depths
    hypotheses = ["cid[1.0] deep > shallow", "concentration[0.5] ~ accuracy"]

    [groups.deep]
    models = ["deep_s0.onnx", {path = "x.onnx", layout = "nhwc", preprocessing = {scale = 255.0}}]

Each model is analysed only at its layers nearest the depths the hypotheses name (and `depths`),
chosen among the entry's `layers`, the study's `layers`, else the card's `suggested_layers`.
Top-level keys go before the first `[groups.*]` table (TOML puts later keys inside that table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, close_matches

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

METRICS = ("cid", "delta_cid", "concentration", "ru")
TOP_KEYS = {
    "images",
    "labels",
    "foreground",
    "layers",
    "depths",
    "tau",
    "steps",
    "samples",
    "seed",
    "bootstrap",
    "ru",
    "hypotheses",
    "groups",
    "title",
}
MODEL_KEYS = {"path", "name", "input", "layout", "preprocessing", "layers"}
PREPROCESSING_KEYS = {"preset", "scale", "mean", "std", "bgr"}

_TERM = r"(?P<{m}>[a-z_]+)\[(?P<{d}>[0-9.]+)\]"
_GROUPS = re.compile(_TERM.format(m="metric", d="depth") + r"\s+(?P<left>\w+)\s*(?P<op><|>)\s*(?P<right>\w+)$")
_DEPTHS = re.compile(
    _TERM.format(m="metric", d="depth")
    + r"\s*(?P<op><|>)\s*"
    + _TERM.format(m="metric2", d="depth2")
    + r"(?:\s+in\s+(?P<within>[\w\s,]+))?$"
)
_CORRELATION = re.compile(
    _TERM.format(m="metric", d="depth") + r"\s*~\s*(?P<sign>-?)\s*accuracy" + r"(?:\s+in\s+(?P<within>[\w\s,]+))?$"
)


@dataclass(frozen=True)
class ModelEntry:
    """One model of a group, with card fields for a model that has no card."""

    name: str  # unique across the study: the file stem, or the entry's `name`
    path: Path
    group: str
    input_name: str | None = None
    preprocessing: dict = field(default_factory=dict)  # preset/scale/mean/std/bgr/layout overrides
    layers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Hypothesis:
    """One claim. kind `groups`: metric[depth] left OP right (difference of group means, left - right);
    `depths`: metric[depth] OP metric[depth2] within models (mean over models of the paired difference);
    `correlation`: metric[depth] ~ accuracy (Spearman rho across models; `~ -accuracy` hypothesises rho < 0).
    `sign` is the side the claim puts the effect on: +1 (effect > 0) or -1."""

    text: str
    kind: str
    metric: str
    depth: float
    sign: int
    left: str | None = None
    right: str | None = None
    depth2: float | None = None
    groups: tuple[str, ...] = ()  # the groups whose models enter (depths / correlation kinds)


@dataclass(frozen=True)
class Study:
    """A parsed, validated STUDY.toml; paths absolute."""

    path: Path
    groups: dict[str, tuple[ModelEntry, ...]]
    images: tuple[Path, ...]
    hypotheses: tuple[Hypothesis, ...]
    labels: Path | None = None
    foreground: Path | None = None
    layers: tuple[str, ...] | None = None
    depths: tuple[float, ...] = ()  # extra relative depths to analyse besides the hypotheses' own
    tau: float | None = None
    steps: int | None = None
    samples: int | None = None
    seed: int = 0
    bootstrap: int = 2000
    ru: bool = False
    title: str = ""

    @property
    def models(self) -> tuple[ModelEntry, ...]:
        return tuple(m for entries in self.groups.values() for m in entries)


def parse_hypothesis(text: str, groups: set[str] | None = None, ru: bool = True) -> Hypothesis:
    """`cid[0.8] a < b`, `concentration[1.0] > concentration[0.3] in deep`, `concentration[0.5] ~ accuracy`."""
    clean = " ".join(str(text).split())
    hypothesis = _match(clean)
    for metric in (hypothesis.metric, *(() if hypothesis.kind != "depths" else (_DEPTHS.match(clean)["metric2"],))):
        if metric not in METRICS:
            raise InputError(
                f"hypothesis {clean!r}: unknown metric {metric!r}{close_matches(metric, METRICS)}", option="hypotheses"
            )
        if metric == "ru" and not ru:
            raise InputError(f"hypothesis {clean!r}: metric 'ru' needs ru = true in the study", option="hypotheses")
    for depth in (hypothesis.depth, hypothesis.depth2):
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise InputError(f"hypothesis {clean!r}: relative depth {depth} is not in [0, 1]", option="hypotheses")
    if groups is not None:
        named = [g for g in (hypothesis.left, hypothesis.right, *hypothesis.groups) if g is not None]
        for name in named:
            if name not in groups:
                raise InputError(
                    f"hypothesis {clean!r}: unknown group {name!r}{close_matches(name, groups)}", option="hypotheses"
                )
    return hypothesis


def _match(clean: str) -> Hypothesis:
    if m := _GROUPS.match(clean):
        if m["left"] == m["right"]:
            raise InputError(f"hypothesis {clean!r}: compares group {m['left']!r} with itself", option="hypotheses")
        return Hypothesis(
            clean,
            "groups",
            m["metric"],
            float(m["depth"]),
            1 if m["op"] == ">" else -1,
            left=m["left"],
            right=m["right"],
        )
    if m := _DEPTHS.match(clean):
        if m["metric"] != m["metric2"]:
            raise InputError(
                f"hypothesis {clean!r}: compare one metric at two depths, not {m['metric']} with {m['metric2']}",
                option="hypotheses",
            )
        return Hypothesis(
            clean,
            "depths",
            m["metric"],
            float(m["depth"]),
            1 if m["op"] == ">" else -1,
            depth2=float(m["depth2"]),
            groups=_within(m["within"]),
        )
    if m := _CORRELATION.match(clean):
        return Hypothesis(
            clean, "correlation", m["metric"], float(m["depth"]), -1 if m["sign"] else 1, groups=_within(m["within"])
        )
    raise InputError(
        f"hypothesis {clean!r} is not 'METRIC[DEPTH] GROUP < GROUP', 'METRIC[D1] > METRIC[D2] "
        "[in GROUP,...]' or 'METRIC[DEPTH] ~ accuracy [in GROUP,...]'",
        option="hypotheses",
    )


def _within(text: str | None) -> tuple[str, ...]:
    return tuple(g.strip() for g in text.split(",") if g.strip()) if text else ()


def read_study(path: str | Path) -> Study:
    """Parse and validate STUDY.toml completely (files, groups, metrics, labels); raise InputError."""
    from ..files import regular_file
    from ..images import find_images

    path = Path(path)
    try:
        data = tomllib.loads(regular_file(path, "study", 16 << 20).read_text())  # a FIFO would block
    except InputError as err:
        raise InputError(err.message, option="groups") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such study file", option="groups") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"{path}: not valid TOML ({err})", option="groups") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(
            f"{path}: unknown key {name!r}{close_matches(name, TOP_KEYS)} (top-level keys go before "
            "the first [groups.*] table)",
            option="groups",
        )
    root = path.resolve().parent
    groups = _groups(path, data.get("groups"), root)
    ru = bool(data.get("ru", False))
    texts = data.get("hypotheses", [])
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{path}: 'hypotheses' must be a non-empty list of strings", option="groups")
    hypotheses = tuple(parse_hypothesis(t, set(groups), ru) for t in texts)
    images_value = data.get("images")
    if images_value is None:
        raise InputError(f"{path}: no 'images'; name the image folder or files every model sees", option="groups")
    images = tuple(find_images([root / p for p in _strings(path, "images", images_value)]))
    labels = _file(path, root, data, "labels")
    foreground = _file(path, root, data, "foreground")
    _check_needs(path, hypotheses, labels, foreground, images)
    layers = data.get("layers")
    return Study(
        path=path.resolve(),
        groups=groups,
        images=images,
        hypotheses=hypotheses,
        labels=labels,
        foreground=foreground,
        layers=tuple(_strings(path, "layers", layers)) if layers else None,
        depths=_depths(path, data.get("depths", [])),
        tau=_number(path, data, "tau", float),
        steps=_number(path, data, "steps", int),
        samples=_number(path, data, "samples", int),
        seed=_number(path, data, "seed", int) or 0,
        bootstrap=_number(path, data, "bootstrap", int) or 2000,
        ru=ru,
        title=str(data.get("title", "")),
    )


def _groups(path: Path, table, root: Path) -> dict[str, tuple[ModelEntry, ...]]:
    if not isinstance(table, dict) or not table:
        raise InputError(f"{path}: no [groups.NAME] tables; each needs models = [...]", option="groups")
    groups, seen = {}, {}
    for name, body in table.items():
        if not isinstance(body, dict) or not isinstance(body.get("models"), list) or not body["models"]:
            raise InputError(f"{path}: group {name!r} needs a non-empty models = [...] list", option="groups")
        entries = []
        for item in body["models"]:
            entry = _entry(path, name, item, root)
            if entry.name in seen:
                raise InputError(
                    f"{path}: model name {entry.name!r} appears in groups {seen[entry.name]!r} and "
                    f'{name!r}; give one entry a name = "..."',
                    option="groups",
                )
            seen[entry.name] = name
            entries.append(entry)
        groups[name] = tuple(entries)
    return groups


def _entry(path: Path, group: str, item, root: Path) -> ModelEntry:
    body = {"path": item} if isinstance(item, str) else item
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise InputError(f'{path}: group {group!r}: a model is a path or a table with path = "..."', option="groups")
    unknown = set(body) - MODEL_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise InputError(
            f"{path}: group {group!r}, model {body['path']}: unknown field {key!r}{close_matches(key, MODEL_KEYS)}",
            option="groups",
        )
    model = root / body["path"]
    if not model.is_file():
        raise InputError(
            f"{path}: group {group!r}: model {body['path']} not found (looked at {model})", option="groups"
        )
    prep = dict(body.get("preprocessing", {}))
    bad = set(prep) - PREPROCESSING_KEYS
    if bad:
        raise InputError(
            f"{path}: model {body['path']}: unknown preprocessing field {sorted(bad)[0]!r}; use "
            f"{sorted(PREPROCESSING_KEYS)}",
            option="groups",
        )
    if "mean" in prep or "std" in prep:
        prep.update({k: tuple(v if isinstance(v, list) else [v]) for k, v in prep.items() if k in ("mean", "std")})
    if "layout" in body:
        prep["layout"] = str(body["layout"]).lower()
    layers = body.get("layers")
    return ModelEntry(
        name=str(body.get("name") or model.stem),
        path=model.resolve(),
        group=group,
        input_name=body.get("input"),
        preprocessing=prep,
        layers=tuple(_strings(path, "layers", layers)) if layers else None,
    )


def _check_needs(path, hypotheses, labels, foreground, images) -> None:
    if any(h.kind == "correlation" for h in hypotheses) and labels is None:
        raise InputError(f"{path}: a '~ accuracy' hypothesis needs labels = \"file,label CSV\"", option="groups")
    if any(h.metric == "concentration" for h in hypotheses) and foreground is None:
        raise InputError(f'{path}: a concentration hypothesis needs foreground = "boxes CSV"', option="groups")
    if labels is not None:
        from ..accuracy import read_labels

        raw = read_labels(labels)
        missing = [p.name for p in images if p.name not in raw]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise InputError(
                f"{labels}: no label for {len(missing)} of {len(images)} images ({shown}); add a "
                "file,label row for each",
                option="labels",
            )


def _depths(path: Path, value) -> tuple[float, ...]:
    ok = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value
    )
    if not ok:
        raise InputError(f"{path}: depths must be a list of relative depths in [0, 1]", option="groups")
    return tuple(float(v) for v in value)


def _file(path: Path, root: Path, data: dict, key: str) -> Path | None:
    if key not in data:
        return None
    target = root / str(data[key])
    if not target.is_file():
        raise InputError(f"{path}: {key} file {data[key]} not found (looked at {target})", option="groups")
    return target.resolve()


def _strings(path: Path, key: str, value) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(f"{path}: {key!r} must be a string or a list of strings", option="groups")
    return values


def _number(path: Path, data: dict, key: str, kind):
    if key not in data:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InputError(
            f"{path}: {key} = {value!r} is not a{'n integer' if kind is int else ' number'}", option="groups"
        )
    if value <= 0 and key != "seed":
        raise InputError(f"{path}: {key} = {value!r} must be > 0", option="groups")
    return kind(value)
