"""The systemd units: hardening score, and the facts the units and the daemon must agree on.

``systemd-analyze security --offline=yes`` (Debian's ``systemd`` package, listed in
``.ci/debian-packages``) scores a unit file without loading it; the daemon's unit must
stay at or below 1.5 (``tests/bench/RESULTS.md`` records the figure).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from swapd.config import Config, descriptors_needed

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "swapd.service"
EXPORTER_UNIT = ROOT / "systemd" / "swapd-exporter.service"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def exposure(unit: Path) -> float:
    """The overall exposure level systemd-analyze gives ``unit``."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    proc = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, f"no exposure level in the output:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1))


def test_daemon_unit_scores_at_most_1_5() -> None:
    assert exposure(UNIT) <= 1.5


def test_exporter_unit_scores_at_most_1_5() -> None:
    assert exposure(EXPORTER_UNIT) <= 1.5


def test_daemon_unit_facts() -> None:
    d = _directives(UNIT)
    assert d["User"] == ["swapd"] and d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "--config" not in d["ExecStart"][0], "the config file is optional: no --config"
    assert d["PrivateNetwork"] == ["yes"]
    assert int(d["LimitNOFILE"][0]) >= descriptors_needed(Config())
    for doc in d["Documentation"][0].split():
        assert doc.startswith(("man:", "http://", "https://")), f"not a URL for users: {doc}"
    # the capabilities the daemon's system calls need, and no more
    assert set(d["CapabilityBoundingSet"][0].split()) == {
        "CAP_SYS_PTRACE", "CAP_SYS_NICE", "CAP_DAC_READ_SEARCH"}
    assert d["AmbientCapabilities"] == d["CapabilityBoundingSet"]
    # every directive that cannot be set is documented in the header comment
    header = UNIT.read_text().split("[Unit]")[0]
    for name in ("PrivateUsers=", "RestrictAddressFamilies=", "SystemCallFilter=~@resources",
                 "DeviceAllow=", "RootDirectory="):
        assert name in header, f"{name} is not explained"


def test_exporter_unit_runs_the_exporter() -> None:
    d = _directives(EXPORTER_UNIT)
    assert d["ExecStart"][0].split()[1] == "exporter"
    assert "PrivateNetwork" not in d
