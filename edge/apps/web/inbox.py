"""The page's "To label" routes: the daemon's review inbox (:mod:`teachcam.edge.daemon.review`) through the socket.

==============================  =================================================================
``GET /api/inbox``              the items, most useful first, and the count (the page's badge)
``GET /api/inbox/<id>.jpg``     one item's picture (what the model saw)
``POST /api/inbox/label``       ``{"item", "label"}``: enroll it into that class (made if new)
``POST /api/inbox/discard``     ``{"item"}`` or ``{"all": true}``
==============================  =================================================================
"""

from __future__ import annotations

import base64
import re

from aiohttp import web

from teachcam.edge.errors import TeachcamError

ITEM_ID = re.compile(r"[0-9a-f]{4,32}")


def _item(value) -> str:
    if not isinstance(value, str) or not ITEM_ID.fullmatch(value):
        raise TeachcamError("item must be an inbox item's id (from /api/inbox)")
    return value


class InboxRoutes:
    def __init__(self, link, read_body):
        self.link, self.read_body = link, read_body

    def add_to(self, router) -> None:
        router.add_get("/api/inbox", self.listing)
        router.add_get("/api/inbox/{item}.jpg", self.picture)
        router.add_post("/api/inbox/label", self.label)
        router.add_post("/api/inbox/discard", self.discard)

    async def listing(self, request):
        return web.json_response(await self.link.request("inbox"))

    async def picture(self, request):
        data = await self.link.request("inbox", item=_item(request.match_info["item"]))
        return web.Response(body=base64.b64decode(data["jpeg"]), content_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def label(self, request):
        body = await self.read_body(request)
        label = body.get("label")
        if not isinstance(label, str) or not label.strip():
            raise TeachcamError("label must be a class name")
        return web.json_response(await self.link.request("inbox_label", item=_item(body.get("item")), label=label))

    async def discard(self, request):
        body = await self.read_body(request)
        if body.get("all") is True:
            return web.json_response(await self.link.request("inbox_discard", all=True))
        return web.json_response(await self.link.request("inbox_discard", item=_item(body.get("item"))))
