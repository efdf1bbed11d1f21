"""CLI handlers for teaching from image files: ``enroll``, ``predict`` and ``store …``.

While a daemon runs, they go through its control socket (the example gets the LED blink and
the event, like a button press, and the daemon's store is the one changed); with no daemon,
they open the store themselves. ``store export`` reads the store directly either way (a
generation on disk is complete; readers need no lock).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from teachcam.edge.cli.common import DEFAULT_STORE, add_bundle_flag, each_image
from teachcam.edge.errors import StoreError
from teachcam.edge.messages import SKIPPED_DUPLICATE
from teachcam.edge.teaching.lessons import Lessons, Sample
from teachcam.edge.teaching.teacher import CAP_POLICIES


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}: a similarity lies between -1 and 1 (default 0.86)")
    return value


def add_store_flags(parser, *, knn: bool = False) -> None:
    parser.add_argument("-s", "--store", type=Path, default=None,
                        help=f"enrollment store folder (default: the running daemon's, else {DEFAULT_STORE} or "
                             "$TEACHCAM_STORE)")
    if knn:
        parser.add_argument("--k", type=at_least_one, default=5, help="neighbours per class (default 5)")
        parser.add_argument("--threshold", type=similarity, default=None,
                            help="similarity (-1..1) below which the answer is 'unknown' (default: the measured one)")
        parser.add_argument("--cap", type=at_least_one, default=200, help="examples kept per class (default 200)")
        parser.add_argument("--cap-policy", choices=CAP_POLICIES, default="oldest",
                            help="which example goes when a class is full (default: oldest)")


def register(sub) -> None:
    p = sub.add_parser("enroll", help="add examples of a class from image files",
                       description="Embed each image with the bundle's embedder and add it to class LABEL in the store.")
    add_bundle_flag(p)
    add_store_flags(p, knn=True)
    p.add_argument("-l", "--label", required=True, help="class name (1-64 characters, no slashes)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")

    p = sub.add_parser("predict", help="predict the enrolled class of image files (KNN over the store)")
    add_bundle_flag(p)
    add_store_flags(p, knn=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")

    p = sub.add_parser("store", help="list, rename, remove, clear, undo, export or import enrolled classes",
                       description="Manage an enrollment store. Every change is atomic; the last 10 changes can be undone "
                                   "(`teachcam store undo`), one at a time, whoever made them (a button, the page, MQTT, "
                                   "this command).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="classes and example counts")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("rename", help="rename a class")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("old")
    a.add_argument("new")
    a = actions.add_parser("remove-class", help="forget one class and its examples")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("label")
    a = actions.add_parser("clear", help="forget every class")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("--yes", action="store_true", help="do not ask")
    a = actions.add_parser("undo", help="take back the last change (an enrollment or a batch of them, a new class, a "
                                        "rename, a deletion, a clear); what happened since stays",
                           description="Take back the newest change to the store, or with --action the one named (ids: "
                                       "`teachcam store list --json`'s history). Changes made since it stay.")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("--action", dest="action_id", default="", help="the id of the change to take back (default: the newest)")
    a.add_argument("--json", action="store_true", help="print what was undone as JSON")
    a = actions.add_parser("export", help="write thumbnails + labels to a zip that `teachcam train --data` reads")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("archive", type=Path)
    a = actions.add_parser("import", help="merge an exported zip into a store (embeds with the bundle)")
    a.add_argument("store", type=Path, nargs="?", default=None, help="default: the running daemon's store")
    a.add_argument("archive", type=Path)
    add_bundle_flag(a)


def _daemon(store: Path | None):
    """A connected control client when a daemon answers and ``store`` is its store (or not given), else None."""
    from teachcam.edge.errors import ControlAccessError, ControlError
    from teachcam.edge.link.client import ControlClient

    try:
        client = ControlClient().connect()
    except ControlAccessError:
        raise  # a daemon holds the store: never write it behind its back
    except ControlError:
        return None
    try:
        theirs = client.request("status").get("store")
    except ControlError:
        theirs = None
    if store is None or (theirs is not None and Path(theirs).resolve() == Path(store).resolve()):
        return client
    client.close()
    return None


def _image_b64(path: Path) -> str:
    import base64

    from teachcam.edge.errors import ImageError

    if not path.is_file():
        raise ImageError(f"image not found: {path}" if not path.exists() else f"{path} is not a file")
    return base64.b64encode(path.read_bytes()).decode()


def _each_remote(client, images, op: str, failures: list[str], **fields):
    """Yield ``(path, reply data)`` for each image sent through the daemon; a bad one is one line."""
    from teachcam.edge.errors import TeachcamError

    group = f"cli-{os.getpid()}-{time.time():.0f}"  # the files of one command: one action for undo
    for path in images:
        named = {"name": path.name[:200], "group": group} if op == "enroll_image" else {}
        try:
            yield path, client.request(op, image=_image_b64(path), **fields, **named)
        except TeachcamError as exc:
            failures.append(str(exc))
            print(f"teachcam: error: {path}: {exc}", file=sys.stderr)


def _knn_options(args) -> dict:
    from teachcam.edge.teaching.knn import KNNConfig

    config = KNNConfig(k=args.k) if args.threshold is None else KNNConfig(k=args.k, threshold=args.threshold)
    return {"config": config, "cap": args.cap, "cap_policy": args.cap_policy}


def _pipeline(args, store):
    """The bundle's preprocessing and embedder for the store at ``store`` (the AI Camera's CPU stand-in when the store
    holds the sensor's embeddings)."""
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Embedder
    from teachcam.edge.model.preprocess import Preprocessor
    from teachcam.edge.model.sensor import SensorEmbedder, sensor_fingerprint
    from teachcam.edge.teaching.store import EnrollmentStore

    bundle = load_bundle(args.bundle)
    embedder = Embedder.create(bundle, args.precision, num_threads=args.threads)  # imx500: the CPU int8 model
    if "imx500" in bundle.manifest and Path(store).is_dir() and EnrollmentStore.generations(Path(store)):
        with EnrollmentStore.open(store, writable=False) as held:  # Teacher.open says what is wrong with a bad one
            if held.fingerprint == sensor_fingerprint(bundle):
                embedder = SensorEmbedder.without_camera(bundle, embedder)
    return Preprocessor.from_manifest(bundle.preprocessing), embedder


