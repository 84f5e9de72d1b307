from __future__ import annotations

import pytest

from engramdb import InvalidArgument
from engramdb.config import check, load


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: 9000\n  grpc_port: 9001\nstorage:\n  sync_writes: false\n")
    assert load(f).server.port == 9000
    monkeypatch.setenv("ENGRAMDB_SERVER__PORT", "9100")
    s = load(f)
    assert s.server.port == 9100 and s.server.grpc_port == 9001 and s.storage.sync_writes is False
    assert load(f, server={"port": 9200}).server.port == 9200


def test_every_problem_reported_at_once(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: 70000\n  bogus: 1\nstorage:\n  sync_writes: maybe\n  write_buffer_mb: 0\n")
    with pytest.raises(InvalidArgument) as ei:
        load(f)
    msg = ei.value.message
    assert ei.value.code == "invalid_config"
    for part in ("server.port", "server.bogus", "storage.sync_writes", "storage.write_buffer_mb"):
        assert part in msg
    assert msg.startswith("4 configuration problem(s)")


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("server: [unclosed\n")
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        load(f)
    with pytest.raises(InvalidArgument, match="cannot read config file"):
        load(tmp_path / "missing.yaml")


def test_same_ports_rejected():
    with pytest.raises(InvalidArgument, match="must differ"):
        load(None, server={"port": 7000, "grpc_port": 7000})


def test_check_finds_filesystem_problems(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = load(None, data_dir=str(blocker), server={"tls": {"cert_file": str(tmp_path / "nope.pem")}})
    problems = check(s)
    assert any("data_dir" in p for p in problems)
    assert any("cert_file and key_file" in p for p in problems)
    assert any("nope.pem" in p for p in problems)


def test_auth_required_on_non_loopback():
    assert not load(None).server.auth_required()
    assert load(None, server={"host": "0.0.0.0"}).server.auth_required()
    assert load(None, server={"host": "0.0.0.0", "auth": "disabled"}).server.auth_required() is False
