"""The suite's lanes: markers that say what a test needs beyond Python and this checkout.

- ``rig``: the test rig (a private dockerd, its registries and test images, SSH logins, root);
- ``process``: deepdockd serving as a real process (or another long subprocess: a build, an
  install);
- ``browser``: Chromium, driven by Playwright;
- ``gpu``: a real NVIDIA GPU and driver.

``make test-fast`` runs every test that has none of them. A test is marked by what it uses:
conftest.py's collection hook adds a lane's marker to every test whose fixtures include one of
the lane's fixtures below, so no one marks hundreds of tests by hand, or forgets one. A test
that needs a lane in a way its fixtures do not show carries the marker by hand; and the doors
to a dockerd and to a deepdockd process (``Rig.start``, ``Daemon``) call :func:`require`, so a
test that forgot its marker fails in every lane instead of slipping into the fast one.
A one-shot ``deepdockd`` command (``--help``, a start that must be refused) is no lane: it
needs nothing the fast lane lacks.
"""

from __future__ import annotations

from collections.abc import Iterable

# The fixtures that bring a lane's need with them, wherever they are defined.
LANE_FIXTURES: dict[str, frozenset[str]] = {
    # conftest.py's session rig: everything that talks to the private dockerd goes through it.
    "rig": frozenset({"rig"}),
    # conftest.py's rig_daemon; test_input_edges.py's start_daemon (deepdockd on no Docker).
    "process": frozenset({"rig_daemon", "start_daemon"}),
    # test_dashboard.py's Chromium.
    "browser": frozenset({"browser"}),
}

# The markers of the test that runs now (set by conftest.py before its fixtures are made);
# None outside pytest (the bench, ``python -m tests.support.rig``), where nothing is checked.
_running: frozenset[str] | None = None


def lanes_of(fixture_names: Iterable[str]) -> list[str]:
    """The lanes whose fixtures a test uses."""
    used = set(fixture_names)
    return [lane for lane, fixtures in LANE_FIXTURES.items() if used & fixtures]


def enter(markers: Iterable[str]) -> None:
    """The test about to run carries these markers."""
    global _running
    _running = frozenset(markers)


def require(lane: str, what: str) -> None:
    """Fail the running test unless it is marked ``lane``: ``what`` it does needs that lane."""
    if _running is not None and lane not in _running:
        raise AssertionError(
            f"this test {what} but is not marked {lane!r}: use a fixture of that lane or add "
            f"@pytest.mark.{lane} (tests/support/lanes.py), so that make test-fast leaves it out"
        )
