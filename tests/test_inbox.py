"""The review inbox (#26): what it keeps and why, its bounds, its files surviving a kill, and labelling it through
the daemon (socket, CLI) — one example enrolled, exactly that one, once."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teachcam.edge import messages as m
from teachcam.edge.errors import ControlError
from teachcam.edge.link.client import ControlClient
from teachcam.edge.teaching.inbox import Inbox, InboxRules, Item, Watch
from teachcam.edge.teaching.names import UNKNOWN
from tests.helpers import RunningDaemon, augmented_views, run_teachcam, save_views, wait_for

THRESHOLD = 0.86


def stream(watch: Watch, frames, start: float = 1000.0, step: float = 0.1) -> list[str | None]:
    """Feed (label, score, confidences) frames ``step`` seconds apart; what the rules said for each."""
    return [watch.observe(label, score, conf, THRESHOLD, start + i * step) for i, (label, score, conf) in
            enumerate(frames)]


CONFIDENT = ("mug", 0.95, {"mug": 0.97, "cat": 0.03})


def test_each_rule_fires_on_its_moment_and_a_confident_stream_stays_quiet():
    rules = InboxRules()
    assert set(stream(Watch(rules), [CONFIDENT] * 300)) == {None}  # 30 s of a confident answer
    # barely recognised: within unsure_margin above the threshold
    assert stream(Watch(rules), [CONFIDENT] * 5 + [("mug", THRESHOLD + 0.01, {"mug": 0.9, "cat": 0.1})])[-1] == "unsure"
    # two classes nearly tied
    assert stream(Watch(rules), [("mug", 0.93, {"mug": 0.55, "cat": 0.45})])[-1] == "tie"
    # the answer flips back and forth: three changes within flip_window
    flips = stream(Watch(rules), [CONFIDENT, ("cat", 0.95, {"cat": 0.97, "mug": 0.03})] * 3, step=0.5)
    assert "flicker" in flips and flips.index("flicker") == 3
    # slow changes (one every 3 s) are not a flicker
    assert "flicker" not in stream(Watch(rules), [CONFIDENT, ("cat", 0.95, {"cat": 0.97, "mug": 0.03})] * 4, step=3.0)
    # something unrecognised that stays new_after seconds: from then on, every frame while it stays (the inbox
    # counts them into one item), until it is recognised
    unknown = (UNKNOWN, 0.6, {"mug": 0.6, "cat": 0.4})
    said = stream(Watch(rules), [unknown] * 120 + [CONFIDENT] * 10 + [unknown] * 30)  # 12 s, 1 s, 3 s
    assert said.index("new") == 50 and set(said[50:120]) == {"new"} and set(said[120:]) == {None}
    # ...but not when nothing was taught yet (everything is new: nothing to ask)
    assert set(stream(Watch(rules), [(UNKNOWN, 0.0, {})] * 120)) == {None}
    # a rule turned off (margin 0) stays quiet
    assert stream(Watch(replace(rules, tie_margin=0.0)), [("mug", 0.93, {"mug": 0.55, "cat": 0.45})])[-1] is None


def vectors(n: int, seed: int = 0, d: int = 64) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(size=(n, d))).astype(np.float32)


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def keep(inbox: Inbox, vector, seed: int, now: float, reason: str = "unsure"):
    return inbox.keep(reason, vector, picture(seed), [("mug", 0.6), ("cat", 0.4)], 0.87, "fp", now)


def test_cap_rate_and_merging(tmp_path):
    rules = InboxRules(size=5, interval=3.0, merge=0.97)
    inbox = Inbox.open(tmp_path / "inbox", rules)
    rows = vectors(10)
    assert keep(inbox, rows[0], 0, 100.0)[0] == "added"
    assert keep(inbox, rows[1], 1, 101.0) is None  # within interval of the last new item: not kept
    # a near-copy of a kept item is counted, not added — whatever the rate
    what, item = keep(inbox, rows[0] * 1.001, 2, 101.5)
    assert what == "merged" and item.seen == 2 and len(inbox) == 1
    now = 104.0
    for i in range(1, 8):  # 7 more distinct moments, 3 s apart: the cap holds 5
        assert keep(inbox, rows[i], i, now)[0] == "added"
        now += 3.0
    assert len(inbox) == 5
    ids = [i["id"] for i in inbox.listing()]
    assert ids[0] == item.id, "the moment seen twice is the most useful, and was kept when the inbox was full"
    assert sorted(p.name for p in (tmp_path / "inbox").iterdir()) == sorted(f"{i}.item" for i in ids)
    again = Inbox.open(tmp_path / "inbox", rules)  # the merge count was written (at most once an interval)
    inbox.flush(force=True)
    again = Inbox.open(tmp_path / "inbox", rules)
    assert again.items[item.id].seen == 2 and len(again) == 5
    got = again.items[item.id]
    assert np.array_equal(got.embedding, rows[0]) and got.pixels().shape == (32, 32, 3)
    assert got.guesses == [["mug", 0.6], ["cat", 0.4]] and got.reason == "unsure"


def test_files_are_the_stores_kind_and_a_damaged_one_is_set_aside(tmp_path):
    inbox = Inbox.open(tmp_path / "inbox", InboxRules(interval=0))
    _, item = keep(inbox, vectors(1)[0], 0, 100.0)
    path = tmp_path / "inbox" / f"{item.id}.item"
    assert (path.stat().st_mode & 0o777) == 0o640 and ((tmp_path / "inbox").stat().st_mode & 0o777) == 0o750
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # as a disk that lied about fsync might leave it
    (tmp_path / "inbox" / ".x.item.tmp-123").write_bytes(b"half")
    again = Inbox.open(tmp_path / "inbox", InboxRules())
    assert len(again) == 0 and (tmp_path / "inbox" / f"{item.id}.item.bad").exists()
    assert not (tmp_path / "inbox" / ".x.item.tmp-123").exists()


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from teachcam.edge.teaching.inbox import Inbox, InboxRules
    inbox = Inbox.open(sys.argv[1], InboxRules(size=40, interval=0, merge=0.999))
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(100000):
        v = np.abs(rng.normal(size=256)).astype(np.float32)
        what, item = inbox.keep("new", v, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), [("a", 0.5)], 0.5, "fp")
        if i == 5:
            print("writing", flush=True)
        if i % 3 == 0:
            inbox.remove(item.id)
""")


