"""The `deepdock` client, run as a person runs it (its console script, in a home of its own)
against deepdockd processes on the rig: login, containers, SSH with pinned host keys (also
after a port was reused), pull progress under a real pseudo-terminal, --all across two
servers with one stopped, errors and exit statuses."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from deepdock import ssh as client_ssh
from deepdock.settings import Server as ClientServer
from deepdock.settings import Settings, SettingsError
from deepdock.units import hours, mebibytes
from deepdockd.api import schemas
from deepdockd.tokens import TokenStore

from tests.support.checking_relay import checking_relay
from tests.support.daemon import Daemon, RunningDaemon, http_json
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.rig import DEBIAN_SSH_IMAGE, RIG_REGISTRIES, Rig

DEEPDOCK = Path(sys.executable).parent / "deepdock"
DEMO_GPUS = Path(__file__).parent / "nvml-sim" / "demo-4gpu.json"


@dataclass
class Terminal:
    """A person's shell: a home of their own (config, keys, known hosts) and deepdock."""

    home: Path
    env: dict[str, str]

    def run(
        self, *args: str, stdin: str = "", **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DEEPDOCK), *args], input=stdin, capture_output=True, text=True,
            env={**self.env, **extra_env}, timeout=180, check=False,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout


@pytest.fixture
def terminal(tmp_path: Path) -> Terminal:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
        check=True,
    )
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "USER": "alice", "COLUMNS": "200"}
    return Terminal(home, env)


@dataclass
class Server:
    daemon: RunningDaemon
    token: str  # alice's
    url: str  # the checking relay's, in front of the daemon: what the client is given


@pytest.fixture
def server(
    rig_daemon: Callable[..., RunningDaemon], namespace: str, ssh_ports: tuple[int, int],
    cleanup: None,
) -> Iterator[Server]:  # fmt: skip
    """A deepdockd with auth on, the simulated demo GPUs and ONE SSH port: every container
    gets the port of the one before it. The client reaches it through a relay that holds
    every answer to the strict spec (tests/support/checking_relay.py): one outside it fails
    the test when it ends."""
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[0]}",
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(DEMO_GPUS),
    }
    daemon = rig_daemon(env=env, auth=True)
    with checking_relay(daemon.base) as relay:
        yield Server(daemon, TokenStore(daemon.state_dir).add("alice", "user"), relay.url)


def login(terminal: Terminal, server: Server, name: str = "gpu1") -> None:
    said = terminal.ok("login", server.url, "--name", name, stdin=f"{server.token}\n")
    assert said.startswith(f"logged in to {name} ({server.url}) as alice; saved in ")


# --- login, containers, ssh ---


def test_login_keeps_the_token_for_the_owner_only(terminal: Terminal, server: Server) -> None:
    refused = terminal.run("login", server.url, "--name", "gpu1", stdin="ddk_wrong\n")
    assert refused.returncode == 1
    assert (
        refused.stderr
        == "deepdock: not saved: the token is not valid: it was mistyped or revoked\n"
    )

    login(terminal, server)

    config = terminal.home / ".config" / "deepdock" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert server.token in config.read_text()
    assert json.loads(terminal.ok("quota", "--json"))["user"] == "alice"
    # The environment overrides the file.
    other = terminal.run("quota", DEEPDOCK_URL=server.url, DEEPDOCK_TOKEN="ddk_bad")
    assert (other.returncode, other.stderr) == (
        1, "deepdock: the token is not valid: it was mistyped or revoked\n"
    )  # fmt: skip


