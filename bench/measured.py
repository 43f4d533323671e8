"""Which files the benchmarks measure (bench/measured.txt), and which of them changed since a
commit: the table of docs/benchmarks.md describes the code of the commit its run names, and
tests/test_bench_table.py holds it to that. Nothing here imports more than the standard
library: the test runs without the rig.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "bench" / "measured.txt"


class HistoryMissing(RuntimeError):
    """The commit is not in this clone: the message says why and what to do."""


def rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """The list's lines as (takes in, pattern), in order."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            found.append((not line.startswith("!"), _compile(line.removeprefix("!"))))
    return found


def _compile(glob: str) -> re.Pattern[str]:
    """A glob of paths: `**` is any number of directories (and what is in them), `*` and `?`
    stop at a `/`."""
    parts = re.split(r"(\*\*/?|\*|\?)", glob)
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(translated.get(p, re.escape(p)) for p in parts))


def is_measured(path: str, listed: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the last line of the list that matches ``path`` takes it in."""
    verdict = False
    for takes_in, pattern in listed:
        if pattern.fullmatch(path):
            verdict = takes_in
    return verdict


def git(*args: str, root: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def changed_since(commit: str, *, root: Path = ROOT, listed: Path = LIST) -> list[str]:
    """The measured files that differ between ``commit`` and the working tree: changed in a
    commit since, changed and not committed, or new and not ignored (untracked). Raises
    HistoryMissing when ``commit`` is not in this clone."""
    try:
        git("cat-file", "-e", f"{commit}^{{commit}}", root=root)
    except subprocess.CalledProcessError:
        if git("rev-parse", "--is-shallow-repository", root=root).strip() == "true":
            raise HistoryMissing(
                f"the bench's run names commit {commit}, which this shallow clone does not "
                "have: fetch the history (`git fetch --unshallow`; in CI, clone without "
                "--depth) and run the test again"
            ) from None
        raise HistoryMissing(
            f"the bench's run names commit {commit}, which is not in this repository's "
            "history (rebased, amended or squashed away): run `make bench` and commit "
            "bench/results.json and docs/benchmarks.md in a commit of their own"
        ) from None
    changed = git("diff", "--name-only", "--no-renames", commit, "--", root=root).splitlines()
    untracked = git("ls-files", "--others", "--exclude-standard", root=root).splitlines()
    listing = rules(listed.read_text())
    return sorted({path for path in changed + untracked if is_measured(path, listing)})