def test_sigkill_while_collecting_leaves_a_readable_inbox(tmp_path):
    folder = tmp_path / "inbox"
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(round_)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.05 + 0.1 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        inbox = Inbox.open(folder, InboxRules(size=40))
        assert 0 < len(inbox) <= 40 + 1  # the cap (one more at most: killed between its write and the eviction)
        assert not list(folder.glob("*.bad")), "every item file is whole or absent"
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "half-written files are cleaned up"
        assert all(Item.decode((folder / f"{i}.item").read_bytes()).embedding.shape == (256,) for i in inbox.items)


# -- through the daemon --------------------------------------------------------------------------------


@pytest.fixture
def taught_daemon(bundle_path, tmp_path):
    """A daemon taught cat and coffee (files through the socket) whose camera sees a rocket it was never shown:
    something new that stays."""
    save_views(tmp_path / "camera", "rocket.jpg", 3, seed=60)
    config = tmp_path / "teachcam.toml"
    config.write_text("[inbox]\nnew_after = 0.5\ninterval = 0.2\nmerge = 0.999\n")
    running = RunningDaemon(bundle_path, tmp_path, tmp_path / "camera", "--config", str(config))
    for label, photo in (("cat", "chelsea.png"), ("coffee", "coffee.png")):
        paths = save_views(tmp_path / label, photo, 3, seed=61)
        assert run_teachcam("enroll", "--label", label, *map(str, paths)).returncode == 0
    yield running
    running.stop()


