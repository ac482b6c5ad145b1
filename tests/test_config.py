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
    ({"layer": {"pool_limit_percent": 120}}, "[layer] pool_limit_percent: must be in (0, 100]"),
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
    ({"limits": {"global_resident_bytes": 0}}, "global_resident_bytes: must be at least one"),
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
