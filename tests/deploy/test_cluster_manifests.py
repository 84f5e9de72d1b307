"""deploy/kubernetes-cluster: the cluster overlay on deploy/kubernetes, rendered and checked.

CI has no kustomize, so the overlay is rendered here by :func:`render` (resources, strategic-merge
patches for the fields the overlay patches, namespace, labels, images); where ``kubectl`` is
installed, its ``kubectl kustomize`` must give the same documents. Every rendered document
validates against the Kubernetes schemas (kubernetes-validate, strict), and the pieces fit: each
pod's environment plus the ConfigMap is a valid cluster node configuration naming the pod as node
id, advertising its DNS name under the peers Service and dialling the etcd members that exist; the
network policies open the node-to-node and etcd ports to the right pods only; the disruption
budgets let one pod of each go at a time, which QUORUM with RF 3 (and etcd's quorum) survive.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is part of the dev extra")

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "kubernetes-cluster"
Doc = dict[str, Any]
# Strategic merge: lists of these fields merge item by item on the key (Kubernetes' patchMergeKey);
# other lists are replaced. Enough for what the overlay patches.
MERGE_KEYS = {
    "containers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace"}


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out_list, added = list(base), []
        for item in patch:
            at = next((i for i, b in enumerate(out_list) if b.get(key) == item.get(key)), None)
            if at is None:
                added.append(item)
            else:
                out_list[at] = _merge(out_list[at], item, field)
        return added + out_list  # as kustomize orders them: the patch's new items first
    return patch


def render(directory: Path) -> list[Doc]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for p in k.get("patches", []):
        patch = yaml.safe_load((directory / p["path"]).read_text())
        hits = [
            i
            for i, d in enumerate(docs)
            if (d["kind"], d["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(hits) == 1, f"patch {p['path']} matches {len(hits)} resources"
        docs[hits[0]] = _merge(docs[hits[0]], patch)
    for d in docs:
        meta = d["metadata"]
        if "namespace" in k and d["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for group in k.get("labels", []):
            assert group.get("includeSelectors") is False and not group.get("includeTemplates")
            meta["labels"] = {**meta.get("labels", {}), **group["pairs"]}
        for image in k.get("images", []):
            if d["kind"] in ("StatefulSet", "Deployment"):
                for c in d["spec"]["template"]["spec"]["containers"]:
                    if c["image"].split(":")[0] == image["name"]:
                        c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


RENDERED = render(OVERLAY)


def find(kind: str, name: str) -> Doc:
    hits = [d for d in RENDERED if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} found"
    return hits[0]


def container(sts: Doc) -> Doc:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _key(d: Doc) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


@pytest.mark.parametrize("doc", RENDERED, ids=lambda d: "/".join(_key(d)))
def test_rendered_manifest_matches_the_kubernetes_schema(doc: Doc) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (CI renders with render())")
def test_render_is_what_kustomize_builds() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    built = {_key(d): d for d in yaml.safe_load_all(out.stdout) if d}
    assert built == {_key(d): d for d in RENDERED}


def test_the_render_applies_every_patch() -> None:
    """The renderer is not a no-op: the base's single node became a cluster."""
    sts = find("StatefulSet", "engramdb")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "engramdb-peers"
    pdb = find("PodDisruptionBudget", "engramdb")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert {d["metadata"].get("namespace") for d in RENDERED if d["kind"] != "Namespace"} == {"engramdb"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "engramdb" for d in RENDERED)
    broken = copy.deepcopy(sts)
    container(broken)["env"].append({"name": "X", "value": 1})  # a number where a string belongs
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def pod_env(sts: Doc, pod: str) -> dict[str, str]:
    """The container's environment in pod ``pod``, as the kubelet builds it (fieldRefs, $(VAR) expansion)."""
    fields = {"metadata.name": pod, "metadata.namespace": sts["metadata"]["namespace"]}
    env: dict[str, str] = {}
    for e in container(sts).get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = _expand(e["value"], env)
    return env


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_every_pod_gets_a_valid_node_configuration(
    ordinal: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engramdb import config

    sts, etcd = find("StatefulSet", "engramdb"), find("StatefulSet", "engramdb-etcd")
    ns, pod = sts["metadata"]["namespace"], f"engramdb-{ordinal}"
    env = pod_env(sts, pod)
    for name in list(os.environ):
        if name.upper().startswith("ENGRAMDB_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        assert "$(" not in value, (name, value)  # every reference resolves
        monkeypatch.setenv(name, value)
    cfg_file = tmp_path / "engramdb.yaml"
    cfg_file.write_text(find("ConfigMap", "engramdb-config")["data"]["engramdb.yaml"])
    got = config.gather(cfg_file)
    assert got.problems == []
    s = got.settings
    assert config.check_cluster(s) == []
    c = s.cluster
    assert c.enabled and c.node_id == pod
    # Other nodes dial the pod's own DNS name under the StatefulSet's governing (headless) Service.
    peers = find("Service", sts["spec"]["serviceName"])
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    assert c.advertise == f"{pod}.{peers['metadata']['name']}.{ns}.svc.cluster.local:{c.peer_port}"
    assert c.peer_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
    assert ports["peer"] == c.peer_port and [p["targetPort"] for p in peers["spec"]["ports"]] == ["peer"]
    # The endpoints are exactly the etcd StatefulSet's members.
    members = {
        f"http://engramdb-etcd-{i}.{etcd['spec']['serviceName']}.{ns}.svc.cluster.local:2379"
        for i in range(etcd["spec"]["replicas"])
    }
    assert set(c.etcd_endpoints) == members
    # TLS on: the cluster CA is mounted from the TLS Secret beside the certificate.
    tls = s.server.tls
    assert tls.cert_file and tls.key_file and tls.client_ca_file
    mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    for f in (tls.cert_file, tls.key_file, tls.client_ca_file):
        assert volumes[mounts[str(Path(f).parent)]]["secret"]["secretName"] == "engramdb-tls"
    assert s.cluster.default_replication_factor == sts["spec"]["replicas"] == 3


def test_probes_run_the_healthcheck_in_the_pod() -> None:
    """The REST port requires client certificates in a TLS cluster, which the kubelet's HTTPS probes lack."""
    c = container(find("StatefulSet", "engramdb"))
    copied = re.search(r"^COPY deploy/healthcheck.py (\S+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert copied is not None
    for probe, path in {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}.items():
        assert "httpGet" not in c[probe], probe
        assert c[probe]["exec"]["command"] == ["python", copied[1], path], probe
    assert "cluster" in re.search(r"^ARG EXTRAS=(\S+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)[1]


def test_one_node_down_is_allowed_and_no_more() -> None:
    sts = find("StatefulSet", "engramdb")
    rf = sts["spec"]["replicas"]
    quorum = rf // 2 + 1
    for name, members in (
        ("engramdb", rf),
        ("engramdb-etcd", find("StatefulSet", "engramdb-etcd")["spec"]["replicas"]),
    ):
        pdb = find("PodDisruptionBudget", name)["spec"]
        assert pdb["maxUnavailable"] == 1 <= members - (members // 2 + 1), name
        labels = find("StatefulSet", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        # One pod per machine, required: a machine's loss must be one replica's loss.
        spec = find("StatefulSet", name)["spec"]["template"]["spec"]
        anti = spec["affinity"]["podAntiAffinity"]
        assert "preferredDuringSchedulingIgnoredDuringExecution" not in anti
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    assert rf - 1 >= quorum
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def _peers_of(policy: Doc, port: int) -> list[Doc] | None:
    """The ``from`` of the rules that open ``port`` (None: open to all)."""
    froms: list[Doc] = []
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule.get("ports", [])):
            if "from" not in rule:
                return None
            froms.extend(rule["from"])
    return froms


def test_network_policies_keep_the_internal_ports_internal() -> None:
    sel = {"app.kubernetes.io/name": "engramdb"}
    etcd_sel = {"app.kubernetes.io/name": "engramdb-etcd"}
    db = find("NetworkPolicy", "engramdb")
    assert db["spec"]["podSelector"]["matchLabels"] == sel
    assert _peers_of(db, 7878) is None and _peers_of(db, 7879) is None  # the API, for clients
    assert _peers_of(db, 7880) == [{"podSelector": {"matchLabels": sel}}]
    etcd = find("NetworkPolicy", "engramdb-etcd")
    assert etcd["spec"]["podSelector"]["matchLabels"] == etcd_sel and etcd["spec"]["policyTypes"] == ["Ingress"]
    assert _peers_of(etcd, 2379) == [{"podSelector": {"matchLabels": sel}}, {"podSelector": {"matchLabels": etcd_sel}}]
    assert _peers_of(etcd, 2380) == [{"podSelector": {"matchLabels": etcd_sel}}]
    exposed = {p["containerPort"] for p in container(find("StatefulSet", "engramdb-etcd"))["ports"]}
    assert exposed == {2379, 2380}


def test_etcd_members() -> None:
    sts = find("StatefulSet", "engramdb-etcd")
    spec, c = sts["spec"], container(sts)
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    assert re.fullmatch(r"(gcr\.io/etcd-development/etcd|quay\.io/coreos/etcd):v3\.4\.\d+", c["image"]), c["image"]
    svc = find("Service", spec["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    ns = sts["metadata"]["namespace"]
    env = pod_env(sts, "engramdb-etcd-1")
    args = dict(a.removeprefix("--").split("=", 1) for a in (_expand(a, env) for a in c["args"]))
    assert args["name"] == "engramdb-etcd-1"
    # --initial-cluster names every member by its pod name and the governing Service's DNS.
    host = "{}.{}.{}.svc.cluster.local".format
    expected = ",".join(
        f"engramdb-etcd-{i}=http://{host(f'engramdb-etcd-{i}', svc['metadata']['name'], ns)}:2380" for i in range(3)
    )
    assert args["initial-cluster"] == expected
    assert args["initial-advertise-peer-urls"] == f"http://{host('engramdb-etcd-1', svc['metadata']['name'], ns)}:2380"
    assert args["advertise-client-urls"] == f"http://{host('engramdb-etcd-1', svc['metadata']['name'], ns)}:2379"
    (mount,) = c["volumeMounts"]
    assert args["data-dir"].startswith(mount["mountPath"] + "/")
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == [mount["name"]]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] == "client", probe
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_etcd_restore_pod_mounts_a_member_volume() -> None:
    """The runbook's pod for an etcd restore: valid, etcd's user, the claim of member 0 (sed'ed to N)."""
    doc = yaml.safe_load((OVERLAY / "etcd-restore-pod.yaml").read_text())
    kv.validate(doc, kv.latest_version(), strict=True)
    k = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert "etcd-restore-pod.yaml" not in k["resources"] and doc["metadata"]["namespace"] == k["namespace"]
    etcd = find("StatefulSet", "engramdb-etcd")
    (claim,) = [v for v in doc["spec"]["volumes"] if "persistentVolumeClaim" in v]
    (template,) = etcd["spec"]["volumeClaimTemplates"]
    assert claim["persistentVolumeClaim"]["claimName"] == f"{template['metadata']['name']}-engramdb-etcd-0"
    (mount,) = [m for m in container(etcd)["volumeMounts"] if m["name"] == template["metadata"]["name"]]
    assert [m["mountPath"] for m in doc["spec"]["containers"][0]["volumeMounts"] if m["name"] == claim["name"]] == [
        mount["mountPath"]
    ]
    etcd_sc, sc = etcd["spec"]["template"]["spec"]["securityContext"], doc["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["fsGroup"]) == (etcd_sc["runAsUser"], etcd_sc["fsGroup"])
