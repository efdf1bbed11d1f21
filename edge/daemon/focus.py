"""Where the focus region set at run time is kept: ``focus.json`` in the store's folder (written atomically, mode
0640, like the store). It wins over the config's ``[camera] region`` until someone resets it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from teachcam.edge.region import check_region
from teachcam.edge.teaching.durable import write_atomic

log = logging.getLogger(__name__)
FILE = "focus.json"


def load_region(store: str | Path, default):
    """The region set at run time, else ``default`` (the config's). A damaged file is reported and ignored."""
    path = Path(store) / FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.error("%s cannot be read (%s): using the config's focus region", path, exc)
        return default
    try:
        return check_region(data.get("region") if isinstance(data, dict) else None)
    except ValueError as exc:
        log.error("%s: %s; using the config's focus region", path, exc)
        return default


def save_region(store: str | Path, region) -> None:
    """Keep ``region`` (None: the whole frame) for the next start. Raises StoreError when the disk says no."""
    write_atomic(Path(store) / FILE, json.dumps({"region": list(region) if region else None}).encode())


def forget_region(store: str | Path) -> None:
    """Back to the config's region at the next start."""
    (Path(store) / FILE).unlink(missing_ok=True)