def test_label_through_the_socket_and_the_cli_enrolls_exactly_that_example(taught_daemon, tmp_path):
    d = taught_daemon
    assert wait_for(lambda: len(d.request("inbox")["items"]) >= 3, timeout=60), d.log.read_text()[-2000:]
    listing = d.request("inbox")
    first, second, third = listing["items"][:3]
    assert first["reason"] == "new" and [g[0] for g in first["guesses"]] and first["seen"] >= 1
    with ControlClient(d.socket) as client:
        picture_ = client.request("inbox", item=first["id"])["jpeg"]  # its picture: what the model saw
    assert Image.open(io.BytesIO(base64.b64decode(picture_))).size == (224, 224)
    before = d.request("classes")
    kept = Item.decode((tmp_path / "store" / "inbox" / f"{first['id']}.item").read_bytes())
    # the socket: enrolls the stored embedding into a new class
    result = d.request("inbox_label", item=first["id"], label="rocket")
    assert result["label"] == "rocket" and result["count"] == 1 and result["item"] == first["id"]
    assert result["reembedded"] is False  # the embedding kept with the item, no inference
    data = d.request("example", example=result["example"])
    assert data["source"] == f"inbox:{first['id']}" and data["label"] == "rocket"
    stored = np.frombuffer(base64.b64decode(data["embedding"]), "<f4")
    assert np.allclose(stored, kept.embedding / np.linalg.norm(kept.embedding), atol=1e-6)  # exactly that moment
    assert first["id"] not in [i["id"] for i in d.request("inbox")["items"]]
    counts = {c["label"]: c["count"] for c in d.request("classes")["classes"]}
    assert counts == {**{c["label"]: c["count"] for c in before["classes"]}, "rocket": 1}
    # the CLI: list, label, discard, with --json
    out = run_teachcam("inbox")
    assert out.returncode == 0 and second["id"] in out.stdout and "teachcam inbox label" in out.stdout
    out = run_teachcam("inbox", "label", second["id"], "rocket", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["count"] == 2
    out = run_teachcam("inbox", "discard", third["id"])
    assert out.returncode == 0 and "discarded" in out.stdout
    counts = {c["label"]: c["count"] for c in d.request("classes")["classes"]}
    assert counts["rocket"] == 2 and sum(counts.values()) == sum(c["count"] for c in before["classes"]) + 2
    # bad input: one line, nothing changes
    for args, words in ((("label", "nosuchitem", "rocket"), "no inbox item 'nosuchitem'"),
                        (("label", third["id"], "rocket"), "labelled or discarded already"),
                        (("label",), "usage: teachcam inbox label ID CLASS")):
        out = run_teachcam("inbox", *args)
        assert out.returncode != 0 and words in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    items = d.request("inbox")["items"]
    if items:
        with pytest.raises(ControlError, match="reserved"):
            d.request("inbox_label", item=items[0]["id"], label="unknown")
        with pytest.raises(ControlError, match="class name"):
            d.request("inbox_label", item=items[0]["id"], label="a/b")
        assert items[0]["id"] in [i["id"] for i in d.request("inbox")["items"]], "a refused label keeps the item"
    assert {c["label"]: c["count"] for c in d.request("classes")["classes"]} == counts
    # undo takes the last labelling back like any enrollment
    assert d.request("undo")["removed"] == 1
    assert {c["label"]: c["count"] for c in d.request("classes")["classes"]}["rocket"] == 1
    # clear
    assert run_teachcam("inbox", "clear").returncode == 0


def test_two_clients_labelling_one_item_enroll_it_once(taught_daemon):
    d = taught_daemon
    assert wait_for(lambda: d.request("inbox")["items"], timeout=60)
    item = d.request("inbox")["items"][0]["id"]
    results: list = []

    def label(name):
        try:
            results.append(d.request("inbox_label", item=item, label=name))
        except ControlError as exc:
            results.append(exc)

    threads = [threading.Thread(target=label, args=(name,)) for name in ("rocket", "kettle")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, ControlError)]
    assert len(done) == 1 and len(refused) == 1 and "already" in str(refused[0])
    sources = [e for c in d.request("classes")["classes"] for e in c["examples"] if e["source"] == f"inbox:{item}"]
    assert len(sources) == 1


