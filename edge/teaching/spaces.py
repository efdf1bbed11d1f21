"""Sensor and CPU embeddings in one store: the rule (docs/contracts.md, "The AI Camera's embeddings").

A store holds the embeddings of one embedder, named by its fingerprint. On a Pi whose AI Camera embeds, that is the
sensor's network (``imx500:<sha256>``): camera frames are embedded by the sensor. A picture the sensor never saw (a
file, an upload, a fleet peer's thumbnail, an example kept from before) is embedded by the bundle's CPU int8
embedder and marked ``space = "cpu"`` — a stand-in, counted and shown (``teachcam status``, ``teachcam doctor``),
never mistaken for the sensor's (measured: cosine 0.96 to the sensor's embedding of the same picture; few-shot KNN
accuracy within a point of a sensor-only store; docs/ai-camera.md).

The sensor cannot embed a thumbnail, so leaving its space would lose what it made: before a store is re-embedded
away from a sensor's space (the AI Camera unplugged, its network refused, another bundle), the sensor's embeddings
are kept in ``spaces/<fingerprint>.npz`` (example id → row); coming back to that sensor gives them back to the
examples that still exist, and the others become stand-ins.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from teachcam.edge.teaching.durable import make_folder, write_atomic

log = logging.getLogger(__name__)

SENSOR_PREFIX = "imx500:"
STAND_IN = "cpu"


def is_sensor(fingerprint: str) -> bool:
    return fingerprint.startswith(SENSOR_PREFIX)


def _file(store: Path, fingerprint: str) -> Path:
    return Path(store) / "spaces" / (fingerprint.replace(":", "-") + ".npz")


def keep(store: Path, snapshot) -> None:
    """Keep the sensor's own embeddings of ``snapshot`` (a generation in a sensor's space) before they are replaced."""
    if not is_sensor(snapshot.fingerprint):
        return
    rows = [i for i, e in enumerate(snapshot.examples) if not e.space]
    kept = restore(store, snapshot.fingerprint)
    kept.update({snapshot.examples[i].id: snapshot.embeddings[i] for i in rows})
    if not kept:
        return
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(list(kept)), rows=np.stack(list(kept.values())).astype(np.float32))
    make_folder(Path(store) / "spaces")
    write_atomic(_file(store, snapshot.fingerprint), buffer.getvalue())
    log.warning("store %s: kept the AI Camera's embeddings of %d example(s) in %s (they come back with that network)",
                store, len(kept), _file(store, snapshot.fingerprint).name)


def restore(store: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """The kept sensor embeddings for ``fingerprint``: example id → row (empty when none or unreadable)."""
    path = _file(store, fingerprint)
    if not is_sensor(fingerprint) or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return dict(zip((str(i) for i in data["ids"]), data["rows"], strict=True))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("store %s: the kept embeddings in %s cannot be read (%s); the examples are re-embedded on the "
                    "CPU instead", store, path.name, exc)
        return {}


def space_of(embed) -> str:
    """The ``Example.space`` of what ``embed`` (an embedder's bound ``embed``) makes: STAND_IN for the AI Camera's."""
    return STAND_IN if getattr(getattr(embed, "__self__", None), "stand_in", False) else ""
