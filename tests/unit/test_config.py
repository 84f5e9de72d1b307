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


def test_extraction_is_off_by_default_and_validated():
    ext = load(None).extraction
    assert not ext.enabled and ext.model is None
    with pytest.raises(InvalidArgument) as ei:
        load(
            None,
            extraction={
                "model": "  ",
                "base_url": "ftp://models",
                "api_key_env": "A",
                "api_key_file": "/k",
                "max_retries": 11,
                "timeout_seconds": 0,
                "max_concurrent": 0,
            },
        )
    msg = ei.value.message
    for part in (
        "extraction.model",
        "extraction.base_url",
        "extraction.max_retries",
        "extraction.timeout_seconds",
        "extraction.max_concurrent",
    ):
        assert part in msg, msg
    with pytest.raises(InvalidArgument, match="only one of api_key_env and api_key_file"):
        load(None, extraction={"model": "m", "api_key_env": "A", "api_key_file": "/k"})
    ok = load(None, extraction={"model": " llama3.1 ", "base_url": "http://127.0.0.1:11434"}).extraction
    assert ok.enabled and ok.model == "llama3.1"


def test_extraction_key_is_checked_before_start(tmp_path, monkeypatch):
    monkeypatch.delenv("EDB_UNIT_LLM_KEY", raising=False)
    s = load(None, data_dir=str(tmp_path / "d"), extraction={"model": "m", "api_key_env": "EDB_UNIT_LLM_KEY"})
    assert any(p.startswith("extraction:") and "EDB_UNIT_LLM_KEY" in p for p in check(s))
    monkeypatch.setenv("EDB_UNIT_LLM_KEY", "sk-unit")
    assert check(s) == []
    missing = load(None, data_dir=str(tmp_path / "d"), extraction={"model": "m", "api_key_file": str(tmp_path / "no")})
    assert any("api_key_file" in p for p in check(missing))
    # Disabled extraction is not checked, whatever its other settings.
    off = load(None, data_dir=str(tmp_path / "d"), extraction={"api_key_env": "EDB_UNIT_UNSET"})
    assert check(off) == []


def test_extraction_settings_without_a_model_warn(tmp_path):
    from engramdb.server.lifecycle import preflight

    s = load(None, data_dir=str(tmp_path / "d"), extraction={"base_url": "http://127.0.0.1:11434"})
    _, warnings = preflight(s)
    assert any("extraction.model is not set" in w for w in warnings)
    _, warnings = preflight(load(None, data_dir=str(tmp_path / "d")))
    assert not any("extraction" in w for w in warnings)


def test_service_builds_and_closes_the_extractor(db, monkeypatch):
    from engramdb.extract import ChatExtractor
    from engramdb.service import Service

    assert Service(db, load(None)).extractor is None
    settings = load(None, extraction={"model": "m", "base_url": "http://127.0.0.1:9", "timeout_seconds": 5})
    svc = Service(db, settings)
    assert isinstance(svc.extractor, ChatExtractor) and svc.extractor.model == "m"
    closed = []
    monkeypatch.setattr(svc.extractor, "close", lambda: closed.append(True))
    svc.close()
    svc.close()  # idempotent
    assert closed == [True] and svc.extractor is None
    # An extractor given by the application is the application's to close.
    mine = ChatExtractor("http://127.0.0.1:9", "m")
    Service(db, load(None), extractor=mine).close()
    assert mine._http._client.is_closed is False
    mine.close()
    with pytest.raises(InvalidArgument) as ei:
        Service(db, load(None, extraction={"model": "m", "api_key_env": "EDB_UNIT_SURELY_UNSET"}))
    assert ei.value.code == "invalid_config" and ei.value.message.startswith("extraction:")
