from __future__ import annotations

import os

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


# ------------------------------------------------- every problem, at once (issue 14)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.upper().startswith("ENGRAMDB_")]:
        monkeypatch.delenv(k)


def test_data_dir_that_cannot_be_created_is_a_problem(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # Under a regular file: `serve` would fail in mkdir, so the check must say so first.
    for d in (blocker / "x", blocker / "x" / "y"):
        problems = check(load(None, data_dir=str(d)))
        assert any(p.startswith("data_dir:") and f"{blocker} is a file, not a directory" in p for p in problems), (
            problems
        )
    from engramdb.config import check_data_dir

    assert check_data_dir(blocker) == [f"data_dir: {blocker} exists and is not a directory"]
    assert check_data_dir(tmp_path / "new" / "deeper") == []  # created on start: fine
    assert check_data_dir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_data_dir_under_a_read_only_directory_is_a_problem(tmp_path):
    from engramdb.config import check_data_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert check_data_dir(ro / "d") == [f"data_dir: {ro / 'd'} cannot be created: {ro} is not writable"]
        assert "not writable" in check_data_dir(ro)[0]
    finally:
        ro.chmod(0o700)


def test_unknown_env_names_are_problems_with_a_suggestion(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ENGRAMDB_STORGE__SYNC_WRITES", "false")
    monkeypatch.setenv("engramdb_server__prot", "9000")  # names are case-insensitive, as pydantic-settings reads them
    monkeypatch.setenv("ENGRAMDB_ADMN_KEY", "x" * 32)
    monkeypatch.setenv("ENGRAMDB_COMPLETELY_ELSE", "1")
    with pytest.raises(InvalidArgument) as ei:
        load(None)
    msg = ei.value.message
    assert ei.value.code == "invalid_config" and msg.startswith("4 configuration problem(s)"), msg
    assert "ENGRAMDB_STORGE__SYNC_WRITES: not an EngramDB setting (did you mean ENGRAMDB_STORAGE__SYNC_WRITES?)" in msg
    assert "engramdb_server__prot: not an EngramDB setting (did you mean ENGRAMDB_SERVER__PORT?)" in msg
    assert "(did you mean ENGRAMDB_ADMIN_KEY?)" in msg
    assert "ENGRAMDB_COMPLETELY_ELSE: not an EngramDB setting;" in msg
    # Reported once, by name, not a second time by the schema as an unknown key of `server`.
    assert "server.prot" not in msg


def test_known_env_names_are_accepted(monkeypatch, tmp_path):
    from engramdb.config import NON_SETTING_ENV

    _clean_env(monkeypatch)
    for name in NON_SETTING_ENV:
        monkeypatch.setenv(name, "x" * 32)
    monkeypatch.setenv("ENGRAMDB_STORAGE__SYNC_WRITES", "false")
    monkeypatch.setenv("ENGRAMDB_SERVER__TLS__CLIENT_CA_FILE", str(tmp_path / "ca.pem"))
    # A mapping setting takes any key: the operator's embedder profiles.
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__MINE__PROVIDER", "openai")
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__MINE__MODEL", "text-embedding-3-small")
    # A variable named by an api_key_env setting belongs to the operator, whatever its name.
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__MINE__API_KEY_ENV", "ENGRAMDB_OPENAI_KEY")
    monkeypatch.setenv("ENGRAMDB_OPENAI_KEY", "sk-x")
    s = load(None)
    assert s.storage.sync_writes is False and s.server.tls.client_ca_file == tmp_path / "ca.pem"
    assert s.embedders["mine"].model == "text-embedding-3-small"
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__MINE__BASE_URLL", "http://x")
    with pytest.raises(InvalidArgument, match=r"did you mean ENGRAMDB_EMBEDDERS__MINE__BASE_URL\?"):
        load(None)
    # A misspelled name alone is one problem, not also an empty profile missing its provider.
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__OTHER__PROVIDR", "local")
    with pytest.raises(InvalidArgument) as ei:
        load(None)
    assert ei.value.message.startswith("2 configuration problem(s)"), ei.value.message


def test_unparsable_env_value_is_a_problem_not_a_crash(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ENGRAMDB_SERVER", "{not json")
    monkeypatch.setenv("ENGRAMDB_STORAGE__WRITE_BUFFER_MB", "0")
    with pytest.raises(InvalidArgument) as ei:  # was pydantic-settings' SettingsError, a traceback
        load(None, data_dir=str(tmp_path / "d"))
    msg = ei.value.message
    assert msg.startswith("2 configuration problem(s)"), msg
    assert "ENGRAMDB_SERVER or ENGRAMDB_SERVER__*: cannot parse the value" in msg
    assert "storage.write_buffer_mb:" in msg  # the other variables are still read and checked


def test_misspelled_file_key_gets_a_suggestion(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("storage:\n  sync_write: false\nserver:\n  prot: 1\n  zzz: 2\n")
    with pytest.raises(InvalidArgument) as ei:
        load(f)
    msg = ei.value.message
    assert "storage.sync_write: not an EngramDB setting (did you mean storage.sync_writes?)" in msg
    assert "server.prot: not an EngramDB setting (did you mean server.port?)" in msg
    assert "server.zzz: not an EngramDB setting" in msg and "server.zzz: not an EngramDB setting (" not in msg


def test_dev_insecure_was_removed_with_a_clear_message(monkeypatch, tmp_path):
    from engramdb.config import TLSSettings

    _clean_env(monkeypatch)
    assert not hasattr(TLSSettings(), "dev_insecure")
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  tls:\n    dev_insecure: true\n")
    with pytest.raises(InvalidArgument) as ei:
        load(f)
    msg = ei.value.message
    assert msg.startswith("1 configuration problem(s)") and "server.tls.dev_insecure was removed" in msg, msg
    assert "client_ca_file" in msg  # says what to do instead
    f.write_text("{}\n")
    monkeypatch.setenv("ENGRAMDB_SERVER__TLS__DEV_INSECURE", "true")
    with pytest.raises(InvalidArgument) as ei:
        load(f)
    assert ei.value.message.startswith("1 configuration problem(s)")
    assert "ENGRAMDB_SERVER__TLS__DEV_INSECURE: server.tls.dev_insecure was removed" in ei.value.message


def test_schema_errors_do_not_hide_filesystem_problems(monkeypatch, tmp_path):
    from engramdb.config import gather
    from engramdb.server.lifecycle import preflight

    _clean_env(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    f = tmp_path / "c.yaml"
    f.write_text(
        f"data_dir: {blocker / 'data'}\n"
        "server:\n  port: 70000\n"
        f"  admin_key_file: {tmp_path / 'no-admin-key'}\n"
        f"  tls:\n    cert_file: {tmp_path / 'no.crt'}\n    key_file: {tmp_path / 'no.key'}\n"
        "storage:\n  sync_writes: maybe\n"
    )
    monkeypatch.setenv("ENGRAMDB_STORGE__SYNC_WRITES", "false")
    got = gather(f)
    problems, _ = preflight(got.settings, invalid=got.invalid)
    everything = got.problems + problems
    for start in (
        "ENGRAMDB_STORGE__SYNC_WRITES:",
        "server.port:",
        "storage.sync_writes:",
        "data_dir:",
        "server.tls.cert_file:",
        "server.tls.key_file:",
        "server.admin_key_file:",
    ):
        assert any(p.startswith(start) for p in everything), (start, everything)
    # The settings that failed the schema are not checked again with their defaults in their place.
    assert got.invalid == {"server.port", "storage.sync_writes"}
    # An invalid data_dir is replaced by the default, ./engramdb-data, which is not checked in its place
    # (here it would be a problem: a file of that name is in the working directory).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engramdb-data").write_text("x")
    f.write_text("data_dir: [1, 2]\n")
    got = gather(f)
    assert got.invalid == {"data_dir"}
    assert not [p for p in preflight(got.settings, invalid=got.invalid)[0] if p.startswith("data_dir")]
    # Two errors in one embedder profile set aside that profile only, not its neighbours.
    f.write_text("embedders:\n  bad:\n    base_url: 5\n  good:\n    provider: local\n")
    got = gather(f)
    assert {n.split(".")[1] for n in got.invalid} == {"bad"} and "good" in got.settings.embedders, got


def test_config_check_reports_every_kind_of_problem_in_one_run(tmp_path):
    """The real command: a bad env name, a data_dir under a file and a schema error, all in one report."""
    import subprocess
    import sys

    from server_env import SRC, server_env

    blocker = tmp_path / "file"
    blocker.write_text("x")
    f = tmp_path / "c.yaml"
    f.write_text(f"data_dir: {blocker / 'data'}\nserver:\n  port: 70000\n  tls:\n    dev_insecure: true\n")
    env = server_env({"ENGRAMDB_STORGE__SYNC_WRITES": "false"})
    for command in (["config", "check"], ["serve"]):
        r = subprocess.run(
            [sys.executable, "-m", "engramdb.cli", *command, "--config", str(f)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(SRC.parent),
        )
        assert r.returncode == 1, (command, r.stdout, r.stderr)
        err = r.stderr
        assert "4 configuration problem(s):" in err, err
        assert (
            "ENGRAMDB_STORGE__SYNC_WRITES: not an EngramDB setting (did you mean ENGRAMDB_STORAGE__SYNC_WRITES?)" in err
        )
        assert f"data_dir: {blocker / 'data'} cannot be created: {blocker} is a file, not a directory" in err
        assert "server.port: Input should be less than or equal to 65535" in err
        assert "server.tls.dev_insecure was removed" in err
        assert "Traceback" not in err
        assert not (blocker.parent / "data").exists()


def test_test_only_env_names_are_accepted_but_the_server_warns(monkeypatch, tmp_path):
    from engramdb.server.lifecycle import preflight

    _clean_env(monkeypatch)
    monkeypatch.setenv("ENGRAMDB_DATA", str(tmp_path))  # the benchmarks' dataset folder, not data_dir
    s = load(None, data_dir=str(tmp_path / "d"))
    _, warnings = preflight(s)
    assert any(w.startswith("ENGRAMDB_DATA is") and "ENGRAMDB_DATA_DIR" in w for w in warnings), warnings


def test_grpc_max_workers_is_bounded(tmp_path):
    assert load(None, data_dir=str(tmp_path), server={"grpc_max_workers": 4}).server.grpc_max_workers == 4
    for bad in (-1, 1025):
        with pytest.raises(InvalidArgument, match="grpc_max_workers"):
            load(None, data_dir=str(tmp_path), server={"grpc_max_workers": bad})