def cmd_enroll(args) -> int:
    from teachcam.edge.teaching.teacher import Teacher

    client = _daemon(args.store)
    if client is not None:
        with client:
            failures: list[str] = []
            done = [data for _, data in _each_remote(client, args.images, "enroll_image", failures, label=args.label)]
            counts = client.request("status").get("classes", {})
        name = done[-1]["label"] if done else args.label
        print(f"enrolled {len(done)} example(s) of {name!r} through the running daemon; its store now holds "
              + ", ".join(f"{label}: {n}" for label, n in counts.items()))
        return 1 if failures else 0
    preprocess, embedder = _pipeline(args, args.store or DEFAULT_STORE)
    with Teacher.open(args.store or DEFAULT_STORE, embedder, **_knn_options(args)) as teacher:
        name = teacher.resolve_name(args.label, create=True)  # a bad name fails before any work
        failures: list[str] = []
        # the daemon's rules (teaching.lessons), as `teachcam enroll` through a running daemon applies them
        items = [(name, Sample(pixels, embed=embedder.embed), path.name[:200])
                 for path, pixels in each_image(args.images, preprocess, failures)]
        added = [o for o in Lessons(teacher).enroll_many(items) if not o.skipped]
        counts = teacher.counts()
    print(f"enrolled {len(added)} example(s) of {name!r}; the store now holds "
          + ", ".join(f"{label}: {n}" for label, n in counts.items()))
    return 1 if failures else 0


def cmd_predict(args) -> int:
    from teachcam.edge.teaching.teacher import Teacher

    client = _daemon(args.store)
    failures: list[str] = []
    if client is not None:
        with client:
            results = [{"image": str(path), **data}
                       for path, data in _each_remote(client, args.images, "predict_image", failures)]
    else:
        store = args.store or DEFAULT_STORE
        preprocess, embedder = _pipeline(args, store)
        with Teacher.open(store, embedder, **_knn_options(args)) as teacher:
            if not len(teacher):
                raise StoreError(f"the store {store} has no examples yet: `teachcam enroll --label NAME IMAGE…` first")
            results = [{"image": str(path), **teacher.predict(embedder.embed(pixels)).as_json()}
                       for path, pixels in each_image(args.images, preprocess, failures)]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            others = "  ".join(f"{k} {v * 100:.0f}%" for k, v in sorted(r["confidences"].items(), key=lambda kv: -kv[1]))
            print(f"{r['image']}: {r['label']} (similarity {r['score']:.2f}, confidence {r['confidence'] * 100:.0f}%)"
                  f"   [{others}]")
    return 1 if failures else 0


def cmd_store(args) -> int:
    from teachcam.edge.teaching.archive import read_archive
    from teachcam.edge.teaching.teacher import Teacher

    client = _daemon(args.store) if args.action != "export" else None
    if client is not None:
        with client:
            return _store_remote(client, args)
    args.store = args.store or DEFAULT_STORE
    if args.action == "list":
        if not args.store.is_dir():
            raise StoreError(f"no store at {args.store}")
        with Teacher.open(args.store, writable=False) as teacher:
            counts, snap = teacher.counts(), teacher.snapshot
        _print_listing(args.json, {"store": str(args.store), "generation": snap.generation,
                                   "fingerprint": snap.fingerprint, "classes": counts,
                                   "history": [a.brief() for a in reversed(snap.history)]},
                       f"generation {snap.generation}")
        return 0
    if not args.store.is_dir():
        raise StoreError(f"no store at {args.store}")
    if args.action == "import":
        return _import(args, read_archive(args.archive))
    with Teacher.open(args.store) as teacher:
        if args.action == "rename":
            teacher.rename_class(args.old, args.new, via="cli")
            print(f"renamed {args.old!r} to {args.new!r}")
        elif args.action == "remove-class":
            print(f"removed {teacher.remove_class(args.label, via='cli')} example(s) of {args.label!r}")
        elif args.action == "clear":
            if not args.yes and sys.stdin.isatty():
                if input(f"forget all {len(teacher)} example(s) in {args.store}? [y/N] ").strip().lower() != "y":
                    print("nothing changed")
                    return 1
            print(f"cleared {teacher.clear(via='cli')} example(s); `teachcam store undo` brings them back")
        elif args.action == "undo":
            done = teacher.undo(args.action_id or None)
            _print_undone(args.json, None if done is None else done.reply(teacher.next_undo()))
        elif args.action == "export":
            print(f"exported {teacher.export(args.archive)} example(s) to {args.archive}")
    return 0


