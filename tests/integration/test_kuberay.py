"""The KubeRay manifests in cluster/: valid against KubeRay's own CRD schemas (vendored in cluster/crds/, see
its README), accepted by a Kubernetes API (the kmock emulator), and wired the way the orchestrator needs: the
journal's URL from a Secret, Ray's TLS on every pod, a RayJob on the RayCluster that the CLI accepts.

The CRD's ``openAPIV3Schema`` is checked as ``kubectl apply --validate=strict`` does: every field must be
known (an object with ``properties`` accepts no other key unless it preserves unknown fields), types and
enums must match, required fields must be there."""

from __future__ import annotations

import copy
import functools
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client

from client.cli import _parser
from harness.k8s_emulator import KubeEmulator

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "cluster" / "crds"
MANIFESTS = {"RayCluster": REPO / "cluster" / "raycluster.yaml", "RayJob": REPO / "cluster" / "rayjob.yaml"}
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever Kubernetes would prune them (strict validation)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    closed = "properties" in schema and "additionalProperties" not in schema
    if closed and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        strict["type"] = [schema["type"], "null"]
    return strict


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2.3 MB of YAML
    crd = yaml.load((CRDS / f"ray.io_{PLURALS[kind]}.yaml").read_text(), Loader=loader)
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{api_version} is not served by the vendored CRD ({sorted(served)})"
    return jsonschema.Draft7Validator(_strict(served[version]["schema"]["openAPIV3Schema"]))


def problems(manifest: dict[str, Any]) -> list[str]:
    validator = crd_validator(manifest["kind"], manifest["apiVersion"])
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


def manifest(kind: str) -> dict[str, Any]:
    loaded = yaml.safe_load(MANIFESTS[kind].read_text())
    assert isinstance(loaded, dict) and loaded["kind"] == kind
    return loaded


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_each_manifest_is_valid_against_the_kuberay_crd(kind: str) -> None:
    assert problems(manifest(kind)) == []


def test_the_validation_catches_misspelt_fields_wrong_types_and_missing_ones() -> None:
    good = manifest("RayCluster")
    misspelt = copy.deepcopy(good)
    head = misspelt["spec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert any("rayStartParam" in p and "not allowed" in p for p in problems(misspelt))
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any(p.startswith("spec.workerGroupSpecs.0.replicas:") for p in problems(wrong_type))
    no_containers = copy.deepcopy(good)
    del no_containers["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert any("'containers' is a required property" in p for p in problems(no_containers))
    bad_mode = copy.deepcopy(good)
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    assert any(p.startswith("spec.authOptions.mode:") for p in problems(bad_mode))
    job = manifest("RayJob")
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    assert any("entryPoint" in p for p in problems(job))


def _pods(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    workers = [group["template"]["spec"] for group in spec["workerGroupSpecs"]]
    return [spec["headGroupSpec"]["template"]["spec"], *workers]


def test_every_pod_has_the_journal_from_a_secret_and_rays_tls() -> None:
    for pod in _pods(manifest("RayCluster")):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["ORCH_JOURNAL_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "deploy-orchestrator-journal",
            "key": "url",
        }
        assert "value" not in env["ORCH_JOURNAL_URL"]  # never the URL (and its password) in the manifest
        assert env["RAY_USE_TLS"]["value"] == "1"
        mounted = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert Path(env["RAY_TLS_SERVER_CERT"]["value"]).parent.as_posix() in mounted
        tls_init = [c for c in pod["initContainers"] if "scripts.tls cert" in " ".join(c["args"])]
        assert tls_init, "no init container makes the pod's certificate"
    head = manifest("RayCluster")["spec"]["headGroupSpec"]
    assert head["labels"] == {"deploy-orchestrator/platform-node": "true"}


def test_the_rayjob_runs_a_deploy_the_cli_accepts_on_the_raycluster() -> None:
    cluster, job = manifest("RayCluster"), manifest("RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "/app/orchestrator.py"]
    args = _parser().parse_args(words[2:])
    assert args.cmd == "deploy" and args.service == "web" and args.version == "2.4.0"
    assert args.set == ["stepDuration=30s", "initialTrafficPercentage=20"]


@pytest.fixture(scope="module")
def kuberay_api() -> Iterator[client.CustomObjectsApi]:
    resources = {
        f"ray.io/v1/{plural}": {"kind": kind, "namespaced": True, "singular": kind.lower()}
        for kind, plural in PLURALS.items()
    }
    with KubeEmulator(gateway_api=False, resources=resources) as emulator:
        api = emulator.api_client()
        emulator.add_namespace("orchestrator")
        yield client.CustomObjectsApi(api)
        api.close()


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_each_manifest_applies_to_a_kubernetes_api(kind: str, kuberay_api: client.CustomObjectsApi) -> None:
    body = manifest(kind)
    plural, name = PLURALS[kind], body["metadata"]["name"]
    where = ("ray.io", "v1", "orchestrator", plural)
    created = _json(kuberay_api.create_namespaced_custom_object(*where, body, _preload_content=False))
    assert created["metadata"]["name"] == name
    read = _json(kuberay_api.get_namespaced_custom_object(*where, name, _preload_content=False))
    assert read["spec"] == body["spec"] and read["kind"] == kind
    listed = _json(kuberay_api.list_namespaced_custom_object(*where, _preload_content=False))
    assert [item["metadata"]["name"] for item in listed["items"]] == [name]
    kuberay_api.delete_namespaced_custom_object(*where, name)


def _json(response: Any) -> Any:
    """The body of a raw response (the client does not parse the emulator's custom objects itself)."""
    assert response.status in (200, 201), response.status
    return json.loads(response.data)
