"""Image references read as Docker reads them."""

from __future__ import annotations

import pytest

from deepdockd.references import looks_like_image_id, parse_reference


@pytest.mark.parametrize(
    ("text", "domain", "path", "pulled_as"),
    [
        ("busybox", None, "busybox", "busybox:latest"),
        ("nvidia/cuda:12.2.0-runtime-ubuntu22.04", None, "nvidia/cuda", "nvidia/cuda:12.2.0-runtime-ubuntu22.04"),
        ("localhost/team/img", "localhost", "team/img", "localhost/team/img:latest"),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "127.0.0.1:5000/a/b:v1"),
        ("registry.lab/x__y/z-w.v:1.0_rc", "registry.lab", "x__y/z-w.v", "registry.lab/x__y/z-w.v:1.0_rc"),
        ("ubuntu@sha256:" + "a" * 64, None, "ubuntu", "ubuntu@sha256:" + "a" * 64),
        ("ubuntu:22.04@sha256:" + "b" * 64, None, "ubuntu", "ubuntu:22.04@sha256:" + "b" * 64),
    ],
)  # fmt: skip
def test_valid_references(text: str, domain: str | None, path: str, pulled_as: str) -> None:
    reference = parse_reference(text)
    assert (reference.domain, reference.path) == (domain, path)
    assert str(reference) == pulled_as


@pytest.mark.parametrize(
    "text",
    ["", "UPPER", "a//b", "-a", "a:", "a:" + "t" * 129, "a@md5:12", "a" * 256, "ex ample", "a/B"],
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_reference(text)


def test_image_ids() -> None:
    assert looks_like_image_id("44fdb25dd06b")
    assert looks_like_image_id("sha256:" + "0" * 64)
    assert not looks_like_image_id("44fdb")
    assert not looks_like_image_id("busybox")
