"""Learned rounding of the first convolutions' int8 weights (the high-gain stem).

The int8 converter rounds every weight to the nearest step of its channel's grid
(symmetric, 127 steps, scale = max |w| / 127, after BatchNorm is folded in). In
MobileNet's first 3x3 convolution and first depthwise layer, the layers' gain is high
(up to ~20x), and nearest rounding alone costs measurable fidelity. Here each weight of
those layers is instead chosen between its floor and its ceiling on that grid, greedily,
so that the layer's *output after its activation* matches the float layer on the
calibration samples (the idea of AdaRound, Nagel et al. 2020, with a greedy search
instead of a learned relaxation: a few thousand weights, seconds).

The result is a copy of the Keras model whose chosen layers hold weights that already lie
on their int8 grid (BatchNorm folded into the kernel, the BatchNorm left as the identity
plus bias), so the converter's own per-channel quantization reproduces the chosen
integers exactly. The float model the bundle ships is left untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
LEVELS = 127  # per-channel symmetric int8 weights: -127..127
MAX_ROWS = 60_000  # output positions sampled per layer for the search


@dataclass
class RoundingReport:
    layer: str
    weights: int
    flipped: int
    error_nearest: float  # mean squared output error with nearest rounding
    error_learned: float

    def as_dict(self) -> dict:
        return {"layer": self.layer, "weights": self.weights, "flipped": self.flipped,
                "output_mse_nearest": float(f"{self.error_nearest:.6g}"),
                "output_mse_learned": float(f"{self.error_learned:.6g}")}


def _activation(layer) -> callable | None:
    """numpy version of the activation a keras layer applies (None when unknown)."""
    import keras

    if isinstance(layer, keras.layers.ReLU):
        top = layer.max_value
        if layer.negative_slope or layer.threshold:
            return None
        return (lambda z: np.clip(z, 0, float(top))) if top is not None else (lambda z: np.maximum(z, 0))
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return {"relu": lambda z: np.maximum(z, 0), "relu6": lambda z: np.clip(z, 0, 6),
            "linear": lambda z: z, "hard_swish": lambda z: z * np.clip(z + 3, 0, 6) / 6,
            "hard_silu": lambda z: z * np.clip(z + 3, 0, 6) / 6}.get(name)


def _consumer(layer):
    """The single layer that takes ``layer``'s output, or None (keras keeps the graph in its nodes)."""
    users = {id(node.operation): node.operation for node in layer._outbound_nodes}  # noqa: SLF001
    return next(iter(users.values())) if len(users) == 1 else None


@dataclass
class _Stage:
    conv: object
    bn: object | None
    act: callable


def stem_layers(model, count: int = 2) -> list[_Stage]:
    """The first ``count`` Conv2D/DepthwiseConv2D layers that are followed by (BatchNorm and) a known activation."""
    import keras

    stages = []
    for layer in model.layers:
        if len(stages) == count:
            break
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if not depthwise and not (isinstance(layer, keras.layers.Conv2D) and layer.groups == 1):
            continue
        if getattr(layer, "dilation_rate", (1, 1)) != (1, 1):
            break
        bn = None
        act = _activation(layer)
        if act is None:
            break  # an activation we cannot mirror in numpy: the search would target the wrong output
        if getattr(layer.activation, "__name__", "linear") == "linear":
            nxt = _consumer(layer)
            if isinstance(nxt, keras.layers.BatchNormalization):
                bn, nxt = nxt, _consumer(nxt)
            if isinstance(nxt, (keras.layers.ReLU, keras.layers.Activation)):
                act = _activation(nxt)
                if act is None:
                    break
        stages.append(_Stage(layer, bn, act))
    return stages


