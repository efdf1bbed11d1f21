"""Undo takes back one action — whatever it was, wherever it came from — and nothing else (teaching.history)."""

from __future__ import annotations

import numpy as np
import pytest

from teachcam.edge.errors import ClassNameError, StoreError
from teachcam.edge.teaching import history
from teachcam.edge.teaching.store import decode_generation
from tests.test_store import open_teacher, pixels, vector


def content(teacher) -> dict[str, list[tuple[str, bytes]]]:
    """Every class with its examples' ids and embedding bytes, in order: what 'untouched' compares."""
    snap = teacher.snapshot
    out: dict[str, list] = {c: [] for c in snap.classes}
    for example, row in zip(snap.examples, snap.embeddings, strict=True):
        out[example.label].append((example.id, row.astype(np.float16).tobytes()))
    return out


def taught(tmp_path, classes=("cat", "dog", "camera"), per_class=3, **kwargs):
    teacher = open_teacher(tmp_path / "s", **kwargs)
    seed = 0
    for label in classes:
        for _ in range(per_class):
            teacher.add(label, vector(seed), pixels(seed), via="button")
            seed += 1
    return teacher


def test_undo_after_delete_restores_exactly_that_class_and_leaves_the_others(tmp_path):
    with taught(tmp_path) as teacher:
        before = content(teacher)
        teacher.remove_class("camera", via="web")
        offered = teacher.history[-1]  # what the page's button says
        assert offered.text == "delete 'camera' (3 examples)"
        teacher.add("dog", vector(100), pixels(100), via="button")  # a button on the Pi meanwhile
        dog_now = content(teacher)["dog"]
        done = teacher.undo(offered.id)
        assert done.action.kind == "remove_class" and len(done.restored) == 3 and not done.removed
        after = content(teacher)
        assert after["camera"] == before["camera"]  # same ids, same embeddings
        assert after["cat"] == before["cat"] and after["dog"] == dog_now  # the concurrent example stays
        assert teacher.classes == ["cat", "dog", "camera"]  # back at its place
        # the thumbnails survived the class removal's garbage collection
        assert all(teacher.store.thumb_path(e.thumb).exists() for e in teacher.snapshot.examples)


def test_undo_after_clear_restores_all_and_keeps_what_came_since(tmp_path):
    with taught(tmp_path) as teacher:
        before = content(teacher)
        assert teacher.clear(via="web") == 9
        teacher.add("bird", vector(200), pixels(200), via="mqtt")
        teacher.add("cat", vector(201), pixels(201), via="fleet")  # a peer's example: not an action here
        assert teacher.history[-1].text == "add 1 example to 'bird'"
        teacher.undo(teacher.history[-2].id)  # the page offered "clear all": exactly that one
        after = content(teacher)
        assert after["dog"] == before["dog"] and after["camera"] == before["camera"]
        assert after["cat"][:3] == before["cat"] and len(after["cat"]) == 4 and len(after["bird"]) == 1
        assert [a.kind for a in teacher.history] == ["add"] * 9  # the clear is gone from the history (10 are kept)


def test_a_hold_is_one_action_and_a_button_press_in_between_stays(tmp_path):
    with taught(tmp_path, classes=("cat", "dog"), per_class=1) as teacher:
        for i in range(5):
            teacher.add("cat", vector(10 + i), pixels(10 + i), via="web", group="hold-1")
            if i == 2:
                teacher.add("dog", vector(50), pixels(50), via="button")
        assert teacher.history[-1].text == "add 5 examples to 'cat'"
        done = teacher.undo()
        assert len(done.removed) == 5 and teacher.counts() == {"cat": 1, "dog": 2}
        assert teacher.undo().action.labels == ("dog",)  # then the button's press
        assert teacher.counts() == {"cat": 1, "dog": 1}


def test_undo_of_an_add_that_made_a_class_removes_the_class_and_brings_back_what_the_cap_dropped(tmp_path):
    with taught(tmp_path, classes=("cat",), per_class=2, cap=2) as teacher:
        first = content(teacher)["cat"]
        teacher.add("cat", vector(30), pixels(30), via="button")  # the cap drops the oldest
        assert len(content(teacher)["cat"]) == 2
        teacher.undo()
        assert content(teacher)["cat"] == first
        teacher.add("new", vector(31), pixels(31), via="web")
        teacher.undo()
        assert teacher.classes == ["cat"]


def test_rename_undo_and_its_conflict_changes_nothing(tmp_path):
    with taught(tmp_path, classes=("cat", "dog"), per_class=2) as teacher:
        teacher.rename_class("cat", "kitty", via="web")
        teacher.add("kitty", vector(40), pixels(40), via="button")
        teacher.undo(teacher.history[-2].id)
        assert teacher.counts() == {"cat": 3, "dog": 2}
        teacher.rename_class("cat", "kitty", via="web")
        teacher.add_class("CAT", via="web")
        rename = teacher.history[-2].id
        generation = teacher.snapshot.generation
        with pytest.raises(ClassNameError, match="class 'CAT' exists now"):
            teacher.undo(rename)
        assert teacher.snapshot.generation == generation and teacher.history[-2].id == rename
        with pytest.raises(StoreError, match="not in the undo history"):
            teacher.undo("123abc")


def test_history_and_limbo_survive_a_restart_and_a_v1_reader_is_kept_where_possible(tmp_path):
    with taught(tmp_path) as teacher:
        assert decode_generation(teacher.store.path.joinpath(f"gen-{teacher.snapshot.generation:08d}.tcs")
                                 .read_bytes(), "x").limbo == []
        newest = max(teacher.store.generations(teacher.store.path))[1]
        assert b'"format_version": 1' in newest.read_bytes()[:60]  # nothing in the limbo: an older teachcam reads it
        before = content(teacher)
        teacher.clear(via="button")
    with open_teacher(tmp_path / "s") as teacher:
        assert teacher.history[-1].kind == "clear" and len(teacher.snapshot.limbo) == 9
        teacher.undo()
        assert content(teacher) == before


def test_the_history_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "LIMBO_ROWS", 4)
    with taught(tmp_path, classes=("a", "b", "c", "d"), per_class=3) as teacher:
        for _ in range(history.DEPTH + 3):
            teacher.add_class("x", via="web")
            teacher.remove_class("x", via="web")
        assert len(teacher.history) == history.DEPTH
        teacher.remove_class("a", via="web")
        teacher.remove_class("b", via="web")  # 6 rows > 4: the older deletion can no longer be undone
        assert [a.text for a in teacher.history if a.taken] == ["delete 'b' (3 examples)"]
        assert len(teacher.snapshot.limbo) == 3
        teacher.clear(via="web")  # 6 rows: the newest action keeps its own, however many
        assert teacher.history[-1].kind == "clear" and len(teacher.snapshot.limbo) == 6
        teacher.undo()
        assert teacher.counts() == {"c": 3, "d": 3}


def test_per_example_delete_is_undone(tmp_path):
    with taught(tmp_path, classes=("cat",), per_class=3) as teacher:
        before = content(teacher)
        gone = before["cat"][1][0]
        teacher.remove_examples(lambda e: e.id == gone, via="web")
        assert teacher.history[-1].text == "delete 1 example of 'cat'"
        teacher.undo()
        assert content(teacher) == before
