"""The enrollment store survives damage, full disks, read-only folders and concurrent writers."""

from __future__ import annotations

import logging
import os
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from teachcam.edge.errors import ClassNameError, StoreError, StoreFullError, StoreVersionError
from teachcam.edge.teaching.knn import KNNConfig
from teachcam.edge.teaching.store import MAGIC, EnrollmentStore, check_class_name, thumbnail_digest
from teachcam.edge.teaching.teacher import Teacher

D = 16


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=D).astype(np.float32)


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)


def open_teacher(path, **kwargs) -> Teacher:
    teacher = Teacher.open(path, **kwargs)
    teacher.store.snapshot.embedding_size = teacher.store.snapshot.embedding_size or D
    if teacher.store.snapshot.embeddings.shape[1] != D:
        teacher.store.snapshot.embeddings = np.zeros((0, D), np.float32)
    teacher.store.snapshot.fingerprint = teacher.store.snapshot.fingerprint or "test-fingerprint"
    return teacher


def fill(path, n=6, labels=("a", "b")) -> None:
    with open_teacher(path) as teacher:
        for i in range(n):
            teacher.add(labels[i % len(labels)], vector(i), pixels(i))


@pytest.mark.parametrize("name, canonical", [("mug", "mug"), ("  coffee mug ", "coffee mug"), ("Café", "Café"),
                                             ("猫", "猫"), ("x" * 64, "x" * 64), ("a.b-c_d (2)", "a.b-c_d (2)")])
def test_valid_class_names(name, canonical):
    assert check_class_name(name) == canonical


@pytest.mark.parametrize("name, message", [("", "cannot be empty"), ("   ", "cannot be empty"), ("x" * 65, "limit is 64"),
                                           ("a/b", "slash"), ("a\\b", "slash"), ("..", "not a usable"),
                                           ("tab\there", "control characters"), ("new\nline", "control characters")])
def test_invalid_class_names(name, message):
    with pytest.raises(ClassNameError, match=message):
        check_class_name(name)


def test_names_differing_only_in_case_clash(tmp_path):
    fill(tmp_path / "s")
    with open_teacher(tmp_path / "s") as teacher:
        with pytest.raises(ClassNameError, match="only in case"):
            teacher.add("A", vector(99), pixels(99))
        assert teacher.counts() == {"a": 3, "b": 3}


def test_reopen_gives_back_every_example(tmp_path):
    fill(tmp_path / "s", n=10)
    with open_teacher(tmp_path / "s", config=KNNConfig(k=1, prototype_weight=0.0)) as teacher:
        assert teacher.counts() == {"a": 5, "b": 5}
        assert teacher.predict(vector(4)).label == "a"
        assert teacher.predict(vector(4)).score == pytest.approx(1.0, abs=1e-3)  # float16 on disk
        np.testing.assert_array_equal(teacher.store.read_thumbnail(teacher.snapshot.examples[3].thumb), pixels(3))


def _newest(path: Path) -> Path:
    return EnrollmentStore.generations(path)[0][1]


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "empty", "garbage"])
def test_damaged_newest_generation_falls_back_to_the_previous(tmp_path, damage, caplog):
    store = tmp_path / "s"
    fill(store, n=4)
    newest = _newest(store)
    data = bytearray(newest.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x00garbage" * 10)
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), open_teacher(store) as teacher:
        assert sum(teacher.counts().values()) == 3  # the previous generation: all but the last example
        assert teacher.snapshot.generation == 3
    assert "falling back to the previous generation" in caplog.text
    assert list((store / "damaged").iterdir()), "the damaged file is kept aside, not deleted"


def test_every_generation_damaged_is_an_error_and_nothing_is_deleted(tmp_path):
    store = tmp_path / "s"
    fill(store, n=3)
    for _, file in EnrollmentStore.generations(store):
        file.write_bytes(b"broken")
    thumbs = sorted((store / "thumbs").rglob("*.png"))
    with pytest.raises(StoreError, match="every generation of the store"):
        Teacher.open(store)
    assert len(list((store / "damaged").iterdir())) == 2
    assert sorted((store / "thumbs").rglob("*.png")) == thumbs


def test_a_store_from_a_newer_version_is_refused_and_left_untouched(tmp_path):
    store = tmp_path / "s"
    fill(store, n=2)
    newest = _newest(store)
    data = newest.read_bytes().replace(b'"format_version": 1', b'"format_version": 9')
    import hashlib

    data = data[:-32] + hashlib.sha256(data[:-32]).digest()
    newest.write_bytes(data)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with pytest.raises(StoreVersionError, match="newer teachcam"):
        Teacher.open(store)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"}


