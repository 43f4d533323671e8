"""A container sees the GPU it asked for, and only that one: deepdockd as a process on the
host's own Docker with the NVIDIA container toolkit and a real driver.

Run only where both are (a GPU host with Docker and the toolkit):

    DEEPDOCKD_GPU_TEST_IMAGE=debian:bookworm-slim .venv/bin/pytest -m gpu tests/test_gpu_container.py

The image needs no CUDA: the toolkit mounts `nvidia-smi` and the driver's libraries into
it. On a machine without Docker or the toolkit the test fails, naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from deepdockd.gpu import nvml

from tests.support.daemon import Daemon, http_json

pytestmark = pytest.mark.gpu

IMAGE = os.environ.get("DEEPDOCKD_GPU_TEST_IMAGE", "debian:bookworm-slim")


def test_a_container_sees_the_gpu_it_asked_for_and_no_other(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    assert docker, "this test needs Docker on the GPU host (docker.io or Docker CE)"
    assert shutil.which("nvidia-container-runtime-hook") or shutil.which(
        "nvidia-container-toolkit"
    ), "this test needs the NVIDIA container toolkit, which lets Docker hand out GPUs"
    inventory = nvml.start()
    try:
        gpus = [(g.index, g.uuid) for g in inventory.gpus]
    finally:
        nvml.stop()
    # The second GPU where there are two or more: not the one a container gets by default.
    index, gpu_uuid = gpus[1] if len(gpus) > 1 else gpus[0]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    namespace = f"gputest-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    daemon = Daemon(
        "--port", str(port), "--state-dir", str(state),
        env={"DEEPDOCKD_NAMESPACE": namespace, "DEEPDOCKD_EGRESS_POLICY": "false"},
        log=tmp_path / "deepdockd.log", auth=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    name = f"{namespace}-box"
    try:
        daemon.wait_until_serving(f"{base}/healthz")
        token = (state / "admin.token").read_text().strip()
        status, answer = http_json(
            "POST", f"{base}/images", token=token, json_body={"repo_tag": IMAGE}, timeout_s=600
        )
        assert status == 200, answer
        status, answer = http_json(
            "POST", f"{base}/containers/create", token=token, timeout_s=600,
            json_body={"name": name, "image": IMAGE, "user_name": "u1", "password": "pw-gpu-1",
                       "gpu_ids": [index]},
        )  # fmt: skip
        assert status == 201, answer

        listed = subprocess.run(
            [docker, "exec", name, "nvidia-smi", "-L"], capture_output=True, text=True, check=False
        )
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"UUID: {gpu_uuid})" in lines[0]
        status, described = http_json("GET", f"{base}/containers/{name}", token=token)
        assert (status, described["gpus"], described["gpu_uuids"]) == (
            200, [str(index)], [gpu_uuid]
        )  # fmt: skip
    finally:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False)
        networks = subprocess.run(
            [docker, "network", "ls", "-q", "--filter", f"label=deepdockd.namespace={namespace}"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        if networks:
            subprocess.run([docker, "network", "rm", *networks], capture_output=True, check=False)
        code, log = daemon.stop()
        print(json.dumps({"exit": code}), log[-2000:])
