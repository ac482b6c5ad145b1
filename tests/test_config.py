"""swapd.config: defaults, TOML loading, and one test per rejected input."""

from __future__ import annotations

from pathlib import Path

import pytest

from swapd.config import (
    Config,
    config_from_dict,
    default_socket_path,
    load_config,
    parse_size,
    replace,
    runtime_dir,
    state_dir,
)
from swapd.errors import ConfigError


def test_defaults_are_the_documented_ones() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.layer.backend == "zsmalloc" and cfg.layer.compressor == "lz4"
    assert cfg.layer.disk and cfg.layer.demotion_policy == "lru"
    assert cfg.reclaim.policy == "clock"
    assert (cfg.pager.readahead_min, cfg.pager.readahead_max) == (4, 64)
    assert cfg.daemon.socket_mode == 0o660


@pytest.mark.parametrize("text,value", [
    (4096, 4096), ("4096", 4096), ("64M", 64 << 20), ("1G", 1 << 30), ("512k", 512 << 10),
    ("2MiB", 2 << 20), (" 3 G ", 3 << 30), (0, 0),
])
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "12Q", "-1", "1.5G", True, 1.5, [1], -4096])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match="what"):
        parse_size(bad, "what")


def test_load_file_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[layer]\npool_limit_bytes = "128M"\nbackend = "zbud"\n'
                 '[limits]\nmax_regions = 3\n[daemon]\nallowed_users = ["nobody", 1000]\n'
                 '[reclaim]\ninline = false\n')
    cfg = load_config(p)
    assert cfg.layer.pool_limit_bytes == 128 << 20 and cfg.layer.backend == "zbud"
    assert cfg.limits.max_regions == 3
    assert cfg.daemon.allowed_users == ("nobody", 1000)
    assert cfg.reclaim.inline is False
    assert cfg.pager == Config().pager
    opts = cfg.layer.layer_options()
    assert opts["pool_limit_bytes"] == 128 << 20 and "backend" not in opts


def test_layer_options_are_layer_config_fields() -> None:
    from swapd.layer import LayerConfig

    LayerConfig(**Config().layer.layer_options())


