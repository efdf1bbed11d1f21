"""Teaching with real embeddings: few-shot recognition, unknowns, re-embedding, export/import, the CLI."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.teaching.teacher import Teacher
from tests.helpers import augmented_views, run_teachcam

OBJECTS = {"cat": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg"}


@pytest.fixture(scope="module")
def runtime(bundle_path):
    bundle = load_bundle(bundle_path)
    return Preprocessor.from_manifest(bundle.preprocessing), {p: Embedder.create(bundle, p) for p in ("int8", "float32")}


def embed_views(runtime, photo, count, seed, precision="int8"):
    pre, embedders = runtime
    out = []
    for view in augmented_views(photo, count, seed):
        pixels = pre(view)
        out.append((embedders[precision].embed(pixels), pixels))
    return out


def teach_three(runtime, path, shots=5, precision="int8") -> Teacher:
    teacher = Teacher.open(path, runtime[1][precision])
    for label, photo in OBJECTS.items():
        teacher.add_many([(label, e, p, "") for e, p in embed_views(runtime, photo, shots, seed=1, precision=precision)])
    return teacher


def test_recognises_taught_objects_and_reports_unknown(runtime, tmp_path):
    with teach_three(runtime, tmp_path / "s") as teacher:
        correct = total = 0
        for label, photo in OBJECTS.items():
            for embedding, _ in embed_views(runtime, photo, 8, seed=2):
                correct += teacher.predict(embedding).label == label
                total += 1
        assert correct / total >= 0.95
        unknown = [teacher.predict(e).is_unknown for e, _ in embed_views(runtime, "astronaut.png", 8, seed=3)]
        assert sum(unknown) >= 6, "a never-taught object should mostly be reported as unknown"


def test_a_big_class_does_not_win_by_being_big(runtime, tmp_path):
    with Teacher.open(tmp_path / "s", runtime[1]["int8"]) as teacher:
        teacher.add_many([("coffee", e, p, "") for e, p in embed_views(runtime, "coffee.png", 30, seed=4)])
        teacher.add_many([("cat", e, p, "") for e, p in embed_views(runtime, "chelsea.png", 2, seed=5)])
        predictions = [teacher.predict(e).label for e, _ in embed_views(runtime, "chelsea.png", 6, seed=6)]
    assert predictions.count("cat") >= 5


def test_a_new_embedder_triggers_re_embedding_from_thumbnails(runtime, tmp_path, caplog):
    teach_three(runtime, tmp_path / "s").close()
    int8_fp, float_fp = runtime[1]["int8"].fingerprint, runtime[1]["float32"].fingerprint
    with caplog.at_level(logging.WARNING), Teacher.open(tmp_path / "s", runtime[1]["float32"]) as teacher:
        assert teacher.snapshot.fingerprint == float_fp != int8_fp
        assert "re-embedding 15 example(s) from their thumbnails" in caplog.text
        expected = np.stack([runtime[1]["float32"].embed(teacher.store.read_thumbnail(e.thumb))
                             for e in teacher.snapshot.examples])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(teacher.snapshot.embeddings, expected, atol=2e-3)
        embedding, _ = embed_views(runtime, "coffee.png", 1, seed=7, precision="float32")[0]
        assert teacher.predict(embedding).label == "coffee"


def test_export_is_a_folder_per_class_zip_and_imports_back(runtime, bundle_path, tmp_path):
    teach_three(runtime, tmp_path / "s", shots=2).close()
    archive = tmp_path / "examples.zip"
    result = run_teachcam("store", "export", tmp_path / "s", archive)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert sum(n.startswith("cat/") and n.endswith(".png") for n in names) == 2
        assert "labels.csv" in names and "teachcam-export.json" in names
        assert Image.open(zf.open(next(n for n in names if n.startswith("rocket/")))).size == (224, 224)
    result = run_teachcam("store", "import", tmp_path / "fresh", archive, "--bundle", bundle_path)
    assert result.returncode == 2 and "no store at" in result.stderr
    (tmp_path / "fresh").mkdir()
    result = run_teachcam("store", "import", tmp_path / "fresh", archive, "--bundle", bundle_path)
    assert result.returncode == 0, result.stderr
    listing = json.loads(run_teachcam("store", "list", tmp_path / "fresh", "--json").stdout)
    assert listing["classes"] == {"cat": 2, "coffee": 2, "rocket": 2}
    again = run_teachcam("store", "import", tmp_path / "fresh", archive, "--bundle", bundle_path)
    assert again.returncode == 0 and "imported 0 example(s)" in again.stdout and "6 already there" in again.stdout
    assert json.loads(run_teachcam("store", "list", tmp_path / "fresh", "--json").stdout)["classes"] == listing["classes"]


def test_cli_enroll_predict_and_store_commands(bundle_path, tmp_path):
    views = {label: augmented_views(photo, 4, seed=8) for label, photo in OBJECTS.items()}
    files = {}
    for label, images in views.items():
        files[label] = []
        for i, image in enumerate(images):
            path = tmp_path / f"{label}-{i}.jpg"
            Image.fromarray(image).save(path)
            files[label].append(path)
    store = tmp_path / "store"
    for label in OBJECTS:
        result = run_teachcam("enroll", "-b", bundle_path, "-s", store, "-l", label, *files[label][:3])
        assert result.returncode == 0, result.stderr
    result = run_teachcam("predict", "-b", bundle_path, "-s", store, "--json", *(files[k][3] for k in OBJECTS))
    assert result.returncode == 0, result.stderr
    assert [r["label"] for r in json.loads(result.stdout)] == list(OBJECTS)
    assert run_teachcam("store", "rename", store, "cat", "Chelsea the cat").returncode == 0
    assert run_teachcam("store", "remove-class", store, "rocket").returncode == 0
    listing = json.loads(run_teachcam("store", "list", store, "--json").stdout)
    assert listing["classes"] == {"Chelsea the cat": 3, "coffee": 3}
    assert run_teachcam("store", "clear", store, "--yes").returncode == 0
    listing = json.loads(run_teachcam("store", "list", store, "--json").stdout)
    assert listing["classes"] == {} and listing["history"][0]["text"] == "clear all (6 examples, 2 classes)"
    # undo, one action at a time, newest first — and by id, an older one, whatever came since
    undone = run_teachcam("store", "undo", store)
    assert undone.returncode == 0 and "undid: clear all (6 examples, 2 classes); next: delete 'rocket'" in undone.stdout
    listing = json.loads(run_teachcam("store", "list", store, "--json").stdout)
    assert listing["classes"] == {"Chelsea the cat": 3, "coffee": 3}
    rename = next(a for a in listing["history"] if a["kind"] == "rename")
    done = json.loads(run_teachcam("store", "undo", store, "--action", rename["id"], "--json").stdout)
    assert done["undone"] == "rename 'cat' to 'Chelsea the cat'" and done["undo"]["text"] == "delete 'rocket' (3 examples)"
    assert json.loads(run_teachcam("store", "list", store, "--json").stdout)["classes"] == {"cat": 3, "coffee": 3}
    gone = run_teachcam("store", "undo", store, "--action", rename["id"])
    assert gone.returncode == 2 and "not in the undo history" in gone.stderr and "Traceback" not in gone.stderr


@pytest.mark.parametrize("label, message", [("", "cannot be empty"), ("a/b", "slash"), ("x" * 80, "limit is 64")])
def test_cli_bad_class_names_change_nothing(bundle_path, tmp_path, label, message):
    store = tmp_path / "store"
    image = tmp_path / "one.jpg"
    Image.fromarray(augmented_views("coffee.png", 1, seed=9)[0]).save(image)
    assert run_teachcam("enroll", "-b", bundle_path, "-s", store, "-l", "coffee", image).returncode == 0
    before = sorted(p.name for p in store.iterdir())
    result = run_teachcam("enroll", "-b", bundle_path, "-s", store, "-l", label, image)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert sorted(p.name for p in store.iterdir()) == before


def test_cli_predict_on_an_empty_store_and_a_corrupt_store(bundle_path, tmp_path):
    image = tmp_path / "one.jpg"
    Image.fromarray(augmented_views("coffee.png", 1, seed=10)[0]).save(image)
    result = run_teachcam("predict", "-b", bundle_path, "-s", tmp_path / "empty", image)
    assert result.returncode == 2 and "has no examples yet" in result.stderr
    store = tmp_path / "store"
    for _ in range(2):
        run_teachcam("enroll", "-b", bundle_path, "-s", store, "-l", "coffee", image, check=True)
    newest = sorted(store.glob("gen-*.tcs"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    result = run_teachcam("predict", "-b", bundle_path, "-s", store, "--json", image)
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["label"] == "coffee"
    assert "falling back to the previous generation" in result.stderr


def test_the_cli_without_a_daemon_and_through_one_apply_the_same_rules(bundle_path, tmp_path):
    # One sequence — files enrolled (one given twice), then an archive imported twice that holds a picture twice
    # in one class — applied by the CLI on its own store, and by the CLI through a running daemon.
    # teaching.lessons holds the rules for both: the two stores must end up the same.
    import zipfile

    from teachcam.edge.teaching.store import EnrollmentStore
    from tests.helpers import RunningDaemon, save_views

    views = save_views(tmp_path / "views", "chelsea.png", 3, seed=5) + save_views(tmp_path / "mugs", "coffee.png", 2, seed=6)
    archive = tmp_path / "lesson.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (label, path) in enumerate([("cat", views[0]), ("cat", views[1]), ("cat", views[0]),
                                           ("mug", views[3])]):
            zf.write(path, f"{label}/{i}.jpg")

    def sequence(store_flag: list) -> list[str]:
        outputs = []
        for args in (["enroll", "-l", "mug", *(["--store", *store_flag] if store_flag else []), views[4], views[4],
                      "--bundle", bundle_path],
                     ["store", "import", *store_flag, archive, "--bundle", bundle_path],
                     ["store", "import", *store_flag, archive, "--bundle", bundle_path]):  # all already there
            result = run_teachcam(*args)
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
        return outputs

    alone = tmp_path / "alone"
    sequence([alone])
    camera = tmp_path / "camera"
    camera.mkdir()
    (camera / "a.jpg").write_bytes(views[2].read_bytes())
    daemon = RunningDaemon(bundle_path, tmp_path, camera)
    try:
        through = sequence([])
    finally:
        daemon.stop()
    assert "through the running daemon" in through[0] and "4 already there" in through[2]

    def contents(path):
        with EnrollmentStore.open(path, writable=False) as store:
            snap = store.snapshot
            return snap.classes, sorted((e.label, e.thumb) for e in snap.examples)

    classes_alone, examples_alone = contents(alone)
    classes_daemon, examples_daemon = contents(daemon.store)
    assert classes_alone == classes_daemon == ["mug", "cat"]
    assert examples_alone == examples_daemon
    # the duplicate in the archive and the second import added nothing; `enroll` takes a file given twice twice
    assert [label for label, _ in examples_alone] == ["cat", "cat", "mug", "mug", "mug"]
