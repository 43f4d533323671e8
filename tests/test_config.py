"""Configuration: flag > environment > file > default, and a clear one-line refusal of every
bad value."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepdockd.__main__ import parse_args
from deepdockd.config import PARSERS, Config, ConfigError, flag_name, load_config
from deepdockd.shared_mounts import SharedMount

from tests.support.daemon import run_deepdockd

NO_FLAGS: dict[str, str | None] = {}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given(tmp_path: Path) -> None:
    config = load_config(NO_FLAGS, {}, default_file=tmp_path / "absent.toml")
    assert config == Config()
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.docker_host == "unix:///var/run/docker.sock"
    assert config.state_dir == Path("/var/lib/deepdockd")
    assert (config.namespace, config.log_level) == ("deepdock", "info")


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "d.toml",
        'host = "10.0.0.1"\nport = 8101\nnamespace = "from-file"\nlog_level = "warning"\n',
    )
    environ = {"DEEPDOCKD_PORT": "8102", "DEEPDOCKD_NAMESPACE": "from-env"}
    flags: dict[str, str | None] = {"config": str(config_file), "namespace": "from-flag"}

    config = load_config(flags, environ, default_file=tmp_path / "absent.toml")

    assert config.namespace == "from-flag"  # flag over env and file
    assert config.port == 8102  # env over file
    assert config.host == "10.0.0.1"  # file over default
    assert config.log_level == "warning"
    assert config.docker_host == Config.docker_host  # default


@pytest.mark.parametrize(
    ("key", "flag", "env", "file_value", "expected"),
    [
        ("host", "--host", "DEEPDOCKD_HOST", '"0.0.0.0"', "0.0.0.0"),
        ("port", "--port", "DEEPDOCKD_PORT", "9000", 9000),
        (
            "docker_host",
            "--docker-host",
            "DEEPDOCKD_DOCKER_HOST",
            '"tcp://10.1.1.1:2375"',
            "tcp://10.1.1.1:2375",
        ),
        ("state_dir", "--state-dir", "DEEPDOCKD_STATE_DIR", '"/srv/dd"', Path("/srv/dd")),
        ("namespace", "--namespace", "DEEPDOCKD_NAMESPACE", '"lab-a"', "lab-a"),
        ("log_level", "--log-level", "DEEPDOCKD_LOG_LEVEL", '"DEBUG"', "debug"),
    ],
)
def test_every_setting_comes_from_each_source(
    tmp_path: Path, key: str, flag: str, env: str, file_value: str, expected: object
) -> None:
    config_file = write(tmp_path / "d.toml", f"{key} = {file_value}\n")
    raw = str(expected)
    absent = tmp_path / "absent.toml"

    from_file = load_config(parse_args(["--config", str(config_file)]), {}, default_file=absent)
    from_env = load_config(NO_FLAGS, {env: raw}, default_file=absent)
    from_flag = load_config(parse_args([flag, raw]), {}, default_file=absent)

    assert getattr(from_file, key) == expected
    assert getattr(from_env, key) == expected
    assert getattr(from_flag, key) == expected


def test_default_file_is_read_when_present(tmp_path: Path) -> None:
    default_file = write(tmp_path / "deepdockd.toml", "port = 8123\n")
    assert load_config(NO_FLAGS, {}, default_file=default_file).port == 8123


def test_config_file_from_environment_and_flag_over_it(tmp_path: Path) -> None:
    env_file = write(tmp_path / "env.toml", "port = 8201\n")
    flag_file = write(tmp_path / "flag.toml", "port = 8202\n")
    environ = {"DEEPDOCKD_CONFIG": str(env_file)}
    absent = tmp_path / "absent.toml"
    assert load_config(NO_FLAGS, environ, default_file=absent).port == 8201
    assert load_config({"config": str(flag_file)}, environ, default_file=absent).port == 8202


def test_error_names_the_setting_the_value_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(NO_FLAGS, {"DEEPDOCKD_PORT": "80a"}, default_file=tmp_path / "x")
    assert str(caught.value) == (
        "port: '80a' must be a TCP port number from 1 to 65535 (from DEEPDOCKD_PORT)"
    )


# Each bad start: exit status 2, one line on stderr that says what is wrong, no traceback.
BAD_STARTS = [
    (
        ["--port", "http"],
        {},
        "port: 'http' must be a TCP port number from 1 to 65535 (from --port)",
    ),
    (["--port", "70000"], {}, "port: '70000' must be a TCP port number"),
    (["--port", "²"], {}, "port: '²' must be a TCP port number"),
    (
        [],
        {"DEEPDOCKD_PORT": "0"},
        "port: '0' must be a TCP port number from 1 to 65535 (from DEEPDOCKD_PORT)",
    ),
    (
        ["--docker-host", "/var/run/docker.sock"],
        {},
        "docker_host: '/var/run/docker.sock' must be a Docker address",
    ),
    (
        ["--docker-host", "unix://docker.sock"],
        {},
        "docker_host: 'unix://docker.sock' must name an absolute socket path",
    ),
    (
        ["--state-dir", "relative/dir"],
        {},
        "state_dir: 'relative/dir' must be an absolute directory path",
    ),
    (["--state-dir", "/etc/hostname/sub"], {}, "state_dir: cannot create '/etc/hostname/sub'"),
    (["--namespace", "Bad Name"], {}, "namespace: 'Bad Name' must be 1-63 characters"),
    (
        ["--log-level", "loud"],
        {},
        "log_level: 'loud' must be one of debug, info, warning, error (from --log-level)",
    ),
    (["--host", ""], {}, "host: '' must be an IP address or a host name"),
    (
        ["--config", "/nonexistent/deepdockd.toml"],
        {},
        "config: '/nonexistent/deepdockd.toml' is not a readable file",
    ),
    (
        [],
        {"DEEPDOCKD_GPU_RETENTION": "forever"},
        "gpu_retention: 'forever' must be a number of seconds",
    ),
    (
        [],
        {"DEEPDOCKD_GPU_BUCKET": "0.5"},
        "gpu_bucket: 0.5 s is shorter than gpu_sample_interval (1 s)",
    ),
    ([], {"DEEPDOCKD_GPU_RETENTION": "5"}, "gpu_retention: 5 s is shorter than gpu_bucket (10 s)"),
    (
        [],
        {"DEEPDOCKD_SERVICE_PORT_RANGE": "22500-23500"},
        "service_port_range: 22500-23500 overlaps ssh_port_range (22000-22999)",
    ),
    (
        [],
        {"DEEPDOCKD_SHARED_MOUNTS": "datasets:/datasets"},
        "shared_mounts: 'datasets:/datasets' must be \"HOST_PATH:CONTAINER_PATH[:ro|rw]\"",
    ),
    (
        [],
        {"DEEPDOCKD_SHARED_MOUNTS": "/srv/data:/data:rwx"},
        "shared_mounts: '/srv/data:/data:rwx' must be",
    ),
    (
        [],
        {"DEEPDOCKD_MAX_MEMORY_MB": "1024", "DEEPDOCKD_DEFAULT_MEMORY_MB": "2048"},
        "default_memory_mb: 2048 MiB is above max_memory_mb (1024 MiB)",
    ),
    ([], {"DEEPDOCKD_MAX_CPUS": "many"}, "max_cpus: 'many' must be a number of CPUs"),
    ([], {"DEEPDOCKD_PIDS_LIMIT": "-1"}, "pids_limit: '-1' must be a number of processes"),
]


def test_shared_mounts_read_from_file_and_environment(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "c.toml", 'shared_mounts = ["/srv/datasets:/datasets", "/srv/tmp:/tmp2:rw"]\n'
    )
    from_file = load_config({"config": str(toml)}, {}, default_file=tmp_path / "x")
    from_env = load_config(
        NO_FLAGS,
        {"DEEPDOCKD_SHARED_MOUNTS": "/srv/datasets:/datasets:ro, /srv/tmp:/tmp2:rw"},
        default_file=tmp_path / "x",
    )

    expected = (
        SharedMount("/srv/datasets", "/datasets", read_only=True),
        SharedMount("/srv/tmp", "/tmp2", read_only=False),
    )
    assert from_file.shared_mounts == from_env.shared_mounts == expected


@pytest.mark.parametrize(("args", "env", "message"), BAD_STARTS)
def test_bad_value_stops_the_start_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    # An empty config file of the test's own, so a config on this machine cannot interfere.
    config = write(tmp_path / "empty.toml", "")
    base = ["--state-dir", str(tmp_path / "state")]
    args = ([] if "--config" in args else ["--config", str(config)]) + base + args

    result = run_deepdockd(*args, env=env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deepdockd: " + message), lines[0]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "port = 8000\nprot = 1\n",
            "config: unknown key 'prot' in {file} (known keys: host, port,",
        ),
        ("port = \n", "config: {file} is not valid TOML: Invalid value (at line 1, column 8)"),
        (
            'port = "eighty"\n',
            "port: 'eighty' must be a TCP port number from 1 to 65535 (from config file {file})",
        ),
        ("port = true\n", "port: True must be a TCP port number"),
        ("namespace = 7\n", "namespace: 7 must be 1-63 characters"),
    ],
)
def test_bad_config_file_stops_the_start_with_one_line(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = write(tmp_path / "deepdockd.toml", toml)

    result = run_deepdockd("--config", str(config), "--state-dir", str(tmp_path / "s"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("deepdockd: " + message.format(file=config))


# --- the table of settings in docs/configuration.md against the daemon ---

CONFIGURATION_DOC = Path(__file__).parents[1] / "docs" / "configuration.md"
SETTINGS = [f.name for f in dataclasses.fields(Config)]
# Options of `deepdockd --help` that are not settings.
NOT_SETTINGS = {"-h", "--help", "--version", "--config"}
# A value no parser takes: every setting refuses it, naming itself and the value's source.
REFUSED = " "


@dataclass(frozen=True)
class DocumentedSetting:
    """One row of the documented table, as written (without the backquotes)."""

    key: str
    flag: str  # "" where the setting has no flag
    env: str
    default: str


def documented_rows() -> list[DocumentedSetting]:
    """The rows of the table in the Settings section of docs/configuration.md."""
    section = CONFIGURATION_DOC.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for key, rest in re.findall(r"^\| `([a-z_]+)` \|(.*)$", section, flags=re.MULTILINE):
        flag, env, default = (cell.strip().strip("`") for cell in rest.split("|")[:3])
        rows.append(DocumentedSetting(key, flag, env, default))
    return rows


def documented_table() -> dict[str, DocumentedSetting]:
    return {row.key: row for row in documented_rows()}


@pytest.fixture(scope="module")
def help_options() -> dict[str, str]:
    """``deepdockd --help``'s options, each with its help text."""
    result = run_deepdockd("--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    options: dict[str, str] = {}
    option = None
    for line in result.stdout.splitlines():
        if started := re.match(r"^  (-[-a-z]+)(?:, --[a-z]+)?(?: [A-Z_]+)?(?:  +(.*))?$", line):
            option = started[1]
            options[option] = started[2] or ""
        elif option and line.startswith("    "):  # the help goes on, or begins, below
            options[option] = f"{options[option]} {line.strip()}".strip()
        else:
            option = None
    return options


def as_the_file_has_it(text: str) -> object:
    """A documented default as a config file holds it: a TOML value where it is one
    (``8000``, ``true``, ``"22000-22999"``), else the text as a string (``127.0.0.1``)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def test_the_docs_document_every_setting_once() -> None:
    assert sorted(row.key for row in documented_rows()) == sorted(SETTINGS)


@pytest.mark.parametrize("key", SETTINGS)
def test_the_documented_default_is_the_daemons_default(tmp_path: Path, key: str) -> None:
    row = documented_table()[key]
    value = as_the_file_has_it(row.default)
    config_file = write(tmp_path / "d.toml", f"{key} = {json.dumps(value)}\n")
    absent = tmp_path / "absent.toml"

    from_file = load_config({"config": str(config_file)}, {}, default_file=absent)
    # As a shell would set it; a list comma-separated.
    env_text = ",".join(value) if isinstance(value, list) else value
    env_text = env_text if isinstance(env_text, str) else row.default
    from_env = load_config(NO_FLAGS, {row.env: env_text}, default_file=absent)

    assert getattr(from_file, key) == getattr(Config(), key)
    assert from_file == from_env == Config()


@pytest.mark.parametrize("key", SETTINGS)
def test_the_docs_name_the_variable_the_daemon_reads(tmp_path: Path, key: str) -> None:
    row = documented_table()[key]

    with pytest.raises(ConfigError) as caught:
        load_config(NO_FLAGS, {row.env: REFUSED}, default_file=tmp_path / "absent.toml")

    message = str(caught.value)
    assert message.startswith(f"{key}: {REFUSED!r} "), message
    assert message.endswith(f"(from {row.env})"), message


@pytest.mark.parametrize("key", SETTINGS)
def test_the_docs_name_the_flag_deepdockd_help_has(
    tmp_path: Path, key: str, help_options: dict[str, str]
) -> None:
    row = documented_table()[key]
    if not row.flag:
        assert flag_name(key) not in help_options
        with pytest.raises(SystemExit):  # argparse: unrecognized arguments
            parse_args([flag_name(key), "x"])
        return

    assert row.flag in help_options
    with pytest.raises(ConfigError) as caught:
        load_config(parse_args([row.flag, REFUSED]), {}, default_file=tmp_path / "absent.toml")
    message = str(caught.value)
    assert message.startswith(f"{key}: {REFUSED!r} "), message
    assert message.endswith(f"(from {row.flag})"), message
    # The help says the same default as the docs, and it is the daemon's.
    [helps_default] = re.findall(r"\(default ([^ ;,)]+)", help_options[row.flag])
    assert helps_default == row.default
    assert PARSERS[key](helps_default) == getattr(Config(), key)


def test_every_flag_of_deepdockd_help_is_a_documented_setting(
    help_options: dict[str, str],
) -> None:
    documented = {row.flag for row in documented_table().values() if row.flag}
    assert set(help_options) - NOT_SETTINGS == documented