def test_create_then_ssh_with_no_prompt_also_after_the_port_was_reused(
    terminal: Terminal, server: Server, rig: Rig
) -> None:
    login(terminal, server)
    first, second = f"one-{uuid.uuid4().hex[:6]}", f"two-{uuid.uuid4().hex[:6]}"

    said = terminal.ok("create", first, "--image", DEBIAN_SSH_IMAGE, "--user", "alice")
    assert said.startswith(f"created {first}: log in with `deepdock ssh {first}` (port ")
    assert said.endswith("\nSSH server: the image's sshd, OpenSSH_9.2\n")
    logged_in = terminal.run("ssh", first, "--", "id", "-un")
    assert (logged_in.returncode, logged_in.stdout, logged_in.stderr) == (0, "alice\n", "")

    # Gone, and its port given to the next container, whose host key differs.
    terminal.ok("rm", first, "--force")
    terminal.ok("create", second, "--image", DEBIAN_SSH_IMAGE, "--user", "alice")
    listed = json.loads(terminal.ok("ls", "--json"))
    [again] = listed["containers"]
    status, answer = http_json("GET", f"{server.url}/containers", token=server.token)
    assert (status, listed) == (200, answer)
    assert again["ssh-port"] == int(said.split("(port ")[1].split(")")[0])

    logged_in = terminal.run("ssh", second, "--", "id", "-un")
    assert (logged_in.returncode, logged_in.stdout, logged_in.stderr) == (0, "alice\n", "")
    known = (terminal.home / ".config" / "deepdock" / "known_hosts").read_text()
    key = again["ssh_host_keys"][0]["public_key"]
    assert f"deepdock/gpu1/{second} {key}\n" in known
    config = terminal.ok("ssh-config")
    assert f"Host {second}\n" in config
    assert f"    HostKeyAlias deepdock/gpu1/{second}\n" in config
    assert f"    Port {again['ssh-port']}\n" in config
    # What ssh-config prints is what ssh takes (scp, rsync and VS Code read the same file).
    (terminal.home / ".ssh" / "config").write_text(config)
    plain = subprocess.run(
        ["ssh", "-F", str(terminal.home / ".ssh" / "config"), "-o", "BatchMode=yes", second,
         "hostname"], capture_output=True, text=True,
        env=terminal.env, timeout=60, check=False,
    )  # fmt: skip
    assert (plain.returncode, plain.stdout.strip()) == (0, second), plain.stderr


def test_errors_are_one_line_on_stderr_and_exit_1(terminal: Terminal, server: Server) -> None:
    login(terminal, server)

    missing = terminal.run("start", "nosuch")
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1, "", "deepdock: no container 'nosuch'\n"
    )  # fmt: skip
    # A flag the server refuses: its own message.
    bad = terminal.run("create", "box-root", "--image", DEBIAN_SSH_IMAGE, "--user", "root")
    assert bad.returncode == 1
    assert bad.stderr.startswith("deepdock: user_name: 'root' is a system account")
    usage = terminal.run("create", "box-big", "--image", DEBIAN_SSH_IMAGE, "--memory", "lots")
    assert usage.returncode == 2
    assert "'lots' is not a size" in usage.stderr
    closed = socket_free_port()
    down = terminal.run("ls", DEEPDOCK_URL=f"http://127.0.0.1:{closed}")
    assert down.returncode == 1
    assert down.stderr.splitlines() == [
        f"deepdock: cannot reach deepdockd at http://127.0.0.1:{closed}: connection refused "
        "(is deepdockd running there?)"
    ]
    nothing = Terminal(terminal.home / "nobody", {**terminal.env, "HOME": "/nonexistent"})
    assert nothing.run("ls").returncode == 2


