"""The example plugin package (``examples/swapd-example``) installs with pip and passes
swapd's shipped contract suites, run the way an outside author runs them: ``pytest
--swapd-backend slab --swapd-policy lfu`` in a directory with no swapd source tree and
no conftest, the package found only through its entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "swapd-example"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed by pip into a fresh target directory (no network)."""
    target = tmp_path_factory.mktemp("example") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target),
         str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stderr}"
    assert list(target.glob("swapd_example-*.dist-info/entry_points.txt"))
    return target


def _env(site: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(site))


def test_example_passes_the_shipped_contract_suites(site: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--swapd-backend", "slab", "--swapd-backend", "slab:class_step=512",
         "--swapd-policy", "lfu", "--swapd-policy", "lfu:halve_every=50"],
        cwd=tmp_path, env=_env(site), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert "test_compact_keeps_content[slab]" in subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--swapd-backend", "slab"], cwd=tmp_path, env=_env(site), capture_output=True,
        text=True, timeout=300).stdout


def test_a_bad_spec_is_a_usage_error(site: Path, tmp_path: Path) -> None:
    for spec, words in (("nosuch", "no swapd.backends plugin named 'nosuch'"),
                        ("slab:no_option=1", "no option 'no_option'")):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--swapd-backend", spec], cwd=tmp_path, env=_env(site),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
        assert words in proc.stderr, proc.stderr


def test_example_plugins_run_in_the_simulator(site: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    run = [sys.executable, "-m", "swapd"]
    assert subprocess.run([*run, "sim", "gen", "zipf", "-n", "3000", "--set", "pages=600",
                           "-o", str(trace)], env=_env(site), capture_output=True,
                          timeout=300).returncode == 0
    proc = subprocess.run([*run, "sim", "--trace", str(trace), "--policy", "lfu",
                           "--capacity", "100", "--backend", "slab", "--pool-mib", "0.5",
                           "--disk-mib", "8", "--json"], env=_env(site), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"backend": "slab"' in proc.stdout and '"policy": "lfu"' in proc.stdout
    wb = subprocess.run([*run, "sim", "writeback", "--trace", str(trace), "--capacity", "100",
                         "--backend", "slab", "--pool-mib", "0.25", "--json"], env=_env(site),
                        capture_output=True, text=True, timeout=300)
    assert wb.returncode == 0, wb.stderr  # the example's page_of() hook is used