def test_only_one_writer_at_a_time(tmp_path):
    fill(tmp_path / "s", n=2)
    with open_teacher(tmp_path / "s"):
        with pytest.raises(StoreError, match=f"in use by another teachcam process \\(pid {os.getpid()}\\)"):
            Teacher.open(tmp_path / "s")
        with Teacher.open(tmp_path / "s", writable=False) as reader:
            assert reader.counts() == {"a": 1, "b": 1}


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_loses_nothing_already_saved(small_tmpfs):
    store = small_tmpfs / "s"
    saved = 0
    with open_teacher(store) as teacher:
        with pytest.raises(StoreFullError, match="disk .* is full; nothing was changed"):
            for i in range(10_000):
                teacher.add("a", vector(i), np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
                saved += 1
        assert len(teacher) == saved  # memory matches disk: the failed example was not half-added
    assert saved > 0
    with open_teacher(store, writable=False) as teacher:
        assert len(teacher) == saved


def test_read_only_store_folder(small_tmpfs):
    store = small_tmpfs / "s"
    fill(store, n=2)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(StoreError, match="not writable"):
        Teacher.open(store)
    with Teacher.open(store, writable=False) as reader:
        assert reader.counts() == {"a": 1, "b": 1}


def test_stale_temporary_files_of_a_killed_writer_are_cleaned(tmp_path):
    store = tmp_path / "s"
    fill(store, n=2)
    (store / ".gen-00000003.tcs.tmp-123").write_bytes(MAGIC + struct.pack("<Q", 5))
    with open_teacher(store) as teacher:
        assert len(teacher) == 2
    assert not list(store.glob(".*.tmp-*"))


def test_undo_remove_rename_clear(tmp_path):
    store = tmp_path / "s"
    fill(store, n=6, labels=("a", "b", "c"))
    with open_teacher(store) as teacher:
        assert teacher.undo().action.labels == ("c",)
        assert teacher.counts() == {"a": 2, "b": 2, "c": 1}
        teacher.rename_class("b", "bee")
        assert teacher.remove_class("a") == 2
        with pytest.raises(ClassNameError, match="no class 'zzz'"):
            teacher.remove_class("zzz")
        with pytest.raises(ClassNameError, match="class 'C' exists|class 'c' exists"):
            teacher.rename_class("bee", "C")
    with open_teacher(store) as teacher:
        assert teacher.counts() == {"bee": 2, "c": 1}
        assert teacher.clear() == 3
    with open_teacher(store) as teacher:
        assert len(teacher) == 0 and teacher.classes == []


@pytest.mark.parametrize("policy", ["oldest", "redundant"])
def test_per_class_cap(tmp_path, policy):
    store = tmp_path / "s"
    with open_teacher(store, cap=3, cap_policy=policy) as teacher:
        for i in range(5):
            teacher.add("a", vector(i), pixels(i))
        teacher.add("a", vector(0) + 1e-3, pixels(100))  # a near-duplicate of example 0
        teacher.add("b", vector(50), pixels(50))
        assert teacher.counts() == {"a": 3, "b": 1}
        kept = {e.thumb for e in teacher.snapshot.examples}
    if policy == "oldest":
        assert thumbnail_digest(pixels(0)) not in kept and thumbnail_digest(pixels(1)) not in kept
    else:  # one of the near-duplicate pair went first
        assert len({thumbnail_digest(pixels(0)), thumbnail_digest(pixels(100))} & kept) == 1


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_store_files_are_0640_and_folders_0750_whatever_the_umask(tmp_path, umask):
    """The web service reads the store through its group; nobody else reads a camera thumbnail."""
    old = os.umask(umask)
    try:
        fill(tmp_path / "s", n=3)
        with open_teacher(tmp_path / "s") as teacher:
            teacher.clear(via="cli")  # a generation with a limbo too
    finally:
        os.umask(old)
    store = tmp_path / "s"
    folders = [store, *[p for p in store.rglob("*") if p.is_dir()]]
    files = [p for p in store.rglob("*") if p.is_file()]
    assert len(folders) >= 3 and len(files) >= 5
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o750"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o640"}


def test_an_older_stores_folders_are_tightened_when_opened(tmp_path):
    fill(tmp_path / "s", n=2)
    os.chmod(tmp_path / "s", 0o755)
    os.chmod(tmp_path / "s" / "thumbs", 0o777)
    with open_teacher(tmp_path / "s"):
        pass
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "s" / "thumbs").stat().st_mode) == 0o750
