"""Backends are plugins: a third-party package with nothing but an entry point is found.

``tests/fixtures/tinybackend`` is a real package (its own ``pyproject.toml`` and an
in-tree PEP 517 build backend).  It is installed for real with ``pip install
--no-build-isolation --no-deps --target TMP`` (no network) and ``swapd`` is run in
a subprocess with ``PYTHONPATH=TMP``.  The package registers three entry points in
``swapd.backends``: ``tiny`` (a working backend), ``tiny_broken`` (its module fails
to import) and ``tiny_notabackend`` (not a Backend subclass).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.errors import PluginError
from swapd.plugins import available_backends, discover, make_backend
from tests.conftest import TINY_SRC

SWAPD = [sys.executable, "-m", "swapd"]


def _run(args: list[str], pythonpath: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["COLUMNS"] = "200"
    return subprocess.run(args, capture_output=True, text=True, env=env, check=check,
                          timeout=120)


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture package installed by pip into a fresh target directory."""
    base = tmp_path_factory.mktemp("tinyplugin")
    src = base / "src"
    shutil.copytree(TINY_SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    target = base / "site"
    proc = _run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                 "--no-index", "--disable-pip-version-check", "--quiet", "--target",
                 str(target), str(src)], check=False)
    assert proc.returncode == 0, f"pip install of the fixture failed:\n{proc.stderr}"
    assert (target / "tinybackend" / "__init__.py").is_file()
    assert list(target.glob("swapd_tinybackend-*.dist-info/entry_points.txt"))
    yield str(target)
    shutil.rmtree(base, ignore_errors=True)


def _backends_json(pythonpath: str | None) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = _run([*SWAPD, "backends", "--json"], pythonpath, check=False)
    assert proc.stdout, proc.stderr
    return proc.returncode, {e["name"]: e for e in json.loads(proc.stdout)}


def test_third_party_backend_is_found(tiny_site: str) -> None:
    rc, infos = _backends_json(tiny_site)
    assert rc == 0
    tiny = infos["tiny"]
    assert tiny["ok"] is True and tiny["error"] is None
    assert tiny["distribution"] == "swapd-tinybackend"
    assert tiny["target"] == "tinybackend:TinyPool"
    assert tiny["description"] == "one object per page (third-party test fixture)"
    assert tiny["version"] == "0.1.0"


def test_broken_plugin_is_reported_and_others_still_load(tiny_site: str) -> None:
    _, without = _backends_json(None)
    rc, infos = _backends_json(tiny_site)
    assert rc == 0
    broken = infos["tiny_broken"]
    assert broken["ok"] is False
    assert "import failed" in broken["error"]
    assert "swapd_tinybackend_missing_dependency" in broken["error"]
    # Every backend that loads without the fixture package still loads with it.
    for name, info in without.items():
        assert infos[name]["ok"] == info["ok"], name
    assert infos["tiny"]["ok"]


def test_non_backend_class_is_rejected_by_name(tiny_site: str) -> None:
    _, infos = _backends_json(tiny_site)
    bad = infos["tiny_notabackend"]
    assert bad["ok"] is False
    assert "tinybackend:NotABackend" in bad["error"]
    assert "not a subclass of swapd.backend.Backend" in bad["error"]


def test_table_output_lists_failures_with_reasons(tiny_site: str) -> None:
    proc = _run([*SWAPD, "backends"], tiny_site)
    out = proc.stdout
    assert "tiny" in out and "one object per page" in out
    assert "tiny_broken" in out and "failed" in out


def test_third_party_backend_works_through_make_backend(tiny_site: str) -> None:
    code = ("from swapd.plugins import make_backend\n"
            "b = make_backend('tiny', max_pages=4)\n"
            "h = b.malloc(100); b.write(h, bytes(range(100)))\n"
            "assert b.read(h) == bytes(range(100)); b._check()\n"
            "print(type(b).__module__, b.total_pages())\n")
    proc = _run([sys.executable, "-c", code], tiny_site)
    assert proc.stdout.split() == ["tinybackend", "1"]