@pytest.mark.parametrize("data,message", [
    ({"layers": {}}, "unknown table [layers]"),
    ({"layer": {"pol_limit": 1}}, "unknown key 'pol_limit' in [layer]"),
    ({"daemon": {"sockett": "x"}}, "unknown key 'sockett' in [daemon]"),
    ({"layer": 3}, "[layer] must be a table"),
    ({"limits": {"max_regions": "3"}}, "[limits] max_regions: expected an integer"),
    ({"limits": {"max_regions": 0}}, "[limits] max_regions: must be positive"),
    ({"limits": {"max_regions": True}}, "[limits] max_regions: expected an integer"),
    ({"layer": {"disk": "yes"}}, "[layer] disk: expected true or false"),
    ({"layer": {"pool_limit_percent": "x"}}, "[layer] pool_limit_percent: expected a number"),
    ({"layer": {"pool_limit_percent": 120}}, "[layer] pool_limit_percent must be within 0..100"),
    ({"layer": {"backend": 5}}, "[layer] backend: expected a string"),
    ({"layer": {"disk_bytes": "lots"}}, "[layer] disk_bytes: cannot parse size"),
    ({"layer": {"disk_bytes": 0}}, "[layer] disk_bytes: at least one page"),
    ({"daemon": {"allowed_users": "root"}}, "[daemon] allowed_users: expected a list"),
    ({"daemon": {"allowed_groups": [True]}}, "[daemon] allowed_groups: expected a list"),
    ({"daemon": {"socket_mode": 0o1777}}, "[daemon] socket_mode: not a file mode"),
    ({"daemon": {"watchdog_interval_s": -1}}, "watchdog_interval_s: must not be negative"),
    ({"pager": {"readahead_min": 8, "readahead_max": 4}}, "readahead_min (8) exceeds"),
    ({"pager": {"readahead_max": 512}}, "[pager] readahead_max: at most 256"),
    ({"reclaim": {"batch_pages": 4096}}, "[reclaim] batch_pages: at most 1024"),
    ({"reclaim": {"hard_slack_pages": -1}}, "[reclaim] hard_slack_pages: must not be negative"),
    ({"limits": {"default_resident_bytes": 1000}}, "must be a multiple of 4096"),
    ({"limits": {"global_resident_bytes": 0}}, "global_resident_bytes: must be at least 4096"),
])
def test_rejected_inputs_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(data, "cfg.toml")
    assert message in str(ei.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[layer\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_replace_validates() -> None:
    cfg = replace(Config(), "daemon", record="/tmp/x.csv")
    assert cfg.daemon.record == "/tmp/x.csv"
    with pytest.raises(ConfigError):
        replace(Config(), "pager", readahead_min=0)


def test_directories_follow_systemd_then_root_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/a:/run/b")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/s")
    assert runtime_dir() == Path("/run/a") and state_dir() == Path("/var/lib/s")
    assert default_socket_path() == Path("/run/a/swapd.sock")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert runtime_dir() == Path("/run/swapd") and state_dir() == Path("/var/lib/swapd")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert runtime_dir() == Path("/run/user/1000/swapd")
    assert state_dir() == Path("/home/u/.state/swapd")


# --- generated from the dataclasses ----------------------------------------------------------


def test_every_layer_config_field_is_a_layer_key_with_its_default() -> None:
    import dataclasses

    from swapd.config import all_keys
    from swapd.layer import LayerConfig

    layer_keys = {k.name: k for k in all_keys("layer")}
    for f in dataclasses.fields(LayerConfig):
        assert f.name in layer_keys, f"LayerConfig.{f.name} is not settable in [layer]"
        assert layer_keys[f.name].default == f.default
        assert layer_keys[f.name].doc, f"[layer] {f.name} has no documentation"
    cfg = config_from_dict({"layer": {"second_chance": False, "shrinker_batch": 7,
                                      "shrinker_backoff_max": 9}})
    lc = cfg.layer.layer_config()
    assert (lc.second_chance, lc.shrinker_batch, lc.shrinker_backoff_max) == (False, 7, 9.0)


def test_every_key_is_documented_and_typed() -> None:
    from swapd.config import all_keys

    for k in all_keys():
        assert k.doc, f"{k.where} has no documentation"
        assert k.type in ("int", "float", "bool", "str", "size", "list"), k


def test_layer_config_validation_is_the_layer_s_own() -> None:
    with pytest.raises(ConfigError, match=r"^\[layer\] need 0 < shrinker_backoff_min"):
        config_from_dict({"layer": {"shrinker_backoff_min": 2.0, "shrinker_backoff_max": 1.0}})


def test_backend_options_tables(tmp_path: Path) -> None:
    from swapd.config import resolve_plugins

    p = tmp_path / "c.toml"
    p.write_text('[layer]\nbackend = "zsmalloc"\n[backend.zsmalloc]\nlock = "pool"\n'
                 'chain_size = 4\n')
    cfg = load_config(p)
    assert cfg.backend_options() == {"lock": "pool", "chain_size": 4}
    assert cfg.source("layer", "backend") == f"{p}"
    assert cfg.sources["backend.zsmalloc.lock"] == f"{p}"
    resolve_plugins(cfg)
    bad = config_from_dict({"backend": {"zsmalloc": {"lock": "pol"}}})
    with pytest.raises(ConfigError, match=r"\[backend.zsmalloc\].*lock must be 'class' or 'pool'"):
        resolve_plugins(bad)
    typo = config_from_dict({"backend": {"zbud": {"lokc": 1}}})
    with pytest.raises(ConfigError, match=r"\[backend.zbud\].*has no option 'lokc'"):
        resolve_plugins(typo)
    with pytest.raises(ConfigError, match=r"\[backend.zsmalloc\] must be a table"):
        config_from_dict({"backend": {"zsmalloc": 3}})


@pytest.mark.parametrize("data,message", [
    ({"reclaim": {"policy": "clok"}}, "[reclaim] policy: no swapd.policies plugin named 'clok'"),
    ({"layer": {"backend": "zsmaloc"}}, "[layer] backend: no swapd.backends plugin named"),
    ({"layer": {"compressor": "lz5"}}, "[layer] compressor: unknown compressor 'lz5'"),
    ({"layer": {"demotion_policy": "sive"}}, "[layer] demotion_policy: no swapd.policies"),
])
def test_plugin_names_are_resolved_and_refused_by_name(data: dict[str, object],
                                                       message: str) -> None:
    from swapd.config import resolve_plugins

    cfg = config_from_dict(data)  # a name is only a string until it is resolved
    with pytest.raises(ConfigError) as ei:
        resolve_plugins(cfg)
    assert message in str(ei.value)


def _env(**kw: object) -> object:
    from swapd.config import Environment

    base: dict[str, object] = dict(ram_bytes=8 << 30, nofile_soft=1024, nofile_hard=1 << 20,
                                   watchdog_usec=0, euid=1000, gids=frozenset({1000}),
                                   can_chown=False, disk_fs_bytes=100 << 30)
    base.update(kw)
    return Environment(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("data,env,message", [
    ({"daemon": {"watchdog_interval_s": 30}}, {"watchdog_usec": 20_000_000},
     "watchdog_interval_s = 30 is not below the service's watchdog timeout"),
    ({"limits": {"max_clients": 1000, "max_regions": 64}}, {"nofile_hard": 4096},
     "max_clients = 1000 x max_regions = 64 need 130064 file descriptors, but the limit is 4096"),
    ({"daemon": {"socket_group": "root"}}, {},
     "[daemon] socket_group: the daemon (uid 1000) is not a member of group 'root'"),
    ({"daemon": {"socket_group": "no-such-group-xyz"}}, {},
     "[daemon] socket_group: no such group 'no-such-group-xyz'"),
    ({"layer": {"pool_limit_bytes": "16G"}}, {}, "pool_limit_bytes = 16G is larger than"),
    ({"limits": {"global_resident_bytes": "9G"}}, {}, "global_resident_bytes = 9G is larger"),
    ({"layer": {"disk_bytes": "200G"}}, {}, "disk_bytes = 200G is larger than the file system"),
])
def test_environment_checks(data: dict[str, object], env: dict[str, object],
                            message: str) -> None:
    from swapd.config import check_environment

    cfg = config_from_dict(data, "f.toml")
    with pytest.raises(ConfigError) as ei:
        check_environment(cfg, _env(**env))  # type: ignore[arg-type]
    assert message in str(ei.value)


def test_environment_defaults_warn_instead_of_refusing() -> None:
    from swapd.config import check_environment

    warnings = check_environment(Config(), _env(nofile_hard=4096, ram_bytes=4 << 30))  # type: ignore[arg-type]
    assert any("need 33344 file descriptors" in w and "built-in defaults" in w for w in warnings)
    assert any("global_resident_bytes = 8G" in w for w in warnings)
    ok = config_from_dict({"daemon": {"socket_group": "root", "watchdog_interval_s": 5}})
    assert check_environment(ok, _env(gids=frozenset({0}), watchdog_usec=20_000_000)) == []  # type: ignore[arg-type]
    assert check_environment(ok, _env(can_chown=True)) == []  # type: ignore[arg-type]


def test_sources_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[pager]\nreadahead_max = 32\n")
    cfg = replace(load_config(p), "daemon", source="--socket", socket="/tmp/s.sock")
    assert cfg.source("pager", "readahead_max") == str(p)
    assert cfg.source("daemon", "socket") == "--socket"
    assert cfg.source("pager", "readahead_min") == "default"
    assert cfg.path == str(p)


def test_default_file_is_optional_but_an_explicit_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPD_CONFIG", str(tmp_path / "absent.toml"))
    assert load_config(None, default_file=True) == Config()
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")
    (tmp_path / "absent.toml").write_text("[reclaim]\npolicy = 'sieve'\n")
    assert load_config(None, default_file=True).reclaim.policy == "sieve"


def test_differences() -> None:
    from swapd.config import differences

    a = Config()
    b = config_from_dict({"reclaim": {"policy": "sieve"},
                          "backend": {"zsmalloc": {"lock": "pool"}}})
    assert differences(a, b) == [("reclaim", "policy", "clock", "sieve"),
                                 ("backend.zsmalloc", "*", {}, {"lock": "pool"})]


# --- the committed example and reference are the generated ones ------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_generated_and_parses_to_the_defaults() -> None:
    import tomllib

    from swapd.cmd.config import render_example

    text = (ROOT / "systemd" / "swapd.toml").read_text()
    assert text == render_example(), "systemd/swapd.toml is stale: run `swapd config example`"
    assert load_config(ROOT / "systemd" / "swapd.toml") == Config()
    # every key uncommented: the defaults again, and every backend option accepted
    lines = []
    for line in text.splitlines():
        if line.startswith("#") and not line.startswith("# ") and "unset by default" not in line:
            line = line[1:]
        lines.append(line)
    data = tomllib.loads("\n".join(lines))
    cfg = config_from_dict(data)
    assert (cfg.daemon, cfg.limits, cfg.pager, cfg.reclaim, cfg.layer) == (
        Config().daemon, Config().limits, Config().pager, Config().reclaim, Config().layer)
    from swapd.config import resolve_plugins

    resolve_plugins(cfg)


def test_reference_is_generated() -> None:
    from swapd.cmd.config import render_reference

    assert (ROOT / "docs" / "config.md").read_text() == render_reference(), (
        "docs/config.md is stale: run `swapd config reference > docs/config.md`")


def test_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from swapd.cli import main

    good = tmp_path / "good.toml"
    good.write_text('[reclaim]\npolicy = "sieve"\n[backend.zsmalloc]\nlock = "pool"\n')
    assert main(["config", "check", str(good)]) == 0
    assert f"{good}: ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[reclaim]\npolicy = "clok"\n')
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [reclaim] policy: no swapd.policies plugin named 'clok'")
    assert len(err.strip().splitlines()) == 1
    assert main(["config", "show", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert 'policy = "sieve"' in out and f"# {good}" in out
    assert "readahead_min = 4" in out and "# default" in out
    assert 'lock = "pool"' in out
    assert main(["config", "show", "--config", str(good), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["tables"]["reclaim"]["policy"] == {"value": "sieve", "source": str(good),
                                                   "live": True}