def test_a_kill_between_enrolling_and_removing_the_item_never_labels_it_twice(taught_daemon, tmp_path):
    d = taught_daemon
    assert wait_for(lambda: d.request("inbox")["items"], timeout=60)
    item = d.request("inbox")["items"][0]["id"]
    path = tmp_path / "store" / "inbox" / f"{item}.item"
    kept = path.read_bytes()
    d.request("inbox_label", item=item, label="rocket")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    path.write_bytes(kept)  # as if the kill came after the store's write and before the item's file went
    os.chmod(path, 0o640)
    d.start()
    assert item not in [i["id"] for i in d.request("inbox")["items"]]
    classes = {c["label"]: c["count"] for c in d.request("classes")["classes"]}
    assert classes["rocket"] == 1


def test_the_inbox_can_be_turned_off(bundle_path, tmp_path):
    save_views(tmp_path / "camera", "rocket.jpg", 2, seed=60)
    config = tmp_path / "teachcam.toml"
    config.write_text("[inbox]\nenabled = false\n")
    running = RunningDaemon(bundle_path, tmp_path, tmp_path / "camera", "--config", str(config))
    try:
        with pytest.raises(ControlError, match=r"turned off in the config \(\[inbox\] enabled = false\)"):
            running.request("inbox")
        assert not (tmp_path / "store" / "inbox").exists()
    finally:
        running.stop()
    bad = tmp_path / "bad.toml"
    bad.write_text("[inbox]\nsize = 0\n")
    out = run_teachcam("run", "--config", str(bad), "--bundle", str(bundle_path))
    assert out.returncode != 0 and "inbox.size must be 1-2000 items" in out.stderr


def test_augmented_views_helper_is_deterministic():  # the fixtures above rely on it
    assert np.array_equal(augmented_views("rocket.jpg", 1, 3)[0], augmented_views("rocket.jpg", 1, 3)[0])


def test_mqtt_publishes_the_count_and_labels_through_request_topics(taught_daemon, tmp_path):
    from tests.test_mqtt import BridgeProcess, Broker, Watcher

    broker = Broker(tmp_path / "broker")
    watcher = bridge = None
    try:
        d = taught_daemon
        assert wait_for(lambda: len(d.request("inbox")["items"]) >= 2, timeout=60)
        watcher = Watcher(broker.port)
        bridge = BridgeProcess(tmp_path, "pi1", d.socket, broker.port)
        base = "teachcam/pi1"
        discovery = "homeassistant/device/pi1/config"
        assert watcher.wait(lambda: watcher.last_json(f"{base}/inbox") and watcher.on(discovery))
        sensor = json.loads(watcher.on(discovery)[-1])["cmps"]["inbox"]
        assert sensor["name"] == "Needs a label" and sensor["stat_t"] == f"{base}/inbox"
        assert sensor["ent_cat"] == "diagnostic" and sensor["val_tpl"] == "{{ value_json.count }}"
        assert watcher.last_json(f"{base}/inbox")["count"] >= 2
        d.request("pause")  # nothing new comes in meanwhile: the counts below are exact
        items = d.request("inbox")["items"]
        watcher.publish(f"{base}/request/inbox_label", {"id": "t1", "item": items[0]["id"], "label": "rocket"})
        assert watcher.wait(lambda: watcher.last_json(f"{base}/response/inbox_label"))
        reply = watcher.last_json(f"{base}/response/inbox_label")
        assert reply["status"] == "ok" and reply["data"]["label"] == "rocket", reply
        assert watcher.wait(lambda: watcher.last_json(f"{base}/inbox")["count"] == len(items) - 1)
        # a late subscriber (Home Assistant restarting) gets the count at once: retained
        late = Watcher(broker.port, topics=(f"{base}/inbox",))
        try:
            assert late.wait(lambda: late.last_json(f"{base}/inbox") == {"count": len(items) - 1})
        finally:
            late.close()
        watcher.publish(f"{base}/request/inbox_label", {"id": "t2", "item": items[0]["id"], "label": "rocket"})
        assert watcher.wait(lambda: watcher.last_json(f"{base}/response/inbox_label")["id"] == "t2")
        assert "already" in watcher.last_json(f"{base}/response/inbox_label")["error"]
        watcher.publish(f"{base}/request/inbox_discard", {"item": items[1]["id"]})
        assert watcher.wait(lambda: watcher.last_json(f"{base}/inbox")["count"] == len(items) - 2)
        sources = [e["source"] for c in d.request("classes")["classes"] for e in c["examples"]]
        assert sources.count(f"inbox:{items[0]['id']}") == 1 and f"inbox:{items[1]['id']}" not in sources
    finally:
        for part in (bridge, watcher, broker):
            if part is not None:
                part.stop() if hasattr(part, "stop") else part.close()


