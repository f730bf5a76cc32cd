"""Settings: defaults, environment, TOML file, URL parsing and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sendflowr.cli import app
from sendflowr.settings import (
    BusURL,
    CacheURL,
    EventStoreURL,
    MetadataURL,
    SettingsError,
    load_settings,
    parse_bus_url,
    parse_cache_url,
    parse_event_store_url,
    parse_metadata_url,
)


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SENDFLOWR_* from the caller's shell and no stray ./sendflowr.toml."""
    for name in list(os.environ):
        if name.startswith("SENDFLOWR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _settings_error(**overrides: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    return str(info.value)


# --- defaults and sources -------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings()
    assert s.event_store_url == "chdb://var/events"
    assert s.metadata_url == "sqlite:///var/meta.db"
    assert s.bus_url == "inline"
    assert s.feature_cache_url == "memory"
    assert s.event_store == EventStoreURL("chdb", path=Path("var/events"), database="sendflowr")
    assert s.metadata == MetadataURL("sqlite", "sqlite:///var/meta.db")
    assert s.bus == BusURL("inline")
    assert s.feature_cache == CacheURL("memory")
    assert s.data_dir == Path("var")
    assert s.hash_key is None
    assert s.host == "127.0.0.1"
    assert s.port == 8001
    assert s.log_level == "info"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDFLOWR_EVENT_STORE_URL", "clickhouse://bob:pw@ch.internal:8124/events")
    monkeypatch.setenv("SENDFLOWR_METADATA_URL", "postgresql://app:pw@db:5432/meta")
    monkeypatch.setenv("SENDFLOWR_BUS_URL", "kafka://k1:9092,k2:9093")
    monkeypatch.setenv("SENDFLOWR_FEATURE_CACHE_URL", "redis://cache:6379/2")
    monkeypatch.setenv("SENDFLOWR_PORT", "9000")
    monkeypatch.setenv("SENDFLOWR_HASH_KEY", "s3cret")
    monkeypatch.setenv("SENDFLOWR_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.event_store == EventStoreURL(
        "clickhouse",
        database="events",
        host="ch.internal",
        port=8124,
        username="bob",
        password="pw",
    )
    assert s.metadata == MetadataURL("postgresql", "postgresql+psycopg://app:pw@db:5432/meta")
    assert s.bus == BusURL("kafka", bootstrap="k1:9092,k2:9093")
    assert s.feature_cache == CacheURL("redis", "redis://cache:6379/2")
    assert s.port == 9000
    assert s.hash_key is not None
    assert s.hash_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.log_level == "debug"


def test_keyword_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDFLOWR_PORT", "9000")
    assert load_settings(port=9100).port == 9100


def test_toml_file_from_sendflowr_config_and_env_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "custom.toml"
    config.parent.mkdir()
    config.write_text(
        'bus_url = "kafka://broker:9092"\n'
        "port = 9001\n"
        'demo_tenant = "brand_x"\n'
        'event_store_url = "chdb:///srv/events?database=prod"\n'
    )
    monkeypatch.setenv("SENDFLOWR_CONFIG", str(config))
    s = load_settings()
    assert s.bus == BusURL("kafka", bootstrap="broker:9092")
    assert s.port == 9001
    assert s.demo_tenant == "brand_x"
    assert s.event_store == EventStoreURL("chdb", path=Path("/srv/events"), database="prod")

    monkeypatch.setenv("SENDFLOWR_PORT", "9002")
    monkeypatch.setenv("SENDFLOWR_BUS_URL", "inline")
    s = load_settings()
    assert s.port == 9002
    assert s.bus == BusURL("inline")
    assert s.demo_tenant == "brand_x"  # still from the file


def test_sendflowr_toml_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "sendflowr.toml").write_text("port = 9003\n")
    assert load_settings().port == 9003


def test_sendflowr_config_replaces_the_working_directory_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sendflowr.toml").write_text('port = 9003\nhost = "0.0.0.0"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("port = 9004\n")
    monkeypatch.setenv("SENDFLOWR_CONFIG", str(explicit))
    s = load_settings()
    assert s.port == 9004
    assert s.host == "127.0.0.1"


def test_missing_config_file_names_sendflowr_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("SENDFLOWR_CONFIG", str(missing))
    message = _settings_error()
    assert message == f"SENDFLOWR_CONFIG: no such file {str(missing)!r}"


def test_malformed_toml_names_sendflowr_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = [\n")
    monkeypatch.setenv("SENDFLOWR_CONFIG", str(config))
    message = _settings_error()
    assert message.startswith("SENDFLOWR_CONFIG: ")
    assert len(message.splitlines()) == 1


def test_bad_url_in_toml_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('event_store_url = "mysql://x"\n')
    monkeypatch.setenv("SENDFLOWR_CONFIG", str(config))
    message = _settings_error()
    assert message.startswith("SENDFLOWR_EVENT_STORE_URL (event_store_url): unknown scheme 'mysql'")
    assert len(message.splitlines()) == 1


def test_unknown_setting_in_toml_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "sendflowr.toml").write_text("evnt_store_url = 'chdb://x'\n")
    message = _settings_error()
    assert message.startswith("SENDFLOWR_EVNT_STORE_URL (evnt_store_url): ")
    assert "not permitted" in message


