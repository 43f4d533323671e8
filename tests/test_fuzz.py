"""A property-based run of schemathesis against a live daemon on the real rig, with auth on
(as an admin): generated requests for every operation of openapi.yaml, bounded in time. No
answer may be an unexpected server error or break the spec."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import NVML_SIM_LIBRARY, RunningDaemon
from rig import Rig

ROOT = Path(__file__).parents[1]
FUZZ_SECONDS = 60


def test_generated_requests_get_answers_within_the_spec(
    rig: Rig, rig_daemon: Callable[..., RunningDaemon], namespace: str
) -> None:
    env = {
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(ROOT / "tests" / "nvml-sim" / "demo-4gpu.json"),
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": "23000-23999",
    }
    daemon = rig_daemon(env=env, auth=True)
    base = daemon.base
    try:
        admin_token = (daemon.state_dir / "admin.token").read_text().strip()
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", str(ROOT / "openapi.yaml"),
                "--url", base, "--header", f"Authorization: Bearer {admin_token}", "--workers", "1", "--seed", "20261127", "--max-examples", "25",
                "--max-time", str(FUZZ_SECONDS), "--request-timeout", "60",
                "--phases", "examples,coverage,fuzzing",
                "--checks", "response_schema_conformance,status_code_conformance,content_type_conformance",
                "--exclude-checks", "not_a_server_error",
                "--no-color",
            ],
            env={"SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=FUZZ_SECONDS + 240, check=False,
        )  # fmt: skip
    finally:
        status, log = daemon.stop()
        leftovers = rig.docker(
            "ps", "--all", "--quiet", "--filter", f"label=deepdockd.namespace={namespace}"
        )
        if leftovers.split():
            rig.docker("rm", "--force", *leftovers.split())
        rig.build_images()  # generated DELETE /images may have hit a test image

    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated, run.stdout[-3000:]
    assert int(generated.group(1)) >= 300
    assert run.returncode == 0, run.stdout[-6000:]
    assert status == 0
    assert "Traceback" not in log, log[-3000:]
