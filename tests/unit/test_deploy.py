"""The Kubernetes examples are valid against the Kubernetes schemas (offline)."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFEST = Path(__file__).parents[2] / "deploy" / "kubernetes.yaml"
CLUSTER_MANIFEST = MANIFEST.with_name("kubernetes-cluster.yaml")
DOCUMENTS = [(path.name, document) for path in (MANIFEST, CLUSTER_MANIFEST)
             for document in yaml.safe_load_all(path.read_text())]


@pytest.mark.parametrize(("manifest", "document"), DOCUMENTS,
                         ids=[f"{name}:{d['kind']}:{d['metadata']['name']}"
                              for name, d in DOCUMENTS])
def test_manifest_is_valid(manifest: str, document: dict[str, object]) -> None:
    kubernetes_validate.validate(document, "1.30", strict=True)


def test_the_pod_waits_for_the_drain() -> None:
    [deployment] = [d for d in yaml.safe_load_all(MANIFEST.read_text())
                    if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["terminationGracePeriodSeconds"] >= 30 + 10  # drain_s + drain_timeout_s


def _cluster(kind: str, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        d for d in yaml.safe_load_all(CLUSTER_MANIFEST.read_text())
        if d["kind"] == kind and d["metadata"]["name"] == name]
    [document] = found
    return document


def test_cluster_pods_keep_their_instance_id_and_outbox_across_restarts() -> None:
    bridges = _cluster("StatefulSet", "callbridge")
    assert bridges["spec"]["replicas"] >= 2
    pod = bridges["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CALLBRIDGE_CLUSTER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name"
    [mount] = container["volumeMounts"]
    assert env["CALLBRIDGE_OUTBOX_PATH"]["value"].startswith(mount["mountPath"] + "/")
    assert [t["metadata"]["name"] for t in bridges["spec"]["volumeClaimTemplates"]] == [
        mount["name"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 30 + 10


def test_cluster_redis_persists_and_never_evicts() -> None:
    redis = _cluster("StatefulSet", "callbridge-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    service = _cluster("Service", "callbridge-redis")
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
