"""Operations: /metrics, logging, SIGHUP reload and SIGTERM during ingest, on a real server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import Server, wait_for


def families(
    server: Server, token: str | None = None
) -> dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """/metrics parsed by prometheus-client's parser: family -> (sample name, labels) -> value."""
    r = server.request("GET", "/metrics", token=token)
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        out[fam.name] = {(s.name, frozenset(s.labels.items())): s.value for s in fam.samples}
    return out


def value(fams: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return fams[family][(sample or family, frozenset(labels.items()))]


def test_metrics_parse_and_count_what_happened(server: Server) -> None:
    assert server.write("iot", "m,dev=a v=1 1\nm,dev=b v=2 2\nbad line\n", precision="ns").status == 400
    assert server.write("iot", "m,dev=c v=3 3", precision="ns").status == 204
    server.query("iot", "SELECT count(*) FROM m")
    fams = families(server)
    assert value(fams, "appliance_lines_ingested", "appliance_lines_ingested_total", protocol="http") == 3
    assert value(fams, "appliance_lines_rejected", "appliance_lines_rejected_total", protocol="http") == 1
    assert value(fams, "appliance_bytes_ingested", "appliance_bytes_ingested_total", protocol="http") > 40
    assert value(fams, "appliance_wal_commits", "appliance_wal_commits_total") >= 2
    assert value(fams, "appliance_wal_commit_seconds", "appliance_wal_commit_seconds_count") >= 2
    assert value(fams, "appliance_queries", "appliance_queries_total", outcome="ok") == 1
    assert value(fams, "appliance_buffer_bytes") > 0
    assert value(fams, "appliance_process_resident_memory_bytes") > 20e6
    build = [labels for (_, labels) in fams["appliance_build_info"]]
    assert dict(build[0])["version"]
    assert value(fams, "appliance_component_status", component="wal") == 0
    # No label takes its values from input: only protocols, outcomes, components, triggers.
    for fam in fams.values():
        for _, labels in fam:
            assert {k for k, _ in labels} <= {
                "protocol",
                "outcome",
                "component",
                "trigger",
                "subscription",
                "le",
                "version",
                "python",
            }


def test_metrics_need_a_token_unless_disabled(tmp_path: Path) -> None:
    server = Server(tmp_path / "a", auth=True).start()
    assert server.request("GET", "/metrics", token="").status == 401
    assert "appliance_build_info" in families(server)
    server.stop()
    open_metrics = Server(tmp_path / "b", auth=True, args=["--disable-authz", "metrics"]).start()
    assert open_metrics.request("GET", "/metrics", token="").status == 200
    assert open_metrics.request("GET", "/api/v3/configure/database", token="").status == 401


def test_json_logs_carry_level_component_and_no_secrets(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", auth=True, args=["--log-format", "json"]).start()
    token = server.token
    assert token
    server.request("GET", "/api/v3/configure/database", token=token + "x")  # a bad token, logged or not
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "component", "message"} <= set(doc) for doc in lines)
    assert any(doc["component"] == "appliance.server" for doc in lines)
    assert token not in server.log() and token[:20] not in server.log()


def test_journald_lines_carry_syslog_priorities(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"JOURNAL_STREAM": "8:1234"}).start()
    server.stop()
    lines = [line for line in server.log().splitlines() if line.startswith("<")]
    assert any(line.startswith("<6>INFO appliance.server:") for line in lines)


def test_sighup_reloads_what_can_change_and_says_what_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[query]\ntimeout = "30s"\n')
    server = Server(tmp_path / "data", args=["--config", str(config)]).start()
    config.write_text('[server]\nlog_filter = "debug"\n[query]\ntimeout = "5s"\n[catalog]\nmax_tables = 10\n')
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in server.log(), 10, "the reload")
    line = next(x for x in server.log().splitlines() if "reloaded configuration" in x)
    assert (
        "server.log_filter" in line
        and "query.timeout" in line
        and "restart to apply catalog.max_tables" in line
    )
    config.write_text("[query]\ntimeout = \n")  # broken: the running configuration stays
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.log(), 10, "the failed reload")
    assert server.request("GET", "/health").status == 200
    assert server.stop() == 0


def test_sigterm_during_ingest_exits_0_and_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    acked: list[int] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        i = 0
        while not stop.is_set():
            body = "\n".join(
                f"m,w=w{k} seq={i * 100 + j}i {1_764_000_000_000_000_000 + i * 100 + j}" for j in range(100)
            )
            try:
                r = server.request(
                    "POST", "/api/v3/write_lp", {"db": "iot", "precision": "ns"}, body, timeout=10
                )
            except OSError:
                return
            if r.status == 204:
                acked.append(k * 10**9 + i)
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 30, what="ingest under way")
    assert server.proc is not None
    started = time.monotonic()
    code = server.stop()
    stop.set()
    for t in threads:
        t.join()
    assert code == 0 and time.monotonic() - started < 30
    assert acked, "no write was acknowledged before SIGTERM"
    assert "final persist" not in server.log()  # the buffer persisted cleanly
    server.start()
    for k in range(3):
        batches = {b % 10**9 for b in acked if b // 10**9 == k}
        seqs = [r["seq"] for r in server.query("iot", f"SELECT seq FROM m WHERE w = 'w{k}'")]
        stored = set(seqs)
        whole = {i for i in batches if all(i * 100 + j in stored for j in range(100))}
        assert whole == batches, f"writer {k}: acknowledged batches missing after restart: {batches - whole}"
        assert len(seqs) == len(stored)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_health_reports_replay_time_and_components(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    server.write("iot", "m v=1 1", precision="ns")
    server.kill()
    server.start()
    health = server.request("GET", "/health").json()
    assert set(health["components"]) >= {"http", "wal", "persist", "engine"}
    assert health["components"]["wal"]["replay_seconds"] >= 0
    assert "replayed WAL entries=1" in server.log()


def test_sighup_never_applies_a_setting_that_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[auth]\nenabled = true\n")
    server = Server(tmp_path / "data", auth=True, args=["--config", str(config)]).start()
    config.write_text("[auth]\nenabled = false\n")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in server.log(), 10, "the reload")
    assert "restart to apply auth.enabled" in server.log()
    assert server.request("GET", "/api/v3/configure/database", token="").status == 401
