"""Tests that keep the documentation honest: the README's commands exist, the CLI
lists what the README promises, CI runs the README's test command, and every
public name of the package is documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import swapd

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quickstart_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_quickstart_has_exactly_two_commands() -> None:
    assert _quickstart_commands() == ["make demo", "make test"]


def test_quickstart_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for cmd in _quickstart_commands():
        target = cmd.split()[1]
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target!r}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert _quickstart_commands()[1] in ci


def test_cli_lists_every_command_of_the_readme() -> None:
    out = subprocess.run([sys.executable, "-m", "swapd", "--help"], capture_output=True,
                         text=True, check=True).stdout
    listed = set(re.findall(r"^    (\w[\w-]*)", out, re.M))
    documented = set(re.findall(r"^\| `swapd (\w[\w-]*)", README, re.M))
    assert documented, "README lists no commands"
    missing = documented - listed
    assert not missing, f"README documents commands the CLI lacks: {sorted(missing)}"
    undocumented = listed - documented
    assert not undocumented, f"the README's command table lacks: {sorted(undocumented)}"


def _public_modules() -> list[str]:
    names = ["swapd"]
    for info in pkgutil.walk_packages(swapd.__path__, "swapd."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


@pytest.mark.parametrize("modname", _public_modules())
def test_public_names_are_documented(modname: str) -> None:
    mod = importlib.import_module(modname)
    assert mod.__doc__, f"module {modname} has no docstring"
    missing = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != modname:
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            missing.append(name)
    assert not missing, f"{modname}: undocumented public names: {missing}"