def socket_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_ls_watch_redraws_the_list_when_the_server_tells_of_a_change(
    terminal: Terminal, server: Server
) -> None:
    """`deepdock ls --watch` on a real pseudo-terminal: a container made (by another shell)
    after it started shows in its table, then its removal takes it out; Ctrl-C ends it."""
    login(terminal, server)
    name = f"watched-{uuid.uuid4().hex[:6]}"
    main, child = pty.openpty()
    watcher = subprocess.Popen(
        [str(DEEPDOCK), "ls", "--watch"], stdin=child, stdout=child, stderr=child,
        env={**terminal.env, "TERM": "xterm"}, start_new_session=True,
    )  # fmt: skip
    os.close(child)
    shown = bytearray()

    def until(condition: Callable[[str], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition(shown.decode(errors="replace")):
            assert time.monotonic() < deadline, f"`ls --watch` never showed {what}: {shown!r}"
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                shown.extend(os.read(main, 65536))

    try:
        until(lambda text: "NAME" in text, "its table")
        drawn_before = len(shown)
        terminal.ok("create", name, "--image", DEBIAN_SSH_IMAGE, "--user", "alice")
        until(lambda text: name in text[drawn_before:], "the new container")
        until(lambda text: "running" in text[text.rindex(name) :], "it running")
        drawn_before = len(shown)
        terminal.ok("rm", name, "--force")

        # Redrawn without it: a table drawn after the removal that no longer names it.
        def without_it(text: str) -> bool:
            return "NAME" in text[drawn_before:] and name not in text[text.rindex("NAME") :]

        until(without_it, "the list without it")
        # Nothing drawn after that (a table begun before the removal, say) brings it back.
        drained_until = time.monotonic() + 1.5
        until(lambda _: time.monotonic() > drained_until, "a quiet moment")
        assert without_it(shown.decode(errors="replace")), shown
        os.killpg(watcher.pid, signal.SIGINT)
        assert watcher.wait(timeout=30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        os.close(main)


# --- images ---


def test_pull_draws_progress_bars_on_a_terminal_and_lines_elsewhere(
    terminal: Terminal, server: Server, registry_image: Callable[..., str], rig: Rig
) -> None:
    login(terminal, server)
    reference = registry_image(size_mb=24)

    # script(1) gives the client a real pseudo-terminal, as a person's shell would.
    on_tty = subprocess.run(
        ["script", "-qefc", f"{DEEPDOCK} pull {reference}", "/dev/null"],
        capture_output=True, text=True, env=terminal.env, timeout=180, check=False,
    )  # fmt: skip
    assert on_tty.returncode == 0, on_tty.stdout
    final = f"Image '{reference}' pulled successfully."
    assert final in on_tty.stdout
    bars = on_tty.stdout.index("━")  # rich's bar, drawn with escape codes before the end
    assert "\x1b[" in on_tty.stdout
    assert bars < on_tty.stdout.index(final)
    assert re.search(r"\d+\.\d/25\.2 MB", on_tty.stdout), on_tty.stdout  # 24 MiB, in MB
    assert re.search(r"\d+\.\d MB/s", on_tty.stdout), on_tty.stdout  # and its speed

    refused = terminal.run("rmi", reference)  # alice is no admin
    assert (refused.returncode, refused.stderr) == (
        1, "deepdock: only admins may remove images: other users' containers may need them\n"
    )  # fmt: skip
    rig.docker("rmi", "--force", reference)
    plain = terminal.run("pull", reference)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout
    assert "━" not in plain.stdout
    lines = plain.stdout.splitlines()
    assert lines[-1].startswith(final)
    assert any(line.endswith(": Pull complete") for line in lines), lines
    images = json.loads(terminal.ok("images", "--json"))
    assert reference in [tag for image in images["images"] for tag in image["tags"]]


# --- GPUs and --all ---


def test_gpus_show_every_gpu_and_all_spans_servers_one_of_them_stopped(
    terminal: Terminal, server: Server, rig: Rig, tmp_path: Path, namespace: str
) -> None:
    login(terminal, server, "gpu1")
    other_port = socket_free_port()
    other = Daemon(
        "--port", str(other_port), "--docker-host", rig.docker_host,
        "--state-dir", str(tmp_path / "state-other"), "--namespace", f"{namespace}-b",
        env={"DEEPDOCKD_ALLOWED_REGISTRIES": ",".join(RIG_REGISTRIES)},
        log=tmp_path / "other.log", auth=True,
    )  # fmt: skip
    try:
        other.wait_until_serving(f"http://127.0.0.1:{other_port}/healthz")
        other_token = TokenStore(tmp_path / "state-other").add("alice", "user")
        said = terminal.ok("login", f"http://127.0.0.1:{other_port}", "--name", "gpu2",
                           stdin=f"{other_token}\n")  # fmt: skip
        assert "logged in to gpu2" in said
    finally:
        other.stop()  # gpu2 is down from here on
    name = f"box-{uuid.uuid4().hex[:6]}"
    terminal.ok("--server", "gpu1", "create", name, "--image", DEBIAN_SSH_IMAGE, "--user", "alice",
                "--gpus", "1:0")  # fmt: skip

    table = terminal.ok("--server", "gpu1", "gpus")
    demo = json.loads(DEMO_GPUS.read_text())["gpus"]
    for gpu in demo:
        assert gpu["name"] in table
    # GPU 1 of the demo is in MIG mode: a row for each slice, the one asked for held by it.
    rows = [row.split() for row in table.splitlines()]
    assert [row[:3] for row in rows if row and row[0] in ("1:0", "1:1", "1:2")] == [
        ["1:0", "MIG", "3g.40gb"], ["1:1", "MIG", "2g.20gb"], ["1:2", "MIG", "1g.10gb"],
    ]  # fmt: skip
    assert any(row[0] == "1:0" and name in row and "(alice)" in row for row in rows if row)
    answer = json.loads(terminal.ok("--server", "gpu1", "gpus", "--json"))
    status, direct = http_json("GET", f"{server.url}/gpus", token=server.token)
    assert [g["name"] for g in answer["gpus"]] == [g["name"] for g in demo]
    # The API's answer, untouched (its points counts move between the two reads).
    assert (status, answer["count"], set(answer)) == (200, direct["count"], set(direct))
    assert [g["uuid"] for g in answer["gpus"]] == [g["uuid"] for g in direct["gpus"]]

    everywhere = terminal.run("ls", "--all")
    assert everywhere.returncode == 0, everywhere.stderr
    rows = everywhere.stdout.splitlines()
    assert any(row.startswith("gpu1") and name in row for row in rows), rows
    assert any(row.startswith("gpu2") and "cannot reach deepdockd gpu2" in row for row in rows)
    as_json = json.loads(terminal.ok("ls", "--all", "--json"))
    assert [c["name"] for c in as_json["servers"]["gpu1"]["containers"]] == [name]
    assert as_json["servers"]["gpu2"]["error"].startswith("cannot reach deepdockd gpu2 at")
    both = json.loads(terminal.ok("gpus", "--all", "--json"))["servers"]
    assert both["gpu1"]["count"] == 4
    assert both["gpu2"]["error"].startswith("cannot reach deepdockd gpu2 at")
    gpus_everywhere = terminal.run("gpus", "--all")
    assert gpus_everywhere.returncode == 0, gpus_everywhere.stderr
    assert "cannot reach deepdockd gpu2" in gpus_everywhere.stdout
    assert demo[0]["name"] in gpus_everywhere.stdout


def test_help_explains_each_command_with_an_example() -> None:
    for command in (
        "", "login", "images", "pull", "rmi", "create", "ls", "start", "stop", "restart", "rm",
        "pause", "unpause",
        "logs", "extend", "quota", "volumes", "rmvol", "ssh", "ssh-config", "gpus", "top",
        "token", "token create", "token ls", "token revoke",
    ):  # fmt: skip
        shown = subprocess.run(
            [str(DEEPDOCK), *command.split(), "--help"], capture_output=True, text=True,
            check=True, env={**os.environ, "COLUMNS": "200"},
        ).stdout  # fmt: skip
        assert "Example" in shown, command
    version = subprocess.run([str(DEEPDOCK), "--version"], capture_output=True, text=True)
    assert version.stdout == "deepdock 0.1.0\n"


def test_the_client_imports_nothing_of_the_daemon() -> None:
    modules = "cli, api, settings, render, progress, ssh, units"
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys; from deepdock import {modules}; "
         "print(sorted(m for m in sys.modules if m.startswith('deepdockd')))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert ast.literal_eval(loaded) == []


@pytest.mark.parametrize(
    ("text", "mib"), [("32g", 32768), ("512m", 512), ("1.5G", 1536), ("100", 100), ("1t", 1048576)]
)
def test_sizes(text: str, mib: int) -> None:
    assert mebibytes(text) == mib


@pytest.mark.parametrize(
    ("text", "lease"), [("24h", 24.0), ("90m", 1.5), ("2d", 48.0), ("1w", 168.0), ("8", 8.0)]
)
def test_durations(text: str, lease: float) -> None:
    assert hours(text) == lease


def test_the_ssh_host_is_the_servers_url_host() -> None:
    for url, host in (
        ("http://gpu1.lab:8000", "gpu1.lab"), ("https://10.0.0.5", "10.0.0.5"),
        ("http://[fd00::5]:8000", "fd00::5"), ("http://u@gpu2:80/x", "gpu2"),
    ):  # fmt: skip
        assert ClientServer("s", url, None).host == host


def test_a_private_key_given_as_key_is_refused_before_anything_is_sent(
    terminal: Terminal,
) -> None:
    private = terminal.home / ".ssh" / "id_ed25519"
    slip = terminal.run(
        "create", "box-one", "--image", DEBIAN_SSH_IMAGE, "--key", str(private),
        DEEPDOCK_URL=f"http://127.0.0.1:{socket_free_port()}",
    )  # fmt: skip
    assert (slip.returncode, slip.stdout) == (2, "")
    assert slip.stderr == (
        f"deepdock: --key {private}: not an SSH public key; give the .pub file (as {private}.pub)\n"
    )


def test_deepdock_token_never_goes_to_a_server_named_by_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        {"a": ClientServer("a", "http://a:8000", "ddk_a"), "b": ClientServer("b", "http://b:8000", "ddk_b")},
        "a",
    )  # fmt: skip
    monkeypatch.delenv("DEEPDOCK_URL", raising=False)
    monkeypatch.setenv("DEEPDOCK_TOKEN", "ddk_env")
    assert settings.choose(None).token == "ddk_env"  # the default server's, overridden
    assert settings.choose("b").token == "ddk_b"
    monkeypatch.setenv("DEEPDOCK_URL", "http://c:8000")
    assert (settings.choose(None).url, settings.choose(None).token) == ("http://c:8000", "ddk_env")
    assert settings.choose("a").token == "ddk_a"


def test_on_the_server_with_nothing_configured_the_local_socket_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    monkeypatch.delenv("DEEPDOCK_URL", raising=False)
    monkeypatch.delenv("DEEPDOCK_TOKEN", raising=False)
    monkeypatch.setenv("DEEPDOCK_SOCKET", str(path))
    with pytest.raises(SettingsError, match=f"the daemon's socket {path} is used, but it is not"):
        Settings({}, None).choose(None)

    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        local = Settings({}, None).choose(None)
        assert (local.socket, local.host, local.token) == (str(path), "127.0.0.1", None)
        # A configured server, or DEEPDOCK_URL, is chosen over it.
        configured = Settings({"a": ClientServer("a", "http://a:8000", "ddk_a")}, None)
        assert configured.choose(None).url == "http://a:8000"
        monkeypatch.setenv("DEEPDOCK_URL", "http://c:8000")
        assert Settings({}, None).choose(None).socket is None


# --- a server that lies (issue 29, item 4) ---

INJECTED = "\nHost *\n  ProxyCommand touch {pwned}"


def lying_containers(pwned: Path) -> list[dict[str, object]]:
    """What a hostile server (or anyone in the middle of plain http://) answers: alice's
    running containers, one honest, the others with a Host block and a ProxyCommand in a
    field that ssh-config writes."""
    evil = INJECTED.format(pwned=pwned)
    key = {"type": "ssh-ed25519", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHonest"}
    base = {
        "status": "running", "owner": "alice", "image": ["x:1"], "gpus": [],
        "ssh_user": "alice", "ssh-port": 22001, "ssh_host_keys": [key],
    }  # fmt: skip
    return [
        {**base, "name": "honest"},
        {**base, "name": f"inname{evil}"},
        {**base, "name": "inuser", "ssh_user": f"alice{evil}"},
        {**base, "name": "inport", "ssh-port": f"22002{evil}"},
        {**base, "name": "portrange", "ssh-port": 70000},
        {**base, "name": "portbool", "ssh-port": True},
        {
            **base,
            "name": "inkey",
            "ssh_host_keys": [{"public_key": f"ssh-ed25519 AAAA{evil}"}],
        },
    ]


async def lying_server(aiohttp_server: Any, containers: list[dict[str, object]]) -> str:
    async def quota(request: web.Request) -> web.Response:
        return web.json_response({"user": "alice"})

    async def listed(request: web.Request) -> web.Response:
        return web.json_response({"containers": containers})

    async def one(request: web.Request) -> web.Response:
        wanted = request.match_info["name"]
        found = [c for c in containers if str(c["name"]).startswith(wanted)]
        return web.json_response(found[0] if found else {}, status=200 if found else 404)

    app = web.Application()
    app.router.add_get("/quota", quota)
    app.router.add_get("/containers", listed)
    app.router.add_get("/containers/{name}", one)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


def resolved(config: Path, host: str, env: dict[str, str]) -> str:
    """What the real OpenSSH makes of the config for ``host`` (ssh -G: no connection)."""
    shown = subprocess.run(
        ["ssh", "-F", str(config), "-G", host], capture_output=True, text=True, env=env,
        timeout=30, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


async def test_ssh_config_writes_only_what_the_servers_rules_allow(
    terminal: Terminal, aiohttp_server: Any, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    url = await lying_server(aiohttp_server, lying_containers(pwned))

    done = await asyncio.to_thread(
        terminal.run, "ssh-config", DEEPDOCK_URL=url, DEEPDOCK_TOKEN="ddk_alice"
    )

    assert done.returncode == 0, done.stderr
    config = terminal.home / ".ssh" / "deepdock.conf"
    config.write_text(done.stdout)
    assert "ProxyCommand" not in done.stdout
    # A host key that is not one key is left unpinned (ssh then refuses the host's key).
    hosts = [line for line in done.stdout.splitlines() if line.startswith("Host")]
    assert hosts == ["Host honest", "Host inkey"]
    for host in ("honest", "somehost", "inuser"):
        seen = resolved(config, host, terminal.env)
        assert "proxycommand" not in seen, (host, seen)
    honest = resolved(config, "honest", terminal.env).splitlines()
    assert {"user alice", "port 22001", "hostkeyalias deepdock/env/honest"} <= set(honest)
    # Each one left out is named on stderr, as text (no line break of the server's).
    warned = done.stderr.splitlines()
    assert len(warned) == 5, warned
    assert all(line.startswith("deepdock: env: container ") for line in warned), warned
    assert any("'inuser' left out: its ssh_user" in line for line in warned), warned
    assert any("'inport' left out: its ssh-port" in line for line in warned), warned
    assert any("'portrange' left out: its ssh-port 70000" in line for line in warned), warned
    # Only the honest container's key is pinned.
    known = (terminal.home / ".config" / "deepdock" / "known_hosts").read_text()
    assert known == "deepdock/env/honest ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHonest\n"
    assert not pwned.exists()


async def test_ssh_refuses_a_container_that_breaks_the_servers_rules(
    terminal: Terminal, aiohttp_server: Any, tmp_path: Path
) -> None:
    """`deepdock ssh NAME` runs the real ssh with -G in its place (the resolved options, no
    connection): the honest container's reach it, a lying answer never does."""
    pwned = tmp_path / "pwned"
    url = await lying_server(aiohttp_server, lying_containers(pwned))
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\necho ran >> {tmp_path / "ssh-ran"}\nexec /usr/bin/ssh -G "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {"DEEPDOCK_URL": url, "DEEPDOCK_TOKEN": "ddk_alice",
           "PATH": f"{wrapper.parent}:{terminal.env['PATH']}"}  # fmt: skip

    honest = await asyncio.to_thread(terminal.run, "ssh", "honest", "--", "true", **env)
    assert honest.returncode == 0, honest.stderr
    assert {"user alice", "port 22001", "hostkeyalias deepdock/env/honest"} <= set(
        honest.stdout.splitlines()
    )
    (tmp_path / "ssh-ran").unlink()

    # A host key that is not one key is left unpinned; the rest may go to ssh.
    odd_key = await asyncio.to_thread(terminal.run, "ssh", "inkey", **env)
    assert odd_key.returncode == 0, odd_key.stderr
    assert "proxycommand" not in odd_key.stdout
    (tmp_path / "ssh-ran").unlink()

    for name, field in (("inuser", "ssh_user"), ("inport", "ssh-port")):
        lying = await asyncio.to_thread(terminal.run, "ssh", name, **env)
        assert (lying.returncode, lying.stdout) == (1, ""), lying.stderr
        assert lying.stderr.startswith(
            f"deepdock: the server's answer for container {name!r} cannot go to ssh: its {field}"
        ), lying.stderr
        assert lying.stderr.count("\n") == 1
    assert not (tmp_path / "ssh-ran").exists()  # ssh never ran for them
    assert not pwned.exists()
    known = (terminal.home / ".config" / "deepdock" / "known_hosts").read_text()
    assert known == "deepdock/env/honest ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHonest\n"


def test_the_clients_rules_are_the_servers() -> None:
    """The client restates the daemon's patterns (it imports nothing of it): the same text."""
    assert client_ssh.CONTAINER_NAME == schemas.CONTAINER_NAME
    assert client_ssh.USER_NAME == schemas.USER_NAME


async def test_logs_show_control_characters_as_text_unless_raw(
    terminal: Terminal, aiohttp_server: Any
) -> None:
    output = "step 1\tok\n\x1b]0;owned\x07\x1b[2Jcleared\r\x9b31mred\n"

    async def logs(request: web.Request) -> web.Response:
        return web.Response(text=output)

    app = web.Application()
    app.router.add_get("/containers/{name}/logs", logs)
    server = await aiohttp_server(app, host="127.0.0.1")
    env = {"DEEPDOCK_URL": f"http://127.0.0.1:{server.port}", "DEEPDOCK_TOKEN": "ddk_alice"}

    def logs_of(*args: str) -> subprocess.CompletedProcess[bytes]:
        # Bytes: text mode would read the "\r" as a line break.
        return subprocess.run(
            [str(DEEPDOCK), "logs", "train", *args], capture_output=True,
            env={**terminal.env, **env}, timeout=60, check=False,
        )  # fmt: skip

    shown = await asyncio.to_thread(logs_of)
    raw = await asyncio.to_thread(logs_of, "--raw")

    assert (shown.returncode, shown.stdout.decode()) == (
        0, "step 1\tok\n?]0;owned??[2Jcleared??31mred\n"
    )  # fmt: skip
    assert (raw.returncode, raw.stdout.decode()) == (0, output)
