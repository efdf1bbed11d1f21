"""Read a model bundle (contract 1 of docs/contracts.md) and check it before anything runs.

A bundle is a folder with ``manifest.json`` and the files it lists. The manifest is the
single source of truth for what the device must reproduce: preprocessing, every model
with its role, precision, tensors and quantization, labels per head, and the sha256 of
every file. A bundle whose files do not match, or whose format version is unknown, is
refused with a message that says which file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from teachcam.edge.errors import BundleError, BundleIntegrityError, BundleVersionError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One model file of the bundle, as the manifest describes it."""

    file: str
    role: str
    precision: str
    sha256: str
    edgetpu: bool
    head: str | None
    inputs: list
    outputs: list
    raw: dict

    @classmethod
    def from_manifest(cls, entry: dict) -> ModelEntry:
        try:
            return cls(
                file=str(entry["file"]),
                role=str(entry["role"]),
                precision=str(entry["precision"]),
                sha256=str(entry["sha256"]),
                edgetpu=bool(entry.get("edgetpu", False)),
                head=entry.get("head"),
                inputs=list(entry.get("inputs", [])),
                outputs=list(entry.get("outputs", [])),
                raw=entry,
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"a model entry in the bundle manifest is incomplete (missing {exc})") from None

    @property
    def variant(self) -> str:
        return "edgetpu" if self.edgetpu else self.precision


@dataclass(frozen=True)
class Bundle:
    """A checked bundle folder."""

    path: Path
    manifest: dict

    @cached_property
    def models(self) -> list[ModelEntry]:
        return [ModelEntry.from_manifest(m) for m in self.manifest.get("models", [])]

    @property
    def heads(self) -> dict:
        return dict(self.manifest.get("heads", {}))

    @property
    def standalone(self) -> bool:
        """A classifier on pixels with no embedder (the small CNN): no KNN, no ImageNet head."""
        return self.find("embedder", edgetpu=None) is None and self.find("classifier", edgetpu=None) is not None

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    @property
    def embedding_size(self) -> int:
        return int(self.manifest["embedding"]["size"])

    def file(self, name: str) -> Path:
        return self.path / name

    def find(self, role: str, *, precision: str | None = None, head: str | None = None,
             edgetpu: bool | None = False) -> ModelEntry | None:
        """The first model with that role (and precision/head/edgetpu), or None."""
        for model in self.models:
            if model.role != role or (head is not None and model.head != head):
                continue
            if precision is not None and model.precision != precision:
                continue
            if edgetpu is not None and model.edgetpu != edgetpu:
                continue
            return model
        return None

    def labels(self, head: str) -> list[str]:
        info = self.heads.get(head)
        if info is None:
            known = ", ".join(self.heads) or "none"
            raise BundleError(f"the bundle has no head {head!r} (heads: {known})")
        try:
            lines = self.file(info["labels"]).read_text(encoding="utf-8").splitlines()
        except (OSError, KeyError) as exc:
            raise BundleError(f"cannot read the labels of head {head!r}: {exc}") from None
        return [line.strip() for line in lines if line.strip()]

    def verify(self) -> list[tuple[str, bool]]:
        """Check every listed file against its sha256. Returns ``[(file, ok), ...]``."""
        results = []
        for name, expected in sorted(self.manifest.get("files", {}).items()):
            target = self.file(name)
            results.append((name, target.is_file() and file_sha256(target) == expected))
        return results


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not path.exists():
        raise BundleError(f"bundle not found: {path} (build one with `teachcam convert --out {path}`)")
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a teachcam bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is damaged ({exc}); rebuild or re-copy the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a bundle manifest")
    return manifest


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Open a bundle folder, check its format version and (by default) every file's sha256.

    Raises:
        BundleError: missing folder or manifest, damaged manifest.
        BundleVersionError: a format version this teachcam does not know.
        BundleIntegrityError: a file is missing or does not match its sha256.
    """
    path = Path(path)
    manifest = read_manifest(path)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleVersionError(
            f"{path} has bundle format version {version!r}; this teachcam reads version "
            f"{FORMAT_VERSION}: upgrade teachcam or rebuild the bundle with this version"
        )
    for key in ("preprocessing", "models", "files"):
        if key not in manifest:
            raise BundleError(f"{path / MANIFEST} has no {key!r} section; rebuild the bundle")
    bundle = Bundle(path, manifest)
    try:
        roles = {m.role for m in bundle.models}
    except AttributeError:
        raise BundleError(f"{path / MANIFEST} has a malformed 'models' section; rebuild the bundle") from None
    if "embedder" not in roles and "classifier" not in roles:
        raise BundleError(f"{path / MANIFEST} lists neither an embedder nor a classifier; rebuild the bundle")
    if "embedder" in roles and "embedding" not in manifest:
        raise BundleError(f"{path / MANIFEST} has no 'embedding' section; rebuild the bundle")
    if verify:
        bad = [name for name, ok in bundle.verify() if not ok]
        if bad:
            raise BundleIntegrityError(
                f"{path}: {', '.join(bad)} does not match the sha256 in the manifest (damaged or "
                "changed after the bundle was built); re-copy or rebuild the bundle"
            )
    unlisted = [m.file for m in bundle.models if m.file not in manifest["files"]]
    if unlisted:
        raise BundleIntegrityError(f"{path}: {', '.join(unlisted)} has no sha256 in the manifest; rebuild the bundle")
    return bundle