def test_the_page_labels_and_discards_from_to_label(bundle_path, tmp_path, factory):
    """The page's "To label" view (Debian's Chromium): the count badge, each moment's picture and guesses; a new
    class typed in enrolls exactly that moment's embedding; Discard drops one; accessible (axe-core)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from axe_playwright_python.sync_playwright import Axe

    from teachcam.edge.model.images import read_image
    from teachcam.edge.samples import sample_photos
    from tests.helpers import make_daemon
    from tests.test_web import CHROMIUM, WebProcess, call, open_page

    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    rules = InboxRules(new_after=0.3, interval=0.2, merge=0.999)
    daemon = make_daemon(bundle_path, tmp_path, factory, augmented_views("chelsea.png", 7, seed=80), inbox=rules)
    coffee = next(p for p in sample_photos() if p.name == "coffee.png")
    daemon.teacher.add("coffee", daemon.embedder.embed(daemon.preprocess(read_image(coffee))),
                       daemon.preprocess(read_image(coffee)), via="cli")  # taught: coffee; the camera sees a cat
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    web = WebProcess(tmp_path, Path(os.environ["TEACHCAM_SOCKET"]), tmp_path / "store")
    try:
        assert wait_for(lambda: len(daemon.review.inbox) >= 3, timeout=30)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = open_page(browser, web, phone=True, width=412, height=915)
            daemon.post(m.Pause(via="test"))  # nothing new comes in meanwhile
            assert wait_for(lambda: daemon.paused, timeout=10)
            count = len(daemon.review.inbox)
            page.wait_for_function(f"document.querySelectorAll('#inbox article').length === {count}")
            assert page.text_content("#inbox-count") == str(count) and page.is_visible("#inbox-link")
            assert page.locator("#inbox article").count() == count
            assert page.evaluate("document.querySelector('#inbox img').naturalWidth") in (0, 224)  # (lazy)
            first = page.locator("#inbox article").first
            assert "something new stayed" in first.text_content() and "coffee" in first.text_content()
            item_id = page.evaluate("document.querySelector('#inbox img').src.split('/').pop().split('.')[0]")
            kept = daemon.review.inbox.items[item_id].embedding.copy()
            violations = [(v["id"], v["impact"]) for v in Axe().run(page).response["violations"]
                          if v["impact"] in ("serious", "critical", "moderate")]
            assert not violations, violations
            first.locator("input").fill("cat")
            first.locator("button[type=submit]").click()
            page.wait_for_function("document.getElementById('toast').textContent.startsWith('added to cat')")
            snap = daemon.teacher.snapshot
            (example,) = [e for e in snap.examples if e.source == f"inbox:{item_id}"]
            row = snap.embeddings[snap.examples.index(example)]
            assert example.label == "cat" and np.allclose(row, kept / np.linalg.norm(kept), atol=1e-6)
            page.wait_for_function(f"document.getElementById('inbox-count').textContent === '{count - 1}'")
            page.locator("#inbox article").first.locator("button.danger").click()
            page.wait_for_function(f"document.getElementById('inbox-count').textContent === '{count - 2}'")
            assert len(daemon.review.inbox) == count - 2 and daemon.teacher.counts() == {"coffee": 1, "cat": 1}
            assert not page.errors, page.errors
            browser.close()
        status, body = call(web, "POST", "/api/inbox/label", {"item": "../../x", "label": "cat"},
                            headers={"X-Teachcam": "1"})
        assert status == 400 and "inbox item's id" in body["error"]
    finally:
        web.stop()
        daemon.stop()
        loop.join(timeout=10)
        daemon.close()
