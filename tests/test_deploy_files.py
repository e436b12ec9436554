"""docker-compose.yml and k8s/ are validated offline (no Docker engine here)."""

from __future__ import annotations

import yaml

from cli.embedded_redis import MAXMEMORY_POLICY
from tests.conftest import ROOT


def redis_flags(args: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    return {a[2:]: v for a, v in zip(args, [*args[1:], ""]) if a.startswith("--")}


def assert_bounded_memory(args: list[str]) -> None:
    flags = redis_flags(args)
    assert flags["maxmemory"].endswith(("mb", "gb")), flags
    assert flags["maxmemory-policy"] == MAXMEMORY_POLICY == "volatile-ttl"  # the job streams have no TTL


def test_compose_wires_redis_gateway_and_worker():
    c = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = c["services"]
    assert set(s) == {"redis", "gateway", "worker"}
    for name in ("gateway", "worker"):
        assert s[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert s[name]["command"] == ["whitebox", name]
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (ROOT / "Dockerfile").exists()
    assert s["redis"]["command"][0] == "redis-server"
    assert_bounded_memory(s["redis"]["command"])


def test_k8s_manifests_are_consistent():
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "whitebox.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "whitebox-gateway") in kinds and ("Deployment", "whitebox-worker") in kinds
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"] == labels
        c = d["spec"]["template"]["spec"]["containers"][0]
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in c and "httpGet" in c[probe]:
                port = c[probe]["httpGet"]["port"]
                assert port in [p.get("name") for p in c["ports"]] + [p["containerPort"] for p in c["ports"]]
    gw = next(d for d in docs if d["metadata"]["name"] == "whitebox-gateway")
    c = gw["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert services["whitebox"]["spec"]["selector"] == {"app": "whitebox-gateway"}
    cfg = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cfg["data"]["REDIS_URL"].startswith("redis://whitebox-redis:")
    redis_deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "whitebox-redis")
    redis_container = redis_deploy["spec"]["template"]["spec"]["containers"][0]
    assert_bounded_memory(redis_container["args"])
    maxmemory = redis_flags(redis_container["args"])["maxmemory"]
    maxmemory_mib = int(maxmemory[:-2]) * {"mb": 1, "gb": 1024}[maxmemory[-2:]]
    assert int(redis_container["resources"]["limits"]["memory"].removesuffix("Mi")) > maxmemory_mib


def test_dockerfile_copies_every_package():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in include]
    assert {"schemas", "service", "workers"} <= set(packages)
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pkg in packages:
        assert (ROOT / pkg / "__init__.py").exists(), pkg
        assert f"COPY {pkg} ./{pkg}" in dockerfile, pkg
