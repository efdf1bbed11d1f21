"""Small stateless functions over an interpreter: describe, fill, read and dequantize tensors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """What a model tensor holds: dtype, shape and (for integer tensors) quantization."""

    index: int
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @cached_property
    def is_quantized(self) -> bool:  # asked on every frame: computed once
        return bool(np.issubdtype(self.dtype, np.integer) and self.scale != 0.0)

    def as_manifest(self) -> dict:
        out = {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}
        if self.is_quantized:
            out["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return out


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        index=int(detail["index"]),
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]),
        shape=tuple(int(n) for n in detail["shape"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def input_specs(interpreter) -> list[TensorSpec]:
    return [_spec(d) for d in interpreter.get_input_details()]


def output_specs(interpreter) -> list[TensorSpec]:
    return [_spec(d) for d in interpreter.get_output_details()]


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float values → the integer representation ``spec`` expects (saturating)."""
    if not spec.is_quantized:
        return np.asarray(values, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.rint(np.asarray(values, np.float32) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Integer tensor values → float32 (float tensors are returned as float32)."""
    if not spec.is_quantized:
        return np.asarray(values, dtype=np.float32)
    return (np.asarray(values, np.float32) - spec.zero_point) * np.float32(spec.scale)


def set_input(interpreter, spec: TensorSpec, values: np.ndarray) -> None:
    """Write one sample (no batch axis) into the input tensor, converting as needed.

    uint8 pixels into a uint8 input with scale 1 / zero point 0 (teachcam's embedders)
    are copied as they are: no per-pixel arithmetic.
    """
    values = np.asarray(values)
    if values.dtype != spec.dtype:
        if spec.is_quantized and not (spec.scale == 1.0 and spec.zero_point == 0 and values.dtype == np.uint8):
            values = quantize(values, spec)
        else:
            values = values.astype(spec.dtype)
    interpreter.tensor(spec.index)()[0] = values.reshape(spec.shape[1:])


def get_output(interpreter, spec: TensorSpec) -> np.ndarray:
    """The first sample of an output tensor, dequantized to float32 (a new array: one allocation)."""
    raw = interpreter.get_tensor(spec.index)[0]
    if not spec.is_quantized:
        return raw.astype(np.float32, copy=raw.dtype != np.float32)
    out = raw.astype(np.float32)
    out -= spec.zero_point
    out *= spec.scale
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)
