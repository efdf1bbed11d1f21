"""Examples in and out of the page: the store as a zip (download), images and zips (upload) through the daemon."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from pathlib import Path

from aiohttp import web

from teachcam.edge.apps.web.link import DaemonLink
from teachcam.edge.errors import ControlError, TeachcamError
from teachcam.edge.teaching.archive import export_store, is_image_name, iter_archive

BODY_TIMEOUT = 15.0  # seconds a JSON body may take to arrive, and an upload between two of its chunks


def error(status: int, message: str) -> web.Response:
    """The one shape of every refusal: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status)


async def export(request, store) -> web.StreamResponse:
    """The store's examples as a zip, read from the store on disk (read-only; a generation is complete),
    streamed from a temporary file (a Pi need not hold a thousand thumbnails in memory)."""
    with tempfile.TemporaryDirectory(prefix="teachcam-export-") as tmp:
        path = Path(tmp) / "teachcam-examples.zip"
        count = await asyncio.get_running_loop().run_in_executor(None, export_store, store, path)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip", "Content-Length": str(path.stat().st_size),
            "Content-Disposition": 'attachment; filename="teachcam-examples.zip"', "X-Examples": str(count)})
        await response.prepare(request)
        with path.open("rb") as archive:
            while chunk := archive.read(1 << 16):
                await response.write(chunk)
        await response.write_eof()
    return response

async def upload(request, link: DaemonLink, max_upload_mb: int) -> web.Response:
    """Images (into the class named by the ``label`` field) and zips (one folder per class): each image
    through the daemon (``enroll_image``; the same picture twice in a class is skipped), one upload one action
    for undo. The parts are spooled to disk and a zip is read one entry at a time: however large the upload,
    the process holds one picture (at most ARCHIVE_MAX_ENTRY) at a time."""
    limit = max_upload_mb * 1024 * 1024
    if request.content_length and request.content_length > limit:
        return error(413, f"the upload is {request.content_length / 1e6:.0f} MB; at most {max_upload_mb} MB")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError):
        raise TeachcamError("send the files as multipart/form-data") from None
    label, files, total = None, [], 0
    try:
        try:
            async for part in reader:
                if part.name == "label" and not part.filename:
                    label = (await asyncio.wait_for(part.read_chunk(1024), BODY_TIMEOUT)).decode(
                        "utf-8", "replace").strip()[:256] or None
                    continue
                spool = tempfile.TemporaryFile(prefix="teachcam-upload-")
                files.append((part.filename or "upload", spool))
                while chunk := await asyncio.wait_for(part.read_chunk(1 << 16), BODY_TIMEOUT):
                    total += len(chunk)
                    if total > limit:
                        return error(413, f"the upload is larger than {max_upload_mb} MB")
                    spool.write(chunk)
        except TimeoutError:
            return error(408, f"the upload stalled (nothing for {BODY_TIMEOUT:.0f} s)")
        if not files:
            raise TeachcamError("no files in the upload")
        result = await _enroll_files(link, files, label)
        return web.json_response(result, status=200 if result["enrolled"] or not result["errors"] else 400)
    finally:
        for _, spool in files:
            spool.close()

async def _enroll_files(link: DaemonLink, files, label: str | None) -> dict:
    loop = asyncio.get_running_loop()
    group = f"upload-{time.time():.3f}-{id(files):x}"  # one upload, one action for undo
    enrolled, skipped, errors = 0, 0, []
    for name, spool in files:
        spool.seek(0)
        head = spool.read(4)
        spool.seek(0)
        if head == b"PK\x03\x04" or name.lower().endswith(".zip"):
            entries = iter_archive(spool)
        elif is_image_name(name) or head[:3] in (b"\xff\xd8\xff", b"\x89PN"):
            if not label:
                errors.append(f"{name}: choose the class to add single images to (its card's Upload)")
                continue
            entries = iter([(label, spool.read())])
        else:
            errors.append(f"{name}: not an image (JPEG, PNG, …) or a zip")
            continue
        seen = 0
        while True:
            try:
                item = await loop.run_in_executor(None, next, entries, None)
            except TeachcamError as exc:
                errors.append(f"{name}: {exc}")
                break
            if item is None:
                break
            seen += 1
            item_label, image = item
            try:
                result = await link.request("enroll_image", label=item_label,
                                                 image=base64.b64encode(image).decode(), name=name[:200],
                                                 unique=True, group=group)
            except ControlError as exc:
                if not link.up.is_set():
                    raise
                errors.append(f"{name}: {exc}")
                continue
            finally:
                del image
            if result.get("skipped"):
                skipped += 1
            else:
                enrolled += 1
        if not seen and not any(e.startswith(f"{name}:") for e in errors):
            errors.append(f"{name}: no images in folders (the layout is one folder per class)")
    return {"enrolled": enrolled, "skipped": skipped, "errors": errors[:50], "more_errors": max(0, len(errors) - 50)}
