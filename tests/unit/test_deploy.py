"""The Kubernetes example is valid against the Kubernetes schemas (offline)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFEST = Path(__file__).parents[2] / "deploy" / "kubernetes.yaml"


@pytest.mark.parametrize("document", list(yaml.safe_load_all(MANIFEST.read_text())),
                         ids=lambda d: d["kind"])
def test_manifest_is_valid(document: dict[str, object]) -> None:
    kubernetes_validate.validate(document, "1.30", strict=True)


def test_the_pod_waits_for_the_drain() -> None:
    [deployment] = [d for d in yaml.safe_load_all(MANIFEST.read_text())
                    if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["terminationGracePeriodSeconds"] >= 30 + 10  # drain_s + drain_timeout_s