# --- bad values: one line per problem, naming the setting -----------------------------------


@pytest.mark.parametrize(
    ("env", "value", "reason"),
    [
        ("SENDFLOWR_EVENT_STORE_URL", "mysql://x", "unknown scheme 'mysql'"),
        ("SENDFLOWR_EVENT_STORE_URL", "var/events", "unknown scheme 'var/events'"),
        ("SENDFLOWR_EVENT_STORE_URL", "chdb://", "chdb:// needs a directory"),
        ("SENDFLOWR_EVENT_STORE_URL", "chdb://var/events?database=a-b", "database name 'a-b'"),
        ("SENDFLOWR_EVENT_STORE_URL", "clickhouse://", "clickhouse:// needs a host"),
        ("SENDFLOWR_EVENT_STORE_URL", "clickhouse://h:port/db", "the port is not a number"),
        ("SENDFLOWR_EVENT_STORE_URL", "clickhouse://h/bad-db", "database name 'bad-db'"),
        ("SENDFLOWR_METADATA_URL", "mysql://x", "unknown scheme 'mysql'"),
        ("SENDFLOWR_METADATA_URL", "sqlite://relative", "expected sqlite:///"),
        ("SENDFLOWR_METADATA_URL", "sqlite:///", "expected sqlite:///"),
        ("SENDFLOWR_METADATA_URL", "postgresql://host:notaport/db", "the port is not a number"),
        ("SENDFLOWR_METADATA_URL", "postgresql:///db", "postgresql:// needs a host"),
        ("SENDFLOWR_BUS_URL", "kafka://nohostport", "'nohostport' is not host:port"),
        ("SENDFLOWR_BUS_URL", "kafka://a:9092,b", "'b' is not host:port"),
        ("SENDFLOWR_BUS_URL", "kafka://h:port", "'h:port' is not host:port"),
        ("SENDFLOWR_BUS_URL", "kafka://", "kafka:// needs host:port"),
        ("SENDFLOWR_BUS_URL", "Inline", "unknown bus 'Inline'"),
        ("SENDFLOWR_FEATURE_CACHE_URL", "redis://", "redis:// needs a host"),
        ("SENDFLOWR_FEATURE_CACHE_URL", "redis://h:port/0", "the port is not a number"),
        ("SENDFLOWR_FEATURE_CACHE_URL", "memcached://h", "unknown feature cache"),
        ("SENDFLOWR_PORT", "http", "valid integer"),
        ("SENDFLOWR_PORT", "0", "greater than or equal to 1"),
        ("SENDFLOWR_DEMO_TENANT", "Demo Brand", "should match pattern"),
        ("SENDFLOWR_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
    ],
)
def test_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(env, value)
    message = _settings_error()
    field = env.removeprefix("SENDFLOWR_").lower()
    assert message.splitlines() == [message]
    assert message.startswith(f"{env} ({field}): ")
    assert reason in message


def test_several_bad_settings_give_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDFLOWR_EVENT_STORE_URL", "mysql://x")
    monkeypatch.setenv("SENDFLOWR_BUS_URL", "kafka://nohostport")
    monkeypatch.setenv("SENDFLOWR_FEATURE_CACHE_URL", "redis://")
    lines = _settings_error().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [
        "SENDFLOWR_EVENT_STORE_URL",
        "SENDFLOWR_BUS_URL",
        "SENDFLOWR_FEATURE_CACHE_URL",
    ]


def test_keyword_override_errors_name_the_setting() -> None:
    message = _settings_error(metadata_url="mysql://x")
    assert message.startswith("SENDFLOWR_METADATA_URL (metadata_url): unknown scheme 'mysql'")


# --- parsed URL objects ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("chdb://var/events", EventStoreURL("chdb", path=Path("var/events"))),
        ("chdb://data", EventStoreURL("chdb", path=Path("data"))),
        ("chdb:///srv/sendflowr/events", EventStoreURL("chdb", path=Path("/srv/sendflowr/events"))),
        (
            "chdb://var/events?database=tenant_a",
            EventStoreURL("chdb", path=Path("var/events"), database="tenant_a"),
        ),
        (
            "chdb:///tmp/my%20dir?database=x1",
            EventStoreURL("chdb", path=Path("/tmp/my dir"), database="x1"),
        ),
        (
            "clickhouse://bob:p%40ss@ch.example.com:9440/analytics",
            EventStoreURL(
                "clickhouse",
                host="ch.example.com",
                port=9440,
                username="bob",
                password="p@ss",
                database="analytics",
            ),
        ),
        ("clickhouse://ch", EventStoreURL("clickhouse", host="ch")),
        (
            "clickhouses://u@ch:8443/",
            EventStoreURL("clickhouse", host="ch", port=8443, username="u", secure=True),
        ),
    ],
)
def test_parse_event_store_url(raw: str, expected: EventStoreURL) -> None:
    assert parse_event_store_url(raw) == expected


