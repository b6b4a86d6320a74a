"""deploy/kubernetes: every manifest validates against the real Kubernetes JSON schemas
(kubernetes-validate bundles them, so this runs offline), strictly (unknown fields
fail), and each overlay's composed output is wired together and runs tokenlb correctly.

There is no kustomize binary here, so ``build`` composes an overlay the way kustomize
does for the few features these files use (resources, components, JSON 6902 patches,
images) and refuses any other kustomization field rather than ignore it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import REPO
from tokenlb_proxy.cli import build_parser
from tokenlb_proxy.config import compile_gateway, parse_document

ROOT = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
KUSTOMIZATIONS = sorted(ROOT.rglob("kustomization.yaml"))
MANIFESTS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "kustomization.yaml")
OVERLAYS = sorted(p.parent for p in (ROOT / "overlays").glob("*/kustomization.yaml"))
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "labels", "images"}
Obj = dict[str, Any]


def documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_does_reject_a_bad_manifest() -> None:
    [deployment] = documents(ROOT / "base" / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def kustomization(directory: Path) -> Obj:
    [doc] = documents(directory / "kustomization.yaml")
    unsupported = set(doc) - SUPPORTED_FIELDS
    assert not unsupported, f"{directory}: teach build() {unsupported} first"
    return doc


def build(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` yields, for the features used here."""
    spec = kustomization(directory)
    objects: list[Obj] = []
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        path = (directory / entry).resolve()
        objects += build(path) if path.is_dir() else documents(path)
    for patch in spec.get("patches", []):
        target = patch["target"]
        matches = [
            o
            for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        assert len(matches) == 1, target
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] in ("replace", "add"), op
            *parents, leaf = op["path"].strip("/").split("/")
            node = matches[0]
            for key in parents:
                node = node[key]
            assert op["op"] == "add" or leaf in node, op
            node[leaf] = op["value"]
    for label in spec.get("labels", []):
        assert set(label) == {"pairs"}, label  # no selectors or templates: metadata only
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for container in containers(objects):
            if container["image"] == image["name"]:
                container["image"] = f"{image['name']}:{image['newTag']}"
    return objects


def containers(objects: list[Obj]) -> list[Obj]:
    return [
        c
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_every_manifest_is_used_by_a_kustomization() -> None:
    used = {
        (k.parent / entry).resolve()
        for k in KUSTOMIZATIONS
        for entry in kustomization(k.parent).get("resources", [])
    }
    assert set(MANIFESTS) <= used


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_is_wired_together(overlay: Path) -> None:
    objects = build(overlay)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tokenlb" for o in objects)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), names
    deployment = find(objects, "Deployment", "tokenlb-proxy")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in (o for o in objects if o["kind"] == kind):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            pods = [
                o["spec"]["template"]["metadata"]["labels"]
                for o in objects
                if o["kind"] == "Deployment"
            ]
            assert any(selector.items() <= p.items() for p in pods), obj["metadata"]["name"]
    target = find(objects, "HorizontalPodAutoscaler", "tokenlb-proxy")["spec"]["scaleTargetRef"]
    assert find(objects, target["kind"], target["name"]) is deployment

    [proxy] = pod["spec"]["containers"]
    assert proxy["image"] == "tokenlb:0.1.0"
    args = build_parser().parse_args(proxy["args"])
    assert args.command == "proxy"
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert (args.port, args.admin_port) == (ports["http"], ports["admin"])
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/status", "port": "admin"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(args.admin_port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER

    env = {}
    for source in proxy["envFrom"]:
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in proxy["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        secret = find(objects, "Secret", ref["name"])
        env[variable["name"]] = secret["stringData"][ref["key"]]
    assert set(env) >= {"DECK_OPENAI_API_KEY", "TOKENLB_REDIS_URL"}
    # The admin port listens on the pod's address: the Admin API needs a token (a Secret).
    assert args.admin_host == "0.0.0.0"
    assert env["TOKENLB_ADMIN_TOKEN"]

    # The mounted kong.yaml is a valid config once the Secret's key is in the environment.
    [volume] = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    [mount] = [m for m in proxy["volumeMounts"] if m["name"] == volume["name"]]
    [item] = volume["configMap"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == args.config
    kong = find(objects, "ConfigMap", volume["configMap"]["name"])["data"][item["key"]]
    gateway = compile_gateway(parse_document(kong, env))
    assert len(gateway.balancers[0].targets) == 2

    redis_host = env["TOKENLB_REDIS_URL"].split("@")[-1].split("//")[-1].split(":")[0]
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    if overlay.name == "with-redis":
        assert redis_host in services
    else:
        assert redis_host not in services


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_aggregators_run_with_the_proxies_redis(overlay: Path) -> None:
    objects = build(overlay)
    deployment = find(objects, "Deployment", "tokenlb-aggregator")
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    [aggregator] = pod["spec"]["containers"]
    assert aggregator["image"] == "tokenlb:0.1.0"
    args = build_parser().parse_args(aggregator["args"])
    assert args.command == "aggregator"
    # Each pod consumes under its own name, from the Downward API.
    assert args.name == "$(POD_NAME)"
    [pod_name] = [e for e in aggregator["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    proxy = find(objects, "Deployment", "tokenlb-proxy")["spec"]["template"]["spec"]
    # The same settings (TOKENLB_REDIS_URL) as the proxies, so both see one Redis.
    assert aggregator["envFrom"] == proxy["containers"][0]["envFrom"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
