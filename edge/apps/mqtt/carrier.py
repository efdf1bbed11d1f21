"""The bridge's hands for the fleet: what :class:`~teachcam.edge.apps.mqtt.sync.FleetSync` decides, carried out —
messages published, requests to the daemon, this device's own examples shared.

Examples from the fleet are not enrolled one request at a time: they gather into one ``enroll_embeddings`` request
(at most ``BATCH``, or what came within ``WAIT`` s), which the daemon applies in one durable write. A Pi joining a
fleet of a hundred catches up on 10,000 examples in ~100 writes instead of 10,000 (scripts/bench/fleet.py).
Everything else waits for the gathered examples to go first, so the order of the fleet's messages holds.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from collections.abc import Callable

from teachcam.edge.apps.mqtt import fleet
from teachcam.edge.apps.mqtt.sync import Ask, FleetSync, Publish, Share
from teachcam.edge.errors import ControlError

log = logging.getLogger(__name__)
BATCH = 100  # examples in one enroll_embeddings request (the control socket takes 200)
WAIT = 0.25  # s an example from the fleet may wait for others to join its request


class FleetCarrier:
    def __init__(self, sync: FleetSync, group: str, device: str, *, ask: Callable, publish: Callable):
        self.sync, self.group, self.device = sync, group, device
        self.ask, self.publish = ask, publish
        self.gathered: list[Ask] = []
        self.since = 0.0
        self.batched = True  # False: the daemon is older and knows no enroll_embeddings

    def carry_out(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Ask) and action.op == "enroll_embedding" and self.batched:
                if not self.gathered:
                    self.since = time.monotonic()
                self.gathered.append(action)
                if len(self.gathered) >= BATCH:
                    self.flush()
                continue
            self.flush()  # what came before goes first
            if isinstance(action, Publish):
                self.publish(action.topic, action.payload, retain=action.retain, qos=action.qos)
            elif isinstance(action, Ask):
                self._ask(action)
            elif isinstance(action, Share):
                self._share(action)

    def tick(self, now: float) -> None:
        if self.gathered and now - self.since >= WAIT:
            self.flush()

    def flush(self) -> None:
        gathered, self.gathered = self.gathered, []
        if not gathered:
            return
        try:
            results = self.ask("enroll_embeddings", via="fleet", examples=[a.fields for a in gathered])["results"]
        except ControlError as exc:
            if "unknown op" in str(exc):
                log.info("the daemon takes fleet examples one at a time (an older teachcam)")
                self.batched = False
                for action in gathered:
                    self._ask(action)
                return
            log.warning("fleet: %d example(s) not enrolled: %s", len(gathered), exc)
            return
        for action, result in zip(gathered, results, strict=False):
            if "error" in result:
                log.warning("%s: %s", action.refused, result["error"])

    def _ask(self, action: Ask) -> None:
        try:
            self.ask(action.op, via="fleet", **action.fields)
        except ControlError as exc:
            (log.warning if action.warn else log.info)("%s: %s", action.refused or action.op, exc)

    def _share(self, action: Share) -> None:
        """One of this device's own examples, retained for the fleet (the thumbnail fitted to the 8 KB message)."""
        from PIL import Image

        try:
            data = self.ask("example", example=action.example_id)
        except ControlError as exc:
            log.debug("example %s: %s", action.example_id, exc)
            self.sync.not_shared(action.example_id)
            return
        bare = fleet.FleetExample(self.group, self.device, action.example_id, data["label"], data["fingerprint"],
                                  data["embedding"], "", data["added"])
        with Image.open(io.BytesIO(base64.b64decode(data["png"]))) as image:
            jpeg = fleet.fit_jpeg(image, fleet.jpeg_budget(bare))
        shared = dataclasses.replace(bare, jpeg=base64.b64encode(jpeg).decode())
        self.publish(fleet.example_topic(self.group, self.device, action.example_id), shared.payload(), retain=True,
                     qos=1)
