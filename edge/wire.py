"""How a command's fields travel on the control socket: each field's kind and limits, declared beside it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wire:
    """A command field as JSON: its kind and limits, declared beside the field (see :func:`wire`).

    Kinds: ``text`` (a non-empty string of at most 256 characters; ``cut``: longer ones are cut, not refused),
    ``int`` and ``number`` (``low``..``high``), ``bool``, ``strings`` (a list of texts), ``region`` (four
    fractions x0, y0, x1, y1 of the picture, or null/[] for the whole of it), ``image`` (base64
    JPEG/PNG under the key ``image``, decoded to the model's input; ``exact``: taken as is when already that
    size), ``embedding`` (base64 of little-endian float32) and ``examples`` (a list of at most 200
    ``{"label", "source", "fingerprint", "embedding", "image"}`` objects). Fields without a Wire are not
    accepted from the socket.
    """

    kind: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    cut: int = 0
    exact: bool = False
    hint: str = ""  # the error's words for what the value must be, when the kind's own are not enough


def wire(default=None, kind: str = "text", **rules):
    """A dataclass field with its :class:`Wire` (``default_factory`` is not needed: defaults are immutable)."""
    return field(default=default, metadata={"wire": Wire(kind, **rules)},
                 compare=kind not in ("image", "embedding"), repr=kind not in ("image", "embedding"))
