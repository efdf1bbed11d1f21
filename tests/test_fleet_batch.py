"""Examples from the fleet taken in batches (#25: a fleet of a hundred): one `enroll_embeddings` request, one durable
write, each example's own outcome; the per-class cap applied before any thumbnail is written; the fleet's format-2
message (at most 8 KB) read back to the same example. A real daemon on its control socket."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.apps.mqtt import fleet
from teachcam.edge.errors import ControlError
from tests.helpers import RunningDaemon, save_views

pytestmark = pytest.mark.slow


def jpeg_of(pixels: np.ndarray, quality: int = 80) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return base64.b64encode(out.getvalue()).decode()


def test_a_batch_of_fleet_examples_is_one_write_with_an_outcome_each(bundle_path, tmp_path):
    camera = tmp_path / "camera"
    save_views(camera, "chelsea.png", 2, seed=70)
    config = tmp_path / "teachcam.toml"
    config.write_text("[knn]\ncap = 3\n")
    daemon = RunningDaemon(bundle_path, tmp_path, camera, "--config", str(config), socket=tmp_path / "d.sock")
    try:
        fingerprint = daemon.status()["fingerprint"]
        rng = np.random.default_rng(0)
        pictures = [rng.integers(0, 255, (224, 224, 3), np.uint8) for _ in range(6)]
        vectors = [rng.normal(size=1280).astype("<f4") for _ in range(6)]
        items = [{"label": "mug", "source": f"fleet:pi2:e{i}", "fingerprint": fingerprint,
                  "embedding": base64.b64encode(vectors[i].tobytes()).decode(), "image": jpeg_of(pictures[i])}
                 for i in range(5)]
        items.append({"label": "unknown", "source": "fleet:pi2:bad-name", "fingerprint": fingerprint,
                      "embedding": base64.b64encode(vectors[5].tobytes()).decode(), "image": jpeg_of(pictures[5])})
        items.append({**items[0], "source": "fleet:pi2:bad-picture", "image": base64.b64encode(b"not a jpeg").decode()})
        items.append(dict(items[1]))  # the same source twice: taken once
        generations = sorted(daemon.store.glob("gen-*.tcs"))
        before = generations[-1].name if generations else ""
        results = daemon.request("enroll_embeddings", via="fleet", examples=items)["results"]
        assert [("error" in r, r.get("skipped")) for r in results] == \
            [(False, None)] * 5 + [(True, None), (True, None), (False, "known")]
        assert "reserved word" in results[5]["error"] and "image" in results[6]["error"].lower()
        assert daemon.status()["classes"] == {"mug": 3}  # the cap (3) holds
        after = sorted(daemon.store.glob("gen-*.tcs"))[-1].name
        assert int(after[4:12]) == (int(before[4:12]) if before else 0) + 1  # five examples, one durable write
        thumbs = list((daemon.store / "thumbs").glob("*/*.png"))
        assert len(thumbs) == 3  # none written for the two the cap dropped at once (a fleet's: no undo of it)
        kept = {e["source"]: e for c in daemon.request("classes")["classes"] for e in c["examples"]}
        assert len(kept) == 3 and all(source.startswith("fleet:pi2:e") for source in kept)
        # the same batch again: every example known, nothing written
        again = daemon.request("enroll_embeddings", via="fleet", examples=items[:5])["results"]
        assert sum(r.get("skipped") == "known" for r in again) == 3
        # bad requests: one line, nothing changes
        for bad, message in (([], "1 to 200"), ([{"label": "x"}] * 201, "1 to 200"), ([{"label": "x"}], "source"),
                             ([{**items[0], "color": 1}], "object with")):
            with pytest.raises(ControlError, match=message):
                daemon.request("enroll_embeddings", examples=bad)
        assert daemon.status()["classes"] == {"mug": 3}
    finally:
        daemon.stop()


def test_the_fleets_8_kb_message_reads_back_the_same_example(bundle_path):
    from teachcam.edge.samples import sample_photos

    photo = np.asarray(Image.open(sample_photos(("chelsea.png",))[0]).convert("RGB").resize((224, 224)))
    noisy = np.clip(photo + np.random.default_rng(1).normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    vector = np.random.default_rng(2).normal(size=1280).astype("<f4")
    bare = fleet.FleetExample("home", "pi-door", "6614e264d702d-097b0d5e", "parcel", "f" * 64,
                              base64.b64encode(vector.tobytes()).decode(), "", time.time())
    jpeg = fleet.fit_jpeg(Image.fromarray(noisy), fleet.jpeg_budget(bare))
    example = fleet.FleetExample(**{**bare.__dict__, "jpeg": base64.b64encode(jpeg).decode()})
    payload = example.payload()
    assert payload.startswith(fleet.MAGIC) and len(payload) <= fleet.WIRE_BUDGET
    assert len(example.payload_v1()) > len(payload)
    topic = fleet.example_topic("home", "pi-door", bare.id)
    back = fleet.decode(topic, payload, "home")
    assert (back.label, back.device, back.id, back.fingerprint) == ("parcel", "pi-door", bare.id, "f" * 64)
    restored = np.frombuffer(base64.b64decode(back.embedding), "<f4")
    assert np.allclose(restored, vector, rtol=1e-3, atol=1e-3)  # float16 on the wire
    assert float(restored @ vector / np.linalg.norm(restored) / np.linalg.norm(vector)) > 0.99999
    assert Image.open(io.BytesIO(base64.b64decode(back.jpeg))).format == "JPEG"
    assert fleet.decode(topic, example.payload_v1(), "home").label == "parcel"  # format 1 is still read
    for broken in (payload[:40], payload[:-len(jpeg)] + b"GIF89a", fleet.MAGIC + b"\xff\xff{"):
        with pytest.raises(fleet.FleetError):
            fleet.decode(topic, broken, "home")