def _folded(stage: _Stage) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) with BatchNorm folded in, as the converter folds it."""
    weights = stage.conv.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if stage.conv.use_bias else 0.0
    depthwise = _is_depthwise(stage.conv)
    channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[-1]
    bias = np.zeros(channels) + bias
    if stage.bn is not None:
        gamma, beta, mean, var = _bn_params(stage.bn)
        factor = gamma / np.sqrt(var + stage.bn.epsilon)
        kernel = kernel * (factor.reshape(kernel.shape[2], kernel.shape[3]) if depthwise else factor)
        bias = (bias - mean) * factor + beta
    return kernel, bias


def _bn_params(bn) -> tuple[np.ndarray, ...]:
    values = [w.astype(np.float64) for w in bn.get_weights()]
    gamma = values.pop(0) if bn.scale else np.ones_like(values[-1])
    beta = values.pop(0) if bn.center else np.zeros_like(values[-1])
    return gamma, beta, values[0], values[1]


def _is_depthwise(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.DepthwiseConv2D)


def _patches(stage: _Stage, inputs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Input patches of the layer at the same sampled positions for each array in ``inputs``:
    rows x (kh*kw*cin), ordered like the kernel's first three axes."""
    import tensorflow as tf

    kh, kw = stage.conv.kernel_size
    sh, sw = stage.conv.strides
    rows = [[] for _ in inputs]
    per_sample = max(1, MAX_ROWS // len(inputs[0]))
    for n in range(len(inputs[0])):
        chosen = None
        for k, array in enumerate(inputs):
            p = tf.image.extract_patches(array[n : n + 1].astype(np.float32), [1, kh, kw, 1], [1, sh, sw, 1],
                                         [1, 1, 1, 1], stage.conv.padding.upper()).numpy()
            p = p.reshape(-1, p.shape[-1])
            if chosen is None:
                chosen = rng.choice(len(p), min(per_sample, len(p)), replace=False)
            rows[k].append(p[chosen])
    return [np.concatenate(r).astype(np.float64) for r in rows]


def _search(reference: np.ndarray, patches: np.ndarray, w: np.ndarray, b: float, act,
            sweeps: int = 6) -> tuple[np.ndarray, float, float, int]:
    """Integer weights (floor or ceil of w/scale) for one channel whose activated output on
    ``patches`` (the input as the int8 model will see it) best matches the float layer on
    ``reference`` (the float model's input)."""
    peak = np.abs(w).max()
    if peak == 0:
        return np.zeros_like(w), 0.0, 0.0, 0
    scale = peak / LEVELS
    exact = w / scale
    q = np.rint(exact)
    target = act(reference @ w + b)
    z = patches @ (q * scale) + b
    error = float(np.mean((act(z) - target) ** 2))
    nearest, flipped = error, set()
    for _ in range(sweeps):
        improved = False
        for j in range(len(w)):
            other = np.floor(exact[j]) if q[j] != np.floor(exact[j]) else np.ceil(exact[j])
            if other == q[j] or abs(other) > LEVELS:
                continue
            z_try = z + (other - q[j]) * scale * patches[:, j]
            e = float(np.mean((act(z_try) - target) ** 2))
            if e < error:
                q[j], z, error, improved = other, z_try, e, True
                flipped ^= {j}
        if not improved:
            break
    return q, nearest, error, len(flipped)


def learn_rounding(model, samples: np.ndarray, count: int = 2, seed: int = 0):
    """A copy of ``model`` whose first ``count`` stem convolutions hold learned int8-grid weights.

    Returns:
        (model copy, [RoundingReport per layer]); the copy is ``model`` itself when no stem
        layer qualifies.
    """
    import keras

    stages = stem_layers(model, count)
    if not stages:
        return model, []
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    reports = []
    batch = samples.astype(np.float32)
    for stage in stages:
        # the float layer's input (the target) and the input as the already-rounded layers make it
        reference, rounded = ([np.concatenate([keras.Model(m.inputs[0], m.get_layer(stage.conv.name).input)(
            batch[i : i + 16], training=False).numpy() for i in range(0, len(batch), 16)])] for m in (model, copy))
        kernel, bias = _folded(stage)
        ref_rows, rows = _patches(stage, reference + rounded, rng)
        kh, kw, cin, cout = kernel.shape
        learned = np.empty_like(kernel)
        flips, before, after = 0, [], []
        if _is_depthwise(stage.conv):  # channel c sees only input channel c
            ref_rows = ref_rows.reshape(len(ref_rows), kh * kw, cin)
            rows = rows.reshape(len(rows), kh * kw, cin)
            for c in range(cin):
                w = kernel[:, :, c, 0].ravel()
                q, e0, e1, f = _search(ref_rows[:, :, c], rows[:, :, c], w, bias[c], stage.act)
                learned[:, :, c, 0] = (q * np.abs(w).max() / LEVELS).reshape(kh, kw)
                flips, before, after = flips + f, before + [e0], after + [e1]
        else:
            for c in range(cout):
                w = kernel[..., c].ravel()
                q, e0, e1, f = _search(ref_rows, rows, w, bias[c], stage.act)
                learned[..., c] = (q * np.abs(w).max() / LEVELS).reshape(kh, kw, cin)
                flips, before, after = flips + f, before + [e0], after + [e1]
        _install(copy, stage, learned, bias)
        reports.append(RoundingReport(stage.conv.name, int(kernel.size), flips, float(np.mean(before)),
                                      float(np.mean(after))))
        log.info("learned rounding %s: %d of %d weights flipped, output MSE %.3g -> %.3g", stage.conv.name, flips,
                 kernel.size, np.mean(before), np.mean(after))
    return copy, reports


def _install(copy, stage: _Stage, kernel: np.ndarray, bias: np.ndarray) -> None:
    """Put the folded, grid-exact kernel into the copy; its BatchNorm becomes identity plus bias."""
    conv = copy.get_layer(stage.conv.name)
    weights = [kernel.astype(np.float32)] + ([np.zeros_like(conv.get_weights()[1])] if conv.use_bias else [])
    if stage.bn is None:
        weights = [kernel.astype(np.float32)] + ([bias.astype(np.float32)] if conv.use_bias else [])
        if not conv.use_bias and np.any(bias):
            raise ValueError(f"{conv.name}: a bias without a bias variable")
    conv.set_weights(weights)
    if stage.bn is not None:
        bn = copy.get_layer(stage.bn.name)
        n = bias.shape[0]
        params = []
        if bn.scale:
            params.append(np.ones(n, np.float32))
        if bn.center:
            params.append(bias.astype(np.float32))
        elif np.any(bias):
            raise ValueError(f"{bn.name}: no beta to hold the folded bias")
        params += [np.zeros(n, np.float32), np.full(n, 1.0 - bn.epsilon, np.float32)]
        bn.set_weights(params)