def test_event_store_defaults() -> None:
    url = parse_event_store_url("clickhouse://ch")
    assert (url.port, url.username, url.password, url.database, url.secure) == (
        8123,
        "default",
        "",
        "sendflowr",
        False,
    )
    assert url.path is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sqlite:///var/meta.db", MetadataURL("sqlite", "sqlite:///var/meta.db")),
        ("sqlite:////abs/meta.db", MetadataURL("sqlite", "sqlite:////abs/meta.db")),
        (
            "postgresql://u:p@h:5432/d",
            MetadataURL("postgresql", "postgresql+psycopg://u:p@h:5432/d"),
        ),
        ("postgres://h/d", MetadataURL("postgresql", "postgresql+psycopg://h/d")),
        (
            "postgresql+psycopg://h:6543/d",
            MetadataURL("postgresql", "postgresql+psycopg://h:6543/d"),
        ),
        (
            "postgresql:///d?host=/run/postgresql",
            MetadataURL("postgresql", "postgresql+psycopg:///d?host=/run/postgresql"),
        ),
    ],
)
def test_parse_metadata_url(raw: str, expected: MetadataURL) -> None:
    assert parse_metadata_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("inline", BusURL("inline")),
        ("kafka://localhost:9092", BusURL("kafka", bootstrap="localhost:9092")),
        ("kafka://a:9092,b:9093,c:9094", BusURL("kafka", bootstrap="a:9092,b:9093,c:9094")),
    ],
)
def test_parse_bus_url(raw: str, expected: BusURL) -> None:
    assert parse_bus_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("memory", CacheURL("memory")),
        ("redis://localhost:6379/0", CacheURL("redis", "redis://localhost:6379/0")),
        ("rediss://:pw@cache:6380/1", CacheURL("redis", "rediss://:pw@cache:6380/1")),
    ],
)
def test_parse_cache_url(raw: str, expected: CacheURL) -> None:
    assert parse_cache_url(raw) == expected


# --- the CLI reports a bad setting in one line ----------------------------------------------


def test_cli_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["migrate"], env={"SENDFLOWR_BUS_URL": "kafka://nohostport", "COLUMNS": "80"}
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: SENDFLOWR_BUS_URL (bus_url): 'nohostport' is not host:port"
    ]
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []  # nothing was opened or created


def test_cli_missing_config_file_exits_2() -> None:
    # relative to the test's working directory (tmp_path): short enough not to wrap
    result = CliRunner().invoke(
        app, ["migrate"], env={"SENDFLOWR_CONFIG": "missing.toml", "COLUMNS": "80"}
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == ["error: SENDFLOWR_CONFIG: no such file 'missing.toml'"]


def test_cli_long_setting_error_stays_on_one_line() -> None:
    result = CliRunner().invoke(
        app, ["migrate"], env={"SENDFLOWR_EVENT_STORE_URL": "mysql://x", "COLUMNS": "80"}
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: SENDFLOWR_EVENT_STORE_URL (event_store_url): unknown scheme 'mysql'; "
        "expected chdb://DIR or clickhouse://user:pass@host:8123/db"
    ]


def test_identity_guardrail_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDFLOWR_IDENTITY_BLOCKED_PATTERNS", '["(unclosed"]')
    with pytest.raises(SettingsError, match="SENDFLOWR_IDENTITY_BLOCKED_PATTERNS"):
        load_settings()
    monkeypatch.setenv("SENDFLOWR_IDENTITY_BLOCKED_PATTERNS", '["^x$"]')
    monkeypatch.setenv("SENDFLOWR_IDENTITY_LIMITS", '{"email": 0}')
    with pytest.raises(SettingsError, match="SENDFLOWR_IDENTITY_LIMITS"):
        load_settings()
    monkeypatch.setenv("SENDFLOWR_IDENTITY_LIMITS", '{"email": 3}')
    assert load_settings().identity_limits == {"email": 3}


def test_explanation_retention_is_zero_or_long_enough_for_the_confidence_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().explanation_retention_days == 400
    monkeypatch.setenv("SENDFLOWR_EXPLANATION_RETENTION_DAYS", "30")
    with pytest.raises(SettingsError, match=r"SENDFLOWR_EXPLANATION_RETENTION_DAYS.*too short"):
        load_settings()
    monkeypatch.setenv("SENDFLOWR_EXPLANATION_RETENTION_DAYS", "-1")
    with pytest.raises(SettingsError, match="SENDFLOWR_EXPLANATION_RETENTION_DAYS"):
        load_settings()
    for ok in ("0", "200", "3650"):
        monkeypatch.setenv("SENDFLOWR_EXPLANATION_RETENTION_DAYS", ok)
        assert load_settings().explanation_retention_days == int(ok)
