"""The implementation switch (swapd/impl.py): SWAPD_IMPL=compiled|python|auto, loud fallback,
and the CLI naming the implementation that runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import swapd.impl as impl

MISSING = "swapd._native._no_such_module"


def _run(*argv: str, env_impl: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, impl.ENV: env_impl}
    return subprocess.run([sys.executable, "-m", "swapd", *argv], capture_output=True,
                          text=True, env=env, timeout=120)


def test_python_is_always_available() -> None:
    sel = impl.select("python")
    assert sel.impl == "python" and sel.module is None
    assert "SWAPD_IMPL=python" in sel.describe()


def test_unknown_choice_is_a_named_error() -> None:
    with pytest.raises(impl.ImplError, match="choose one of auto, compiled, python"):
        impl.select("fast")


def test_auto_falls_back_loudly_naming_the_reason() -> None:
    with pytest.warns(impl.ImplFallbackWarning, match=MISSING):
        sel = impl.select("auto", module=MISSING)
    assert sel.impl == "python"
    assert sel.reason is not None and MISSING in sel.reason
    assert "compiled unavailable" in sel.describe()


def test_compiled_fails_loudly_when_unavailable() -> None:
    with pytest.raises(impl.ImplError, match=MISSING):
        impl.select("compiled", module=MISSING)


def test_stale_build_is_refused() -> None:
    # a module without the expected ABI_VERSION stands for a build of another version
    with pytest.warns(impl.ImplFallbackWarning, match="ABI"):
        sel = impl.select("auto", module="swapd._native")
    assert sel.impl == "python"


def test_compiled_loads_when_built() -> None:
    sel = impl.select("auto")
    if sel.module is None:
        # the build failed: "compiled" must then say why, never pass silently
        with pytest.raises(impl.ImplError, match="unavailable"):
            impl.select("compiled")
        return
    assert impl.select("compiled").impl == "compiled"
    assert sel.module.ABI_VERSION == impl.ABI_VERSION


def test_process_choice_follows_the_environment() -> None:
    want = os.environ.get(impl.ENV, "auto")
    if want in ("compiled", "python"):
        assert want == impl.IMPL
    assert (impl.native() is not None) == (impl.IMPL == "compiled")


@pytest.mark.parametrize("choice", ["python", "compiled"])
def test_cli_version_and_backends_name_the_implementation(choice: str) -> None:
    if choice == "compiled" and impl.select("auto").module is None:
        pytest.skip("the compiled implementation did not build here (see swapd/_native)")
    out = _run("--version", env_impl=choice)
    assert out.returncode == 0, out.stderr
    assert f"impl: {choice}" in out.stdout
    out = _run("backends", "--json", env_impl=choice)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    assert entries and all(e["impl"].startswith(choice) for e in entries)


def test_cli_rejects_a_bad_choice_in_one_line() -> None:
    out = _run("backends", env_impl="bogus")
    assert out.returncode == 2
    assert out.stderr.startswith("error: SWAPD_IMPL='bogus'")
