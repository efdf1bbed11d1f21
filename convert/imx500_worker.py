"""Runs inside the IMX500 toolchain's own venv (``scripts/setup --imx500``: TensorFlow 2.15, numpy < 2, Sony's
model-compression-toolkit), never in teachcam's: ``python -m teachcam.convert.imx500_worker ARGS``.

Builds the same MobileNetV2 embedder the bundle's CPU models come from (torchvision's weights, teachcam's own graph
in this venv's Keras 2), with the normalisation folded in as a 1×1 depthwise convolution (the sensor takes raw
0..255 RGB; a custom layer is not an op the converter knows), quantises it post-training for the IMX500 with the
representative set it is handed, measures the simulated quantised embedder against the float one on held-out
photos (cosine, mean and min), and exports the quantised model for ``imxconv-tf``. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MEAN = (0.485, 0.456, 0.406)  # torchvision's, in 0..1 (the bundle's manifest says the same)
STD = (0.229, 0.224, 0.225)


def build(weights: str, input_size: int):
    import keras
    import numpy as np

    from teachcam.convert.backbones import build_torchvision_mobilenet_v2
    from teachcam.convert.torch_weights import read_state_dict

    body, *_ = build_torchvision_mobilenet_v2(read_state_dict(weights), input_size, normalize=False)
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    normalize = keras.layers.DepthwiseConv2D(1, use_bias=True, name="normalize")
    model = keras.Model(inputs, body(normalize(inputs)), name="teachcam_embedder")
    mean, std = np.array(MEAN) * 255.0, np.array(STD) * 255.0
    normalize.set_weights([(1.0 / std).reshape(1, 1, 3, 1).astype("float32"), (-mean / std).astype("float32")])
    return model


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--calibration", required=True, help=".npy of N×S×S×3 uint8 model-input pixels")
    parser.add_argument("--held-out", required=True, help=".npy of held-out photos, the same way")
    parser.add_argument("--out", help="the quantised model (.keras) for imxconv-tf (none: not exported)")
    parser.add_argument("--embed", help=".npy of more pictures (uint8) to run through the simulated quantised embedder")
    parser.add_argument("--embed-out", help="where their embeddings go (.npy, float32)")
    parser.add_argument("--tpc", default="4.0", help="the IMX500 target platform capabilities version")
    parser.add_argument("--outliers", type=float, default=0.0, help="z-score above which calibration values are "
                                                                    "ignored when ranges are chosen (0: none)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import model_compression_toolkit as mct
    import numpy as np
    from edgemdt_tpc import get_target_platform_capabilities

    started = time.monotonic()
    calibration = np.load(args.calibration).astype("float32")
    held = np.load(args.held_out).astype("float32")
    model = build(args.weights, calibration.shape[1])

    def representative():
        for start in range(0, len(calibration), 8):
            yield [calibration[start:start + 8]]

    config = mct.core.CoreConfig(quantization_config=mct.core.QuantizationConfig(
        activation_error_method=mct.core.QuantizationErrorMethod.MSE,
        z_threshold=args.outliers if args.outliers > 0 else float("inf")))
    tpc = get_target_platform_capabilities(tpc_version=args.tpc, device_type="imx500")
    quantised, _ = mct.ptq.keras_post_training_quantization(model, representative, core_config=config,
                                                             target_platform_capabilities=tpc)
    ptq_s = time.monotonic() - started
    float_out, quant_out = model.predict(held, verbose=0), quantised.predict(held, verbose=0)
    cosine = (float_out * quant_out).sum(1) / np.maximum(
        np.linalg.norm(float_out, axis=1) * np.linalg.norm(quant_out, axis=1), 1e-12)
    if args.out:
        mct.exporter.keras_export_model(model=quantised, save_model_path=args.out)
    if args.embed and args.embed_out:
        pictures = np.load(args.embed, mmap_mode="r")
        rows = [quantised.predict(pictures[i:i + 32].astype("float32"), verbose=0) for i in range(0, len(pictures), 32)]
        np.save(args.embed_out, np.concatenate(rows).astype("float32"))
    print(json.dumps({"mct": mct.__version__, "tpc": args.tpc, "outliers": args.outliers,
                      "quantise_s": round(ptq_s, 1), "calibration_samples": len(calibration),
                      "fidelity": {"mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4),
                                   "photos": len(held)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
