"""What a person did to the store, newest last: the undo history, kept in the store's generation.

Undo takes back one *action* — an enrollment, a hold's or an upload's batch of them, a new class, a rename, the
deletion of examples or of a class, a clear — and nothing else. It is applied as the action's inverse on the
store as it is *now*, never by going back to an older generation, so what happened since (a button pressed on the
Pi, an example a fleet peer shared, another class's enrollments) stays:

* an enrollment's inverse removes the examples it added (those still there) and brings back the ones the per-class
  cap dropped to make room; a class it created goes again when it is left empty;
* a deletion's or a clear's inverse puts back the examples it took (their embeddings and thumbnails wait in the
  generation's *limbo*) and the classes at their places, next to whatever those classes got since;
* a rename's inverse renames back, unless another class took the old name meanwhile (then it says so).

Changes a fleet peer makes (``via="fleet"``) are mirrored, not done here: they are not in the history. At most
``DEPTH`` actions are kept, and the limbo holds at most ``LIMBO_ROWS`` examples (the newest action always keeps its
own, however many: one clear of a big store can always be undone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

DEPTH = 10
LIMBO_ROWS = 2000
KINDS = ("add", "add_class", "rename", "remove", "remove_class", "clear")


@dataclass(frozen=True)
class Action:
    """One undoable change. ``added``: ids of the examples it added; ``taken``: ids of the examples it took away (in
    the limbo); ``classes``: classes it removed, with their places; ``created``: classes it created."""

    kind: str
    via: str = ""
    group: str = ""  # enrollments with the same group (one hold, one upload) are one action
    labels: tuple[str, ...] = ()  # the classes it concerned (for its description)
    added: tuple[str, ...] = ()
    taken: tuple[str, ...] = ()
    classes: tuple[tuple[str, int], ...] = ()
    created: tuple[str, ...] = ()
    renamed: tuple[str, str] | None = None
    at: float = field(default_factory=time.time)
    id: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown action kind {self.kind!r}")
        if not self.id:
            object.__setattr__(self, "id", f"{int(self.at * 1e6):x}")

    def merged(self, later: Action) -> Action:
        """This batch with a later enrollment of the same group."""
        labels = tuple(dict.fromkeys(self.labels + later.labels))
        return replace(self, labels=labels, added=self.added + later.added, taken=self.taken + later.taken,
                       created=tuple(dict.fromkeys(self.created + later.created)), at=later.at)

    @property
    def text(self) -> str:
        """What undoing it would take back, in a few words: "add 3 examples to 'cat'", "delete 'camera' (3 examples)"."""
        names = ", ".join(repr(label) for label in self.labels[:3]) + (" …" if len(self.labels) > 3 else "")

        def examples(n: int) -> str:
            return f"{n} example" + ("" if n == 1 else "s")

        match self.kind:
            case "add":
                return f"add {examples(len(self.added))} to {names}"
            case "add_class":
                return f"new class {names}"
            case "rename":
                return f"rename {self.renamed[0]!r} to {self.renamed[1]!r}"
            case "remove":
                return f"delete {examples(len(self.taken))} of {names}"
            case "remove_class":
                return f"delete {names} ({examples(len(self.taken))})"
            case _:
                return f"clear all ({examples(len(self.taken))}, {len(self.classes)} class" + \
                    ("" if len(self.classes) == 1 else "es") + ")"

    def brief(self) -> dict:
        """What a page or a script needs to offer it: its id, its description, who did it and when."""
        return {"id": self.id, "text": self.text, "kind": self.kind, "via": self.via, "at": round(self.at, 3)}

    def as_json(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "via": self.via, "at": round(self.at, 6), "labels": list(self.labels)}
        if self.group:
            out["group"] = self.group
        for name in ("added", "taken", "created"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        if self.classes:
            out["classes"] = [[name, place] for name, place in self.classes]
        if self.renamed:
            out["renamed"] = list(self.renamed)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Action:
        renamed = data.get("renamed")
        return cls(kind=data["kind"], via=str(data.get("via", "")), group=str(data.get("group", "")),
                   labels=tuple(data.get("labels", ())), added=tuple(data.get("added", ())),
                   taken=tuple(data.get("taken", ())), classes=tuple((str(n), int(p)) for n, p in data.get("classes", ())),
                   created=tuple(data.get("created", ())), renamed=(str(renamed[0]), str(renamed[1])) if renamed else None,
                   at=float(data["at"]), id=str(data["id"]))


def record(history: list[Action], action: Action) -> list[Action]:
    """The history after ``action``: an enrollment joins the batch of its group (which becomes the newest)."""
    out = list(history)
    if action.kind == "add" and action.group:
        for i, earlier in enumerate(out):
            if earlier.kind == "add" and earlier.group == action.group:
                del out[i]
                return [*out, earlier.merged(action)]
    return [*out, action]


def trim(history: list[Action]) -> list[Action]:
    """At most DEPTH actions, and at most LIMBO_ROWS examples in the limbo (the newest action keeps its own)."""
    kept = list(history[-DEPTH:])
    while len(kept) > 1 and sum(len(a.taken) for a in kept) > LIMBO_ROWS:
        kept.pop(0)
    return kept


def in_limbo(history: list[Action]) -> set[str]:
    """The ids of the examples the history may still bring back."""
    return {example_id for action in history for example_id in action.taken}
