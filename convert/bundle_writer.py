"""The one way to write a bundle: :class:`BundleWriter` (conversion and every trained head use it).

Everything goes into a temporary sibling of the destination; the manifest is written once, when
everything is in place, then the folder is renamed over the destination. A reader never sees a
half-written bundle: either the old folder (or none) or the new one.

Example usage::

    with BundleWriter(out, force=False) as writer:
        path = writer.export(keras_model, "embedder_int8.tflite", int8=True, representative=samples)
        writer.add_model(path, role="embedder", precision="int8")
        writer.add_labels("imagenet", labels, kind="imagenet_classifier", output="logits")
        writer.manifest.update(preprocessing=..., embedding=...)
        draft = writer.draft()  # a Bundle over the staged files, for measuring before the commit
    bundle = load_bundle(out)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from teachcam.edge import __version__
from teachcam.edge.errors import BundleError
from teachcam.edge.model.adapters import input_specs, output_specs
from teachcam.edge.model.bundle import FORMAT_VERSION, MANIFEST, Bundle, file_sha256
from teachcam.edge.model.runtime import make_interpreter


def describe_model(path: Path, *, role: str, precision: str, head: str | None = None, **extra) -> dict:
    """A manifest ``models`` entry for one TFLite file, with tensors read from the file itself."""
    interpreter = make_interpreter(path, num_threads=1)
    entry = {
        "file": path.name,
        "role": role,
        "precision": precision,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "inputs": [s.as_manifest() for s in input_specs(interpreter)],
        "outputs": [s.as_manifest() for s in output_specs(interpreter)],
    }
    if head is not None:
        entry["head"] = head
    entry.update(extra)
    return entry


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        what = "a bundle" if (out / MANIFEST).exists() else "something"
        raise BundleError(f"{out} already holds {what}; pass --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not a folder; choose another --out")


@contextmanager
def staging_folder(out: Path, force: bool):
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename."""
    out = Path(out)
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)
    try:
        yield staging
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(trash)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Complete ``manifest`` (versions, time, sha256 of every file) and write it to ``folder``."""
    files = {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    full = {
        "format_version": FORMAT_VERSION,
        "generator": f"teachcam {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return full


class BundleWriter:
    """Stage models, labels and a report for a bundle at ``out``; on a clean exit write the manifest
    (once) and move the folder into place. On an exception nothing at ``out`` changes.

    Raises (on creation):
        BundleError: ``out`` exists and ``force`` is not set, or ``out`` is a file.
    """

    def __init__(self, out: str | Path, *, force: bool = False):
        self.out, self.force = Path(out), force
        check_destination(self.out, force)
        self.manifest: dict = {"models": [], "heads": {}}
        self._stage = None
        self.folder: Path | None = None

    def __enter__(self) -> BundleWriter:
        self._stage = staging_folder(self.out, self.force)
        self.folder = self._stage.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            try:
                write_manifest(self.folder, self.manifest)
            except BaseException as error:
                self._stage.__exit__(type(error), error, error.__traceback__)
                raise
        return bool(self._stage.__exit__(exc_type, exc, traceback))

    def export(self, model, name: str, *, int8: bool, representative=None, **recipe) -> Path:
        """Convert a Keras model to ``name`` in the bundle (float32, or full-integer int8 calibrated on
        ``representative``: a callable yielding samples; ``recipe``: to_tflite's int8 options)."""
        from teachcam.convert.export import write_tflite

        return write_tflite(model, self.folder / name, int8=int8, representative=representative, **recipe)

    def add_model(self, path: Path, *, role: str, precision: str, head: str | None = None, **extra) -> dict:
        """List a model file of the bundle in the manifest (tensors read from the file)."""
        entry = describe_model(Path(path), role=role, precision=precision, head=head, **extra)
        self.manifest["models"].append(entry)
        return entry

    def add_labels(self, head: str, labels: list[str], **section) -> None:
        """``labels/<head>.txt`` and the manifest's ``heads[head]`` section (``num_classes`` and ``section``)."""
        (self.folder / "labels").mkdir(exist_ok=True)
        (self.folder / "labels" / f"{head}.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        self.manifest["heads"][head] = {"labels": f"labels/{head}.txt", "num_classes": len(labels), **section}

    def compile_edgetpu(self, int8_path: Path, progress, *, role: str, head: str | None = None) -> None:
        """Compile one int8 model for the Edge TPU and list it (marked ``edgetpu``), or say why it cannot be."""
        from teachcam.convert.edgetpu import compile_for_edgetpu

        result = compile_for_edgetpu(int8_path, self.folder)
        progress.note(result.message)
        if result.compiled is None:
            return
        # The compiled model holds an Edge TPU custom op that a CPU interpreter cannot allocate:
        # its tensors are the int8 model's, so the entry is derived from that one.
        entry = describe_model(int8_path, role=role, precision="int8", head=head)
        entry.update(file=result.compiled.name, sha256=file_sha256(result.compiled),
                     bytes=result.compiled.stat().st_size, edgetpu=True, compiled_from=int8_path.name,
                     ops_on_tpu=result.ops_on_tpu, ops_on_cpu=result.ops_on_cpu, cpu_ops=result.cpu_ops,
                     off_chip_parameters=result.off_chip)
        self.manifest["models"].append(entry)

    def draft(self) -> Bundle:
        """The bundle as staged so far (no manifest on disk yet, no sha256 check): for measuring it."""
        return Bundle(self.folder, {**self.manifest, "files": {}})
