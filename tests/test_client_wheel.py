"""`deepdock`, the client, as a distribution of its own (client/): a pure-Python wheel that
needs click, rich and httpx and nothing of the daemon, so that a laptop installs it with no
compiler; and the daemon's package depends on it at the same version."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import deepdock
import deepdockd

REPOSITORY = Path(__file__).resolve().parent.parent
CLIENT = REPOSITORY / "client"

# The bounds setup.cfg gave these when the client shipped inside the daemon.
CLIENT_REQUIRES = {"click": ">=8.1,<9", "rich": ">=13", "httpx": ">=0.27,<1"}

# The daemon's own dependencies, which a laptop must not get with the client.
DAEMON_ONLY = {"aiodocker", "nvidia-ml-py", "cryptography", "prometheus-client", "aiohttp"}


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel, built from a copy of client/ (setuptools builds in its source tree,
    and the checkout is shared) with the test environment's setuptools, offline."""
    work = tmp_path_factory.mktemp("client-wheel")
    source = work / "client"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    return wheel


def test_the_client_wheel_is_pure_python(client_wheel: Path) -> None:
    assert client_wheel.name == f"deepdock-{deepdock.__version__}-py3-none-any.whl"


def test_the_client_wheel_requires_click_rich_and_httpx_only(client_wheel: Path) -> None:
    with zipfile.ZipFile(client_wheel) as wheel:
        metadata = Parser().parsestr(
            wheel.read(f"deepdock-{deepdock.__version__}.dist-info/METADATA").decode()
        )
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    assert {r.name: r.specifier for r in requires} == {
        name: SpecifierSet(bounds) for name, bounds in CLIENT_REQUIRES.items()
    }
    assert len(requires) == len(CLIENT_REQUIRES)
    assert all(r.marker is None and not r.extras for r in requires)
    assert metadata["Requires-Python"] == ">=3.11"


def test_the_client_wheel_holds_the_client_and_nothing_of_the_daemon(client_wheel: Path) -> None:
    with zipfile.ZipFile(client_wheel) as wheel:
        names = wheel.namelist()
        entry_points = wheel.read(
            f"deepdock-{deepdock.__version__}.dist-info/entry_points.txt"
        ).decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"deepdock", f"deepdock-{deepdock.__version__}.dist-info"}
    modules = {Path(name).name for name in names if name.startswith("deepdock/")}
    expected = {path.name for path in (CLIENT / "deepdock").glob("*.py")}
    assert modules >= expected | {"py.typed"}
    assert "deepdock = deepdock.main:main" in entry_points


def test_the_client_and_the_daemon_share_one_version() -> None:
    """The daemon pins its client exactly: a server install gets the client it was tested with."""
    assert deepdock.__version__ == deepdockd.__version__
    setup = configparser.ConfigParser()
    setup.read(REPOSITORY / "setup.cfg")
    requires = [
        Requirement(line)
        for line in setup["options"]["install_requires"].splitlines()
        if line.strip()
    ]
    pins = [str(r.specifier) for r in requires if r.name == "deepdock"]
    assert pins == [f"=={deepdock.__version__}"]
    # The client's dependencies come through it, not as the daemon's own.
    assert not {r.name for r in requires} & set(CLIENT_REQUIRES)
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "deepdock =" not in scripts


@pytest.mark.process
@pytest.mark.timeout(300)
def test_a_clean_environment_with_only_the_client_wheel_runs_deepdock(
    client_wheel: Path, tmp_path: Path
) -> None:
    """A laptop's install: a fresh virtual environment, the wheel, its three dependencies from
    the package index; both commands a person types first work, and the daemon's packages
    are not there."""
    venv = tmp_path / "laptop"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # Not this environment's: the laptop's own pip, and no PYTHONPATH leaking the checkout in.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["HOME"] = str(tmp_path / "home")
    subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", str(client_wheel)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip

    def deepdock_run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
        )

    version = deepdock_run(str(bin_dir / "deepdock"), "--version")
    assert (version.returncode, version.stdout) == (0, f"deepdock {deepdock.__version__}\n")
    shown = deepdock_run(str(bin_dir / "deepdock"), "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Commands:" in shown.stdout
    for command in ("login", "create", "ssh", "gpus"):
        assert f"\n  {command} " in shown.stdout, command
    as_module = deepdock_run(str(bin_dir / "python"), "-m", "deepdock", "--version")
    assert as_module.stdout == f"deepdock {deepdock.__version__}\n", as_module.stderr

    listed = subprocess.run(
        [str(bin_dir / "pip"), "list", "--format=json"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    installed = {package["name"].lower() for package in json.loads(listed)}
    assert {"deepdock", "click", "rich", "httpx"} <= installed
    assert installed & (DAEMON_ONLY | {"deepdockd"}) == set()