def _print_listing(as_json: bool, listing: dict, where: str) -> None:
    """``store list``'s output, whether the store was read directly or through the daemon."""
    if as_json:
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return
    counts = listing["classes"]
    print(f"{listing['store']} ({where}): {sum(counts.values())} example(s) in {len(counts)} class(es), embedder "
          f"{(listing.get('fingerprint') or '-')[:12]}")
    for label, n in counts.items():
        print(f"  {n:5d}  {label}")
    if listing.get("history"):
        print(f"undo would take back: {listing['history'][0]['text']} ({listing['history'][0]['via'] or '?'})")


def _print_undone(as_json: bool, reply: dict | None) -> None:
    """What ``store undo`` did, directly or through the daemon."""
    if as_json:
        print(json.dumps(reply or {"undone": None}, indent=2, ensure_ascii=False))
    elif reply is None or not reply.get("undone"):
        print("nothing to undo")
    else:
        print(f"undid: {reply['undone']}" + (f"; next: {reply['undo']['text']}" if reply.get("undo") else ""))


def _store_remote(client, args) -> int:
    """``store …`` through the running daemon (its store; the changes reach every port)."""
    from teachcam.edge.teaching.archive import read_archive

    if args.action == "list":
        status, listing = client.request("status"), client.request("classes")
        _print_listing(args.json, {"store": status.get("store"), "daemon": True, "fingerprint": status.get("fingerprint"),
                                   "classes": {c["label"]: c["count"] for c in listing["classes"]},
                                   "history": [listing["undo"]] if listing.get("undo") else []},
                       "through the running daemon")
    elif args.action == "rename":
        data = client.request("rename_class", old=args.old, new=args.new)
        print(f"renamed {data['old']!r} to {data['new']!r}")
    elif args.action == "remove-class":
        data = client.request("remove_class", label=args.label)
        print(f"removed {data['count']} example(s) of {data['label']!r}")
    elif args.action == "clear":
        if not args.yes and sys.stdin.isatty():
            if input("forget every example the running daemon knows? [y/N] ").strip().lower() != "y":
                print("nothing changed")
                return 1
        print(f"cleared {client.request('clear')['count']} example(s); `teachcam store undo` brings them back")
    elif args.action == "undo":
        reply = client.request("undo", action=args.action_id) if args.action_id else client.request("undo")
        _print_undone(args.json, reply)
    elif args.action == "import":
        import base64

        added = duplicates = 0
        group = f"import-{os.getpid()}-{time.time():.0f}"  # one import, one action for undo
        for label, data in read_archive(args.archive):
            reply = client.request("enroll_image", label=label, image=base64.b64encode(data).decode(), name="import",
                                   unique=True, group=group)
            duplicates += reply.get("skipped") == SKIPPED_DUPLICATE
            added += "skipped" not in reply
        print(f"imported {added} example(s) through the running daemon"
              + (f" ({duplicates} already there, skipped)" if duplicates else ""))
    return 0


def _import(args, members) -> int:
    import io

    import numpy as np
    from PIL import Image

    from teachcam.edge.teaching.teacher import Teacher

    preprocess, embedder = _pipeline(args, args.store)
    with Teacher.open(args.store, embedder) as teacher:
        items = []
        for label, data in members:
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"), np.uint8)
            if pixels.shape[:2] != (preprocess.crop_height, preprocess.crop_width):
                pixels = preprocess(pixels)
            items.append((label, Sample(pixels, embed=embedder.embed), "import"))
        if not items:
            raise StoreError(f"{args.archive} holds no images in class folders")
        # Thumbnails are content-addressed: an example already in the same class is not added twice.
        outcomes = Lessons(teacher).enroll_many(items, unique=True)
        duplicates = sum(1 for o in outcomes if o.skipped)
        print(f"imported {len(outcomes) - duplicates} example(s) into {args.store}"
              + (f" ({duplicates} already there, skipped)" if duplicates else "") + ": "
              + ", ".join(f"{k}: {v}" for k, v in teacher.counts().items()))
    return 0


COMMANDS = {"enroll": cmd_enroll, "predict": cmd_predict, "store": cmd_store}
