"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (bundled with
kubernetes-validate, so offline and strict: an unknown field fails), and the pieces fit together:
the server's configuration in the ConfigMap is valid and names files the pod mounts, the probes hit
/health and /ready on the REST port, the pod runs as the image's user with a read-only root, and
the StatefulSet stays at one replica (several nodes are the cluster overlay's, test_cluster_manifests.py).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is part of the dev extra")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
NOT_KUBERNETES = {"kustomization.yaml"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_KUBERNETES:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for f, d in manifests() if d["kind"] == kind and f != "maintenance-pod.yaml"]
    hits = [d for d in hits if name is None or d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} found"
    return hits[0]


def validate(doc: dict[str, Any]) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize(("file", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_matches_the_kubernetes_schema(file: str, doc: dict[str, Any]) -> None:
    validate(doc)  # raises SchemaNotFoundError for a kind the schemas do not know, ValidationError for the rest


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"].update(replica=1),  # a misspelled field
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(ports=[{"containerPort": "7878"}]),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
    ],
)
def test_the_validator_refuses_a_broken_manifest(break_it) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(find("StatefulSet"))
    break_it(doc)
    with pytest.raises(kv.ValidationError):
        validate(doc)


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(k["resources"])
    for name in listed:
        assert (K8S / name).is_file(), name
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_KUBERNETES - {"maintenance-pod.yaml"}
    assert listed == on_disk
    namespace = find("Namespace")["metadata"]["name"]
    assert k["namespace"] == namespace
    assert yaml.safe_load((K8S / "maintenance-pod.yaml").read_text())["metadata"]["namespace"] == namespace


def server_config() -> dict[str, Any]:
    return yaml.safe_load(find("ConfigMap", "engramdb-config")["data"]["engramdb.yaml"])


def test_configmap_holds_a_valid_server_configuration(tmp_path: Path) -> None:
    from engramdb import config

    path = tmp_path / "engramdb.yaml"
    path.write_text(find("ConfigMap", "engramdb-config")["data"]["engramdb.yaml"])
    got = config.gather(path)
    assert got.problems == []
    s = got.settings.server
    assert s.auth == "required" and s.host == "0.0.0.0"
    assert s.admin_key_file and s.metrics_key_file and s.tls.cert_file and s.tls.key_file


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "StatefulSet" else doc["spec"]


def mounted(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume that holds ``path`` in the first container of ``doc``'s pod."""
    spec = pod_spec(doc)
    best = max(
        (m for m in spec["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")),
        key=lambda m: len(m["mountPath"]),
        default=None,
    )
    assert best is not None, f"{path} is not on any mounted volume"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if best["name"] in volumes:
        return volumes[best["name"]]
    claims = {c["metadata"]["name"]: c for c in doc["spec"].get("volumeClaimTemplates", [])}
    return {"name": best["name"], "persistentVolumeClaim": claims[best["name"]]}


@pytest.mark.parametrize("file", ["statefulset.yaml", "maintenance-pod.yaml"])
def test_pod_mounts_every_file_the_configuration_names(file: str) -> None:
    doc = yaml.safe_load((K8S / file).read_text())
    cfg = server_config()
    assert "persistentVolumeClaim" in mounted(doc, cfg["data_dir"] + "/x")
    # Backups through the admin API go to a volume of their own, never inside the data directory.
    backups = mounted(doc, cfg["backup"]["dir"] + "/x")
    assert "persistentVolumeClaim" in backups and backups != mounted(doc, cfg["data_dir"] + "/x")
    # `engramdb backup restore` swaps the restored directory in by renames beside it: the data
    # directory must be inside the volume (a mount point cannot be renamed; the root is read-only).
    assert cfg["data_dir"] not in {m["mountPath"].rstrip("/") for m in pod_spec(doc)["containers"][0]["volumeMounts"]}
    spec = pod_spec(doc)
    args = spec["containers"][0].get("args") or []
    if "--config" in args:
        config_path = args[args.index("--config") + 1]
        assert mounted(doc, config_path)["configMap"]["name"] == "engramdb-config"
    for key_file in (cfg["server"]["admin_key_file"], cfg["server"]["metrics_key_file"]):
        if file == "maintenance-pod.yaml":  # restore and offline work need no key: the pod does not hold it
            assert all(v.get("secret", {}).get("secretName") != "engramdb-keys" for v in spec["volumes"])
        else:
            assert mounted(doc, key_file)["secret"]["secretName"] == "engramdb-keys"
    tls = cfg["server"]["tls"]
    for f in (tls["cert_file"], tls["key_file"]):
        # A kubernetes.io/tls Secret holds tls.crt and tls.key.
        assert mounted(doc, f)["secret"]["secretName"] == "engramdb-tls" and Path(f).name in ("tls.crt", "tls.key")


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(doc)["containers"][0]


def test_probes_use_health_and_ready_on_the_rest_port() -> None:
    sts = find("StatefulSet")
    c = container_of(sts)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cfg = server_config()["server"]
    assert ports == {"rest": cfg["port"], "grpc": cfg["grpc_port"]}
    scheme = "HTTPS" if cfg.get("tls") else "HTTP"
    expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "rest", scheme), probe
    # A start after a crash replays the WAL before /health answers: give it minutes, not seconds.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # SIGTERM: drain for shutdown_timeout_seconds, then up to 5 s more to close the database.
    assert pod_spec(sts)["terminationGracePeriodSeconds"] > cfg["shutdown_timeout_seconds"] + 5


def test_one_replica_without_the_cluster_overlay() -> None:
    sts = find("StatefulSet")
    assert sts["spec"]["replicas"] == 1
    assert "deploy/kubernetes-cluster" in (K8S / "statefulset.yaml").read_text()
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


@pytest.mark.parametrize("file", ["statefulset.yaml", "maintenance-pod.yaml"])
def test_pod_runs_as_the_image_user_without_privileges(file: str) -> None:
    doc = yaml.safe_load((K8S / file).read_text())
    spec = pod_spec(doc)
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert user is not None
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (int(user[1]), int(user[2]), int(user[2]))
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # With a read-only root, the data directory and /tmp are the writable places.
    assert "emptyDir" in mounted(doc, "/tmp/x")
    for m in c["volumeMounts"]:
        if m["mountPath"] not in ("/var/lib/engramdb", "/var/lib/engramdb-backups", "/tmp", "/backups"):
            assert m.get("readOnly") is True, m
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]


def test_services_budget_and_anti_affinity_select_the_pods() -> None:
    sts = find("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for svc in (find("Service", "engramdb"), headless):
        assert svc["spec"]["selector"].items() <= labels.items()
        names = {p["name"] for p in container_of(sts)["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} == names
    pdb = find("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    term = pod_spec(sts)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pod_spec(sts)["serviceAccountName"] == find("ServiceAccount")["metadata"]["name"]
