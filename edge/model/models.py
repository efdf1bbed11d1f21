"""The bundle's models at run time: the embedder (one invocation per frame) and heads on it.

Example usage::

    bundle = load_bundle("build/default-bundle")
    embedder = Embedder.create(bundle)                 # Edge TPU if compiled and present, else int8 CPU
    head = Head.create(bundle, "imagenet", embedder)   # matching precision
    embedding = embedder.embed(Preprocessor.from_manifest(bundle.preprocessing)(frame))
    for c in top_k(head.probabilities(embedding), head.labels, 5):
        print(c.label, c.score)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from teachcam.edge.errors import BundleError, ModelError
from teachcam.edge.model import adapters
from teachcam.edge.model.bundle import Bundle, ModelEntry
from teachcam.edge.model.runtime import PRECISIONS, load_interpreter, probe_edgetpu, warn_edgetpu_fallback

log = logging.getLogger(__name__)


class Class(NamedTuple):
    """One scored class."""

    id: int
    label: str
    score: float


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Class]:
    k = max(1, min(int(k), probabilities.size))
    best = np.argpartition(-probabilities, k - 1)[:k]
    best = best[np.argsort(-probabilities[best], kind="stable")]
    return [Class(int(i), labels[i] if i < len(labels) else str(i), float(probabilities[i])) for i in best]


class TFLiteModel:
    """One interpreter with its single input and output described."""

    def __init__(self, path: Path, *, num_threads: int | None = None, edgetpu_device: str | None = None):
        self.path = Path(path)
        loaded = load_interpreter(self.path, num_threads=num_threads, edgetpu_device=edgetpu_device)
        self.interpreter, self.kernels = loaded.interpreter, loaded.kernels
        inputs, outputs = adapters.input_specs(self.interpreter), adapters.output_specs(self.interpreter)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.path.name} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1")
        self.input, self.output = inputs[0], outputs[0]

    def run(self, values: np.ndarray) -> np.ndarray:
        adapters.set_input(self.interpreter, self.input, values)
        self.interpreter.invoke()
        return adapters.get_output(self.interpreter, self.output)


def _check_matches_manifest(model: TFLiteModel, entry: ModelEntry) -> None:
    expected = entry.inputs[0] if entry.inputs else None
    if expected and list(model.input.shape) != list(expected.get("shape", model.input.shape)):
        raise BundleError(
            f"{entry.file} takes {list(model.input.shape)} but the manifest says {expected['shape']}; rebuild the bundle"
        )


def _load(bundle: Bundle, role: str, precision: str, *, head: str | None = None, num_threads: int | None,
          edgetpu_device: str) -> tuple[TFLiteModel, ModelEntry, str]:
    """The model of ``role``: the Edge TPU file when asked (auto/edgetpu) and loadable, else the CPU one."""
    if precision not in PRECISIONS:
        raise BundleError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    cpu_precision = "float32" if precision == "float32" else "int8"
    cpu_entry = bundle.find(role, precision=cpu_precision, head=head)
    if precision in ("auto", "edgetpu"):
        tpu_entry = bundle.find(role, precision="int8", head=head, edgetpu=True)
        if tpu_entry is not None:
            failure = probe_edgetpu(str(bundle.file(tpu_entry.file)), edgetpu_device)  # a crash must not kill us
            if failure is not None:
                warn_edgetpu_fallback(failure)
            else:
                try:
                    model = TFLiteModel(bundle.file(tpu_entry.file), num_threads=num_threads,
                                        edgetpu_device=edgetpu_device)
                    return model, tpu_entry, (cpu_entry or tpu_entry).sha256
                except ModelError as exc:
                    warn_edgetpu_fallback(str(exc))
        elif precision == "edgetpu":
            warn_edgetpu_fallback("the bundle has no Edge TPU model; compile it with `teachcam convert --edgetpu`")
    if cpu_entry is None:
        raise BundleError(f"the bundle at {bundle.path} has no {cpu_precision} {role}")
    model = TFLiteModel(bundle.file(cpu_entry.file), num_threads=num_threads)
    _check_matches_manifest(model, cpu_entry)
    return model, cpu_entry, cpu_entry.sha256


@dataclass
class FrameModel:
    """The model invoked once per frame on the preprocessed pixels: an embedder or a standalone classifier."""

    model: TFLiteModel
    entry: ModelEntry
    fingerprint: str

    @property
    def variant(self) -> str:
        return self.entry.variant

    @property
    def precision(self) -> str:
        return self.entry.precision

    @property
    def kernels(self) -> str:
        """``edgetpu``, ``xnnpack`` or ``reference`` (see :func:`edge.runtime.kernels_from_log`)."""
        return self.model.kernels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input.shape[1], self.model.input.shape[2]

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.run(pixels)


@dataclass
class Embedder(FrameModel):
    """Pixels (uint8, model input size) → one float32 embedding."""

    @classmethod
    def create(cls, bundle: Bundle, precision: str = "auto", *, num_threads: int | None = None,
               edgetpu_device: str = "") -> Embedder:
        """Load the embedder of ``bundle``.

        Args:
            precision: ``auto`` (Edge TPU if the bundle has a compiled model and the
                delegate loads, else int8 on the CPU), ``edgetpu``, ``int8`` or ``float32``.

        Raises:
            BundleError: the bundle has no embedder of that precision.
            ModelError: the model cannot be loaded.
        """
        if bundle.standalone:
            raise BundleError(f"{bundle.path} is a standalone classifier (a small CNN on pixels) with no embedder: "
                              "it classifies (`teachcam classify`, `teachcam run --mode head`) but cannot be taught "
                              "by example; use a bundle from `teachcam convert` or `teachcam train --head dense`")
        return cls(*_load(bundle, "embedder", precision, num_threads=num_threads, edgetpu_device=edgetpu_device))


@dataclass
class Head:
    """Embedding → class probabilities (the model gives logits; softmax here)."""

    model: TFLiteModel
    entry: ModelEntry
    name: str
    labels: list[str]

    @classmethod
    def create(cls, bundle: Bundle, name: str, embedder: Embedder, *, num_threads: int | None = None) -> Head:
        labels = bundle.labels(name)
        entry = bundle.find("head", head=name, precision=embedder.precision) or bundle.find("head", head=name)
        if entry is None:
            raise BundleError(f"the bundle has no model for head {name!r}")
        model = TFLiteModel(bundle.file(entry.file), num_threads=num_threads or 1)
        return cls(model, entry, name, labels)

    def probabilities(self, embedding: np.ndarray) -> np.ndarray:
        out = self.model.run(embedding)
        if self.entry.raw.get("output") == "probabilities":
            return out
        return adapters.softmax(out)


@dataclass
class Classifier(FrameModel):
    """Pixels → class logits in one model: a standalone classifier bundle (the small CNN).

    It takes the embedder's place in the pipeline (one invocation per frame); ``embed`` returns
    its logits so that :class:`LogitsHead` can be the head.
    """

    name: str = "trained"
    labels: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, bundle: Bundle, precision: str = "auto", *, num_threads: int | None = None,
               edgetpu_device: str = "") -> Classifier:
        entry = bundle.find("classifier", edgetpu=None)
        if entry is None:
            raise BundleError(f"the bundle at {bundle.path} has no standalone classifier")
        name = entry.head or "trained"
        model, entry, fingerprint = _load(bundle, "classifier", precision, head=name, num_threads=num_threads,
                                          edgetpu_device=edgetpu_device)
        return cls(model, entry, fingerprint, name, bundle.labels(name))


@dataclass
class LogitsHead:
    """The head of a standalone classifier: its output already is the logits."""

    name: str
    labels: list[str]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return adapters.softmax(logits)
