"""``teachcam web``: the page a phone teaches the camera from — served by a process of its own, which reaches
the daemon only through the control socket (:mod:`teachcam.edge.link`).

* :mod:`.auth` — the pairing token, sessions, and the checks every request passes (Host, Origin, CSRF);
* :mod:`.link` — the asyncio client of the control socket (one connection: requests, events, frames);
* :mod:`.server` — the aiohttp application: the page, MJPEG, the websocket, the JSON API, /healthz, /metrics;
* ``static/`` — the page itself (HTML, CSS, JavaScript; no build step, nothing from a CDN).
"""