def test_using_a_broken_plugin_names_the_reason(tiny_site: str) -> None:
    proc = _run([sys.executable, "-c",
                 "from swapd.plugins import make_backend; make_backend('tiny_broken')"],
                tiny_site, check=False)
    assert proc.returncode != 0
    assert "PluginError" in proc.stderr and "failed to load" in proc.stderr


def test_without_the_package_tiny_is_absent() -> None:
    _, infos = _backends_json(None)
    assert "tiny" not in infos


def test_unknown_backend_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match=r"no swapd\.backends plugin named 'nonesuch'"):
        make_backend("nonesuch")


def test_in_process_discovery_matches_available() -> None:
    infos = discover("swapd.backends")
    assert {i.name for i in infos if i.ok} == set(available_backends())
    for i in infos:
        assert i.ok == (i.error is None)


# -- the command line ---------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    out = _run([*SWAPD, "--help"]).stdout
    for cmd in ("backends", "corpus", "bench"):
        assert f"    {cmd}" in out, f"`swapd --help` does not list {cmd}:\n{out}"


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "swapd"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (not a venv install)")
    out = _run([str(script), "--help"]).stdout
    assert "backends" in out and "corpus" in out and "bench" in out


def test_bench_help_lists_density_and_throughput() -> None:
    out = _run([*SWAPD, "bench", "--help"]).stdout
    assert "density" in out and "throughput" in out


def test_corpus_capture_help() -> None:
    out = _run([*SWAPD, "corpus", "capture", "--help"]).stdout
    for opt in ("--pid", "--mib", "--synthetic", "OUT"):
        assert opt in out


# -- the benches of this issue, on a small synthetic corpus ---------------------------------


def _bench_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    from swapd.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_bench_density_json(capsys: pytest.CaptureFixture[str]) -> None:
    from swapd.kernel.zram import zram_unavailable_reason

    r = _bench_json(capsys, ["bench", "density", "--synthetic", "400", "--seed", "2", "--json"])
    assert r["pages"] == 400 and r["orig_bytes"] == 400 * 4096 and r["compressor"] == "lz4"
    assert set(r["backends"]) == set(available_backends())
    for name, b in r["backends"].items():
        for key in ("pool_bytes", "compressed_bytes", "stored_pages", "same_filled_pages"):
            assert isinstance(b[key], int), (name, key)
        assert b["stored_pages"] + b["same_filled_pages"] + b["reject_compress_poor"] == 400
        assert b["pool_bytes"] % 4096 == 0 and b["pool_bytes"] >= b["compressed_bytes"]
    if zram_unavailable_reason() is None:
        z = r["zram"]
        assert z is not None
        for key in ("orig_data_size", "compr_data_size", "mem_used_total", "same_pages",
                    "huge_pages"):
            assert isinstance(z[key], int), key
        assert z["orig_data_size"] == 400 * 4096
        assert all(b["same_filled_pages"] == z["same_pages"] for b in r["backends"].values())
        assert 0.97 < r["lz4_check"]["python_over_kernel"] < 1.03
    else:
        assert r["zram"] is None


def test_bench_throughput_json(capsys: pytest.CaptureFixture[str]) -> None:
    r = _bench_json(capsys, ["bench", "throughput", "--synthetic", "200", "--reps", "1",
                             "--json"])
    assert r["bare_lz4"]["pages_per_s"] > 0
    assert set(r["backends"]) == set(available_backends())
    for b in r["backends"].values():
        assert b["pages_per_s"] > 0 and b["ratio_to_bare_lz4"] > 0


@pytest.mark.parametrize("bench", ["density", "throughput"])
def test_bench_without_corpus_names_the_flag(bench: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from swapd.cli import main

    assert main(["bench", bench]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--corpus" in err
