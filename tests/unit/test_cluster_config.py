"""The ``cluster`` settings (defaults, environment, YAML, flags, every problem) and a node's identity."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from engramdb import config
from engramdb.cli import _overrides, _parser, main
from engramdb.cluster.identity import NODE_ID_FILE, hlc_node, resolve_node_id
from engramdb.config import ClusterSettings, Settings, check, check_cluster, gather, load
from engramdb.errors import FailedPrecondition, InvalidArgument

CL = "ENGRAMDB_CLUSTER__"  # joined with a setting's name, so the docs test does not read the bad names below


# ------------------------------------------------------------------------------------ defaults
def test_defaults() -> None:
    c = Settings().cluster
    assert c == ClusterSettings()
    assert c.enabled is False and c.name == "engramdb" and c.node_id is None
    assert c.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert c.etcd_ca_file is None and c.etcd_cert_file is None and c.etcd_key_file is None
    assert (c.peer_host, c.peer_port, c.advertise) == ("127.0.0.1", 7880, None)
    assert (c.default_replication_factor, c.default_shards) == (3, 8)
    assert (c.write_consistency, c.read_consistency, c.search_consistency) == ("quorum", "quorum", "one")
    assert (c.lease_ttl_seconds, c.peer_timeout_seconds) == (10, 5.0)
    assert (c.breaker_failures, c.breaker_open_seconds, c.vnodes, c.gc_grace_seconds) == (5, 5.0, 256, 864000)
    assert c.advertised() == "127.0.0.1:7880"
    assert check_cluster(Settings()) == []


def test_shard_bound_is_the_rings() -> None:
    from engramdb.cluster.ring import MAX_SHARDS

    assert config.CLUSTER_MAX_SHARDS == MAX_SHARDS
    assert load(None, cluster={"default_shards": MAX_SHARDS}).cluster.default_shards == MAX_SHARDS


def test_advertised() -> None:
    assert ClusterSettings(advertise="db1.example.com:7000").advertised() == "db1.example.com:7000"
    assert ClusterSettings(peer_host="::1", peer_port=7001).advertised() == "[::1]:7001"
    assert ClusterSettings(peer_host="10.0.0.5").advertised() == "10.0.0.5:7880"
    with pytest.raises(InvalidArgument, match=r"cluster\.advertise"):
        ClusterSettings(peer_host="0.0.0.0").advertised()
    assert ClusterSettings(peer_host="0.0.0.0", advertise="10.0.0.5:7880").advertised() == "10.0.0.5:7880"


# ------------------------------------------------------------------------- environment, YAML, flags
def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CL + "ENABLED", "true")
    monkeypatch.setenv(CL + "ETCD_ENDPOINTS", "http://e1:2379, https://e2:2379")
    monkeypatch.setenv(CL + "NODE_ID", "n7")
    monkeypatch.setenv(CL + "PEER_PORT", "9000")
    monkeypatch.setenv(CL + "WRITE_CONSISTENCY", "all")
    monkeypatch.setenv(CL + "DEFAULT_SHARDS", "16")
    c = load(None).cluster
    assert c.enabled and c.etcd_endpoints == ["http://e1:2379", "https://e2:2379"]
    assert (c.node_id, c.peer_port, c.write_consistency, c.default_shards) == ("n7", 9000, "all", 16)
    monkeypatch.setenv(CL + "ETCD_ENDPOINTS", '["http://e3:2379"]')
    assert load(None).cluster.etcd_endpoints == ["http://e3:2379"]


def test_unknown_and_invalid_environment_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CL + "PEER_PROT", "9000")
    monkeypatch.setenv(CL + "DEFAULT_SHARDS", "6")
    problems = gather().problems
    assert any(p.startswith(CL + "PEER_PROT: not an EngramDB setting") and CL + "PEER_PORT" in p for p in problems)
    assert any(p.startswith("cluster.default_shards:") and "power of two" in p for p in problems)


def test_config_check_command_reports_cluster_problems(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CL + "ENABLED", "true")
    monkeypatch.setenv(CL + "PEER_PORT", "7878")  # server.port's default
    monkeypatch.setenv(CL + "ETCD_ENDPONTS", "http://e1:2379")
    assert main(["config", "check", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "cluster.peer_port: 7878 is also server.port" in err
    assert CL + "ETCD_ENDPONTS: not an EngramDB setting (did you mean " + CL + "ETCD_ENDPOINTS?)" in err


def test_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "cluster:\n  enabled: true\n  name: prod\n  node_id: n1\n"
        "  etcd_endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379]\n"
        "  advertise: 10.0.0.5:7880\n  peer_host: 0.0.0.0\n  default_shards: 4\n  vnodes: 64\n"
    )
    c = load(f).cluster
    assert (c.name, c.node_id, c.advertised(), c.default_shards, c.vnodes) == ("prod", "n1", "10.0.0.5:7880", 4, 64)
    assert c.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CL + "PEER_PORT", "9000")
    monkeypatch.setenv(CL + "NODE_ID", "from-env")
    args = _parser().parse_args(
        ["serve", "--cluster-etcd", "http://a:2379,http://b:2379", "--node-id", "n2", "--peer-port", "9100"]
    )
    c = load(None, **_overrides(args)).cluster
    assert c.enabled and c.etcd_endpoints == ["http://a:2379", "http://b:2379"]
    assert (c.node_id, c.peer_port) == ("n2", 9100)
    # Without the flags, nothing of the cluster section is overridden.
    assert _overrides(_parser().parse_args(["serve"]))["cluster"] is None


# ------------------------------------------------------------------------------- schema problems
@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("name", "a/b", "not a valid name"),
        ("name", "", "not a valid name"),
        ("node_id", "-n1", "not a valid name"),
        ("etcd_endpoints", [], "at least one"),
        ("etcd_endpoints", ["ftp://e:2379"], "not an etcd client URL"),
        ("etcd_endpoints", ["http://e"], "not an etcd client URL"),  # no port
        ("etcd_endpoints", ["http://e:2379/v3"], "not an etcd client URL"),
        ("etcd_endpoints", ["http://e:2379?x=1"], "not an etcd client URL"),
        ("etcd_endpoints", ["http://u:p@e:2379"], "not an etcd client URL"),
        ("etcd_endpoints", ["http://e:99999"], "not an etcd client URL"),
        ("etcd_endpoints", [f"http://e{i}:2379" for i in range(17)], "at most 16"),
        ("peer_host", "http://x", "not a host name"),
        ("peer_port", 0, "greater than or equal to 1"),
        ("peer_port", 65536, "less than or equal to 65535"),
        ("advertise", "10.0.0.5", "not host:port"),
        ("advertise", "10.0.0.5:0", "not host:port"),
        ("advertise", "::1:7880", "in brackets"),
        ("advertise", "0.0.0.0:7880", "wildcard"),
        ("advertise", "bad host:7880", "not a host name"),
        ("default_replication_factor", 0, "greater than or equal to 1"),
        ("default_replication_factor", 17, "less than or equal to 16"),
        ("default_shards", 0, "power of two"),
        ("default_shards", 3, "power of two"),
        ("default_shards", 8192, "power of two"),
        ("write_consistency", "two", "'one', 'quorum' or 'all'"),
        ("read_consistency", "QUORUM", "'one', 'quorum' or 'all'"),
        ("search_consistency", "any", "'one', 'quorum' or 'all'"),
        ("lease_ttl_seconds", 1, "greater than or equal to 2"),
        ("lease_ttl_seconds", 301, "less than or equal to 300"),
        ("peer_timeout_seconds", 0, "greater than 0"),
        ("peer_timeout_seconds", 601, "less than or equal to 600"),
        ("breaker_failures", 0, "greater than or equal to 1"),
        ("breaker_failures", 1001, "less than or equal to 1000"),
        ("breaker_open_seconds", 0, "greater than 0"),
        ("breaker_open_seconds", 3601, "less than or equal to 3600"),
        ("vnodes", 0, "greater than or equal to 1"),
        ("vnodes", 1025, "less than or equal to 1024"),
        ("gc_grace_seconds", -1, "greater than or equal to 0"),
        ("bogus", 1, "not an EngramDB setting"),
    ],
)
def test_invalid_values(setting: str, value: object, why: str) -> None:
    problems = gather(None, cluster={setting: value}).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"cluster.{setting}") and why in problems[0], problems


def test_direct_construction_checks_too() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ClusterSettings(default_shards=6)
    with pytest.raises(ValueError, match="not an etcd client URL"):
        ClusterSettings(etcd_endpoints=["etcd:2379"])
    with pytest.raises(ValueError, match="wildcard"):
        ClusterSettings(advertise="[::]:7880")


# ----------------------------------------------------------------------------- config.check problems
def _cluster_problems(s: Settings) -> list[str]:
    return [p for p in check(s) if "cluster" in p]


def test_enabled_without_the_etcd_client(monkeypatch: pytest.MonkeyPatch) -> None:
    real = config._missing_module
    monkeypatch.setattr(config, "_missing_module", lambda name: name == "etcd3gw" or real(name))
    problems = check_cluster(load(None, cluster={"enabled": True}))
    assert problems == [
        "cluster.enabled: the etcd client is not installed (etcd3gw); install it with "
        "pip install 'engramdb[cluster]' or set cluster.enabled: false"
    ]
    assert check_cluster(load(None)) == []  # disabled: not needed


@pytest.mark.parametrize(
    ("server", "other"),
    [
        ({"port": 7880}, "server.port"),
        ({"grpc_port": 7880}, "server.grpc_port"),
        ({"metrics_port": 7880}, "server.metrics_port"),
    ],
)
def test_peer_port_must_be_its_own(server: dict[str, int], other: str) -> None:
    s = load(None, server=server, cluster={"enabled": True})
    assert check_cluster(s) == [f"cluster.peer_port: 7880 is also {other}; the node-to-node service needs its own port"]
    assert check_cluster(load(None, server=server)) == []  # disabled: no peer port is opened


def test_peer_port_may_equal_a_disabled_grpc_port() -> None:
    assert check_cluster(load(None, server={"grpc_port": 7880, "grpc_enabled": False}, cluster={"enabled": True})) == []


def test_wildcard_peer_host_needs_advertise() -> None:
    problems = check_cluster(load(None, cluster={"enabled": True, "peer_host": "0.0.0.0"}))
    assert len(problems) == 1 and problems[0].startswith("cluster.advertise: cluster.peer_host 0.0.0.0")
    problems = check_cluster(load(None, cluster={"enabled": True, "peer_host": "::"}))
    assert len(problems) == 1 and problems[0].startswith("cluster.advertise:")
    assert check_cluster(load(None, cluster={"enabled": True, "peer_host": "::", "advertise": "[fd00::5]:7880"})) == []


def test_tls_needs_the_cluster_ca(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tls_certs import self_signed

    cert, key = self_signed(tmp_path)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    problems = check(load(None, data_dir=str(tmp_path / "d"), server={"tls": tls}, cluster={"enabled": True}))
    assert len(problems) == 1 and problems[0].startswith("server.tls.client_ca_file: cluster mode with TLS needs")
    with_ca = {**tls, "client_ca_file": str(cert)}
    assert check(load(None, data_dir=str(tmp_path / "d"), server={"tls": with_ca}, cluster={"enabled": True})) == []
    assert check(load(None, data_dir=str(tmp_path / "d"), server={"tls": tls})) == []  # no cluster: no peers


def test_etcd_client_tls_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    pair = "cluster: etcd_cert_file and etcd_key_file must be given together (etcd client TLS)"
    assert check_cluster(load(None, cluster={"etcd_cert_file": str(cert)})) == [pair]
    assert check_cluster(load(None, cluster={"etcd_key_file": str(key)})) == [pair]
    assert check_cluster(load(None, cluster={"etcd_cert_file": str(cert), "etcd_key_file": str(key)})) == []
    missing = tmp_path / "missing.pem"
    assert check_cluster(load(None, cluster={"etcd_ca_file": str(missing)})) == [
        f"cluster.etcd_ca_file: {missing} does not exist or is not a file"
    ]


def test_problems_come_together(tmp_path: Path) -> None:
    s = load(
        None,
        data_dir=str(tmp_path / "d"),
        server={"port": 7880},
        cluster={"enabled": True, "peer_host": "0.0.0.0", "etcd_key_file": str(tmp_path / "k")},
    )
    assert len(_cluster_problems(s)) == 4


# ------------------------------------------------------------------------------------ node identity
def test_node_id_generated_once_and_kept(tmp_path: Path) -> None:
    d = tmp_path / "data"
    first = resolve_node_id(d, None)
    assert first.startswith("n-") and len(first) == 10 and int(first[2:], 16) >= 0
    f = d / NODE_ID_FILE
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert f.read_text() == first + "\n"
    assert resolve_node_id(d, None) == first
    assert resolve_node_id(d, first) == first
    assert [p.name for p in d.iterdir()] == [NODE_ID_FILE]  # no temporary file left behind


def test_configured_node_id_is_stored(tmp_path: Path) -> None:
    assert resolve_node_id(tmp_path, "n1") == "n1"
    assert (tmp_path / NODE_ID_FILE).read_text().strip() == "n1"
    assert resolve_node_id(tmp_path, None) == "n1"


def test_a_data_directory_belongs_to_one_node(tmp_path: Path) -> None:
    resolve_node_id(tmp_path, "n1")
    with pytest.raises(FailedPrecondition) as ei:
        resolve_node_id(tmp_path, "n2")
    assert ei.value.code == "node_id_mismatch"
    assert "belongs to node 'n1'" in ei.value.message and "a data directory belongs to one node" in ei.value.message
    assert (tmp_path / NODE_ID_FILE).read_text().strip() == "n1"  # unchanged


def test_unreadable_node_id_file(tmp_path: Path) -> None:
    (tmp_path / NODE_ID_FILE).write_text("not/an id\n")
    with pytest.raises(FailedPrecondition) as ei:
        resolve_node_id(tmp_path, None)
    assert ei.value.code == "node_id_unreadable"
    (tmp_path / NODE_ID_FILE).write_text("n" * 5000)
    with pytest.raises(FailedPrecondition):
        resolve_node_id(tmp_path, None)


def test_invalid_configured_node_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        resolve_node_id(tmp_path, "a/b")
    assert not (tmp_path / NODE_ID_FILE).exists()


def test_a_racing_first_start_keeps_the_first_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engramdb.cluster import identity

    real_link = os.link

    def link_after_the_other(src: str, dst: str) -> None:
        (tmp_path / NODE_ID_FILE).write_text("n-other\n")  # another start won meanwhile
        real_link(src, dst)

    monkeypatch.setattr(identity.os, "link", link_after_the_other)
    assert resolve_node_id(tmp_path, None) == "n-other"


def test_hlc_node() -> None:
    assert hlc_node("n1") == hlc_node("n1")
    assert 1 <= hlc_node("n1") <= 65535
    values = {hlc_node(f"n{i}") for i in range(200)}
    assert len(values) >= 195 and min(values) >= 1 and max(values) <= 65535
    # Stable across processes and versions: the number is written into every version this node stamps.
    import xxhash

    assert hlc_node("n1") == xxhash.xxh3_64_intdigest(b"n1") % 65535 + 1
    with pytest.raises(InvalidArgument):
        hlc_node("")


def test_cli_module_runs(tmp_path: Path) -> None:
    """``python -m engramdb.cli`` is how the launcher starts nodes."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "engramdb.cli", "dev", "cluster", "--help"], capture_output=True)
    assert out.returncode == 0 and b"--base-port" in out.stdout
