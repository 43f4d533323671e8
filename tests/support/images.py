"""Images made for one test: a layer no other image shares, and an image derived from a test
image by a script (an SSH server that answers late, or never; no shell at all)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

from tests.support.rig import REGISTRY_ADDR, Rig


def random_layer_tar(size_mb: int) -> bytes:
    """A tar of one file of random bytes: a layer no other image shares."""
    payload = os.urandom(size_mb * 1024 * 1024)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def derived_image(rig: Rig, base: str, script: str, command: str) -> str:
    """An image made from ``base`` by running ``script`` in it (``docker commit``)."""
    image = f"deepdockd-test/derived:{uuid.uuid4().hex[:8]}"
    builder = f"build-{uuid.uuid4().hex[:8]}"
    rig.docker("run", "--name", builder, "--entrypoint", "/bin/sh", base, "-c", script)
    rig.docker("commit", "--change", f'CMD ["{command}"]', builder, image)
    rig.docker("rm", builder)
    return image


def registry_layer_files(rig: Rig, reference: str) -> list[Path]:
    """Where the rig's open registry (storage under ``ROOT/registry``, see ``Rig``) keeps the
    layers of ``reference``: distribution's filesystem layout, tag -> manifest -> blobs."""
    v2 = rig.root / "registry" / "docker" / "registry" / "v2"
    repository, tag = reference.removeprefix(f"{REGISTRY_ADDR}/").rsplit(":", 1)
    link = v2 / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"

    def blob(digest: str) -> Path:
        hex_digest = digest.removeprefix("sha256:")
        return v2 / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data"

    manifest = json.loads(blob(link.read_text()).read_text())
    return [blob(layer["digest"]) for layer in manifest["layers"]]
