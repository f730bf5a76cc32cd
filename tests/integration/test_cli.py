"""The command line against the embedded backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sendflowr.cli import app


@pytest.fixture
def env(tmp_path: Path, chdb_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {
        "SENDFLOWR_EVENT_STORE_URL": chdb_url,
        "SENDFLOWR_METADATA_URL": f"sqlite:///{tmp_path}/meta.db",
        "SENDFLOWR_DATA_DIR": str(tmp_path / "var"),
        "COLUMNS": "200",
    }


def test_migrate_twice_then_status(env: dict[str, str]) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "0001_email_events (now)" in first.output
    assert "0002_timing_explanations (now)" in first.output
    assert "decision explanations are kept 400 days" in first.output
    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0
    assert "(now)" not in second.output
    status = runner.invoke(app, ["migrate", "--status"], env=env)
    assert "0001_email_events" in status.output
    assert "pending" not in status.output
    kept = runner.invoke(app, ["migrate"], env={**env, "SENDFLOWR_EXPLANATION_RETENTION_DAYS": "0"})
    assert kept.exit_code == 0, kept.output
    assert "decision explanations are kept for ever" in kept.output
    short = runner.invoke(
        app, ["migrate"], env={**env, "SENDFLOWR_EXPLANATION_RETENTION_DAYS": "7"}
    )
    assert short.exit_code == 2
    assert "SENDFLOWR_EXPLANATION_RETENTION_DAYS" in short.output


def test_simulate_writes_and_loads(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--profiles",
            "40",
            "--days",
            "14",
            "--tenant",
            "clitest",
            "--out",
            str(out),
            "--load",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    lines = (out / "events.jsonl").read_text().splitlines()
    assert lines
    truth = json.loads((out / "truth.json").read_text())
    assert len(truth["profiles"]) == 40
    assert f"stored {len(lines):,} events" in result.output
    health = CliRunner().invoke(app, ["health"], env=env)
    assert health.exit_code == 0, health.output
    assert "chdb" in health.output


def test_simulate_rejects_bad_options(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["simulate", "--profiles", "0"], env=env)
    assert result.exit_code == 2
    assert "--profiles" in result.output
    bad_tenant = CliRunner().invoke(app, ["simulate", "--tenant", "Bad Tenant"], env=env)
    assert bad_tenant.exit_code == 2
    assert "--tenant" in bad_tenant.output


def test_scale_backend_not_built_yet_is_one_clear_line(env: dict[str, str]) -> None:
    env = {**env, "SENDFLOWR_BUS_URL": "kafka://127.0.0.1:9"}
    result = CliRunner().invoke(app, ["health"], env=env)
    assert result.exit_code == 2
    assert "SENDFLOWR_BUS_URL" in result.output
    assert "Traceback" not in result.output


def test_evaluate_on_a_csv(env: dict[str, str], tmp_path: Path) -> None:
    # Two users active daily at 09:00 and 14:00 Warsaw time for six weeks.
    lines = ["user_id,unix_ts"]
    start = 1_262_592_000  # 2010-01-04 08:00 UTC = 09:00 Warsaw
    for day in range(42):
        lines.append(f"a,{start + day * 86_400}")
        lines.append(f"b,{start + day * 86_400 + 5 * 3600}")
    data = tmp_path / "log.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--events", str(data), "--format", "csv", "--tz", "Europe/Warsaw",
         "--out", str(out)],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["policies"]) == {"random", "global_hour", "user_hour", "sendflowr"}
    assert report["policies"]["user_hour"]["ewh"] == 1.0  # each user's own hour is exact
    assert report["policies"]["sendflowr"]["ewh"] == 1.0  # so is a personal curve
    assert "brier" in report["policies"]["sendflowr"]["calibration"]
    assert "user_hour" in result.output


def test_evaluate_rejects_bad_arguments(env: dict[str, str], tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("user_id,unix_ts\na,notanumber\n")
    cases = [
        (["--events", str(tmp_path / "missing.csv"), "--tz", "UTC"], "--events"),
        (["--events", str(bad_csv), "--format", "csv", "--tz", "UTC"], "line 2"),
        (["--events", str(bad_csv), "--format", "csv", "--tz", "Mars/Base"], "--tz"),
        (["--events", str(bad_csv), "--format", "xml", "--tz", "UTC"], "--format"),
    ]
    for args, needle in cases:
        result = CliRunner().invoke(app, ["evaluate", *args], env=env)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--days", "30", "--years", "1"], "--days, --years"),
        (["--incremental", "--years", "1"], "--incremental"),
    ],
)
def test_backfill_refuses_contradictory_ranges(
    env: dict[str, str], args: list[str], named: str
) -> None:
    result = CliRunner().invoke(app, ["backfill", "--tenant", "brand", *args], env=env)
    assert result.exit_code == 2
    assert named in result.output
    assert "Traceback" not in result.output
