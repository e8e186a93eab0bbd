#!/usr/bin/env python3
"""Validates deploy/: renders each kustomization, checks every object against the Kubernetes
API schemas of the given versions, checks that the pieces fit together (selectors, ports,
probes, mounts, security settings, the shutdown budget, the image's config path and user), and
runs `amity-gateway check-config` on the gateway.toml each workload mounts, with that
workload's environment.

Run through deploy/validate.sh, which installs the pinned dependencies and picks a renderer.
Exit status 1 when anything fails; every check prints one line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "gateway.rules.yml"
# The admin port's name, which Prometheus discovery (deploy/prometheus/prometheus.yml) keeps.
ADMIN_PORT_NAME = "gateway-admin"
TARGETS = ["base", "overlays/sidecar", "overlays/edge"]
GATEWAY = "amity-gateway"
CONFIG_KEY = "gateway.toml"
# Custom resources of the Prometheus Operator. kubernetes-validate carries the core API schemas
# only, so these (and only these) are checked by their references instead of a schema.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# Seconds kept between the end of the gateway's drain and the kubelet's SIGKILL.
GRACE_MARGIN = 5

failures = 0


def ok(msg: str) -> None:
    print(f"ok    {msg}")


def skip(msg: str) -> None:
    print(f"skip  {msg}")


def fail(msg: str) -> None:
    global failures
    failures += 1
    print(f"FAIL  {msg}")


def check(cond: bool, msg: str) -> bool:
    (ok if cond else fail)(msg)
    return cond


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ------------------------------------------------------------------ rendering


class Unsupported(Exception):
    pass


def collect(directory: Path, generated: set[str]) -> list[dict]:
    """A small stand-in for `kustomize build` covering exactly the fields deploy/ uses
    (resources, configMapGenerator with plain files, labels without selectors, images), without
    the generators' hash suffix. Anything else is refused rather than misread."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "resources", "configMapGenerator", "labels", "images"}
    if unknown:
        raise Unsupported(f"{directory}: fields {sorted(unknown)}")
    docs: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += collect(path, generated)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        if set(gen) - {"name", "files"} or any("=" in f for f in gen.get("files", [])):
            raise Unsupported(f"{directory}: configMapGenerator {gen.get('name')}")
        generated.add(gen["name"])
        data = {PurePosixPath(f).name: (directory / f).read_text() for f in gen["files"]}
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        )
    for label in k.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise Unsupported(f"{directory}: labels into selectors or templates")
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for d in docs:
            for c in containers(pod_spec(d) or {}):
                if c.get("image", "").split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def render(renderer: list[str], target: str) -> list[dict]:
    out = subprocess.run(
        renderer + [str(KUSTOMIZE_ROOT / target)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def without_hash(docs: list[dict], generated: set[str]) -> list[dict]:
    text = json.dumps(docs)
    for g in generated:
        text = re.sub(re.escape(g) + r"-[a-z0-9]{10}\b", g, text)
    return sorted(json.loads(text), key=name_of)


def objects(target: str, renderer: list[str] | None) -> list[dict]:
    """The target's objects: rendered when a renderer is available (and compared with the
    stand-in, so the stand-in stays truthful for machines without one), else collected."""
    generated: set[str] = set()
    collected = collect(KUSTOMIZE_ROOT / target, generated)
    if not renderer:
        ok(f"{target}: collected {len(collected)} objects (no renderer)")
        return collected
    try:
        rendered = render(renderer, target)
    except RuntimeError as e:
        fail(f"{target}: `{' '.join(renderer)}` failed: {e}")
        return collected
    ok(f"{target}: rendered {len(rendered)} objects with `{' '.join(renderer)}`")
    check(
        without_hash(rendered, generated) == sorted(collected, key=name_of),
        f"{target}: the stand-in renderer agrees with `{' '.join(renderer)}`",
    )
    return rendered


# ------------------------------------------------------------------ schemas


def validate_schemas(target: str, docs: list[dict], versions: list[str]) -> None:
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_KINDS:
            skip(
                f"{target}: {name_of(doc)}: schema not checked ({key[0]} is a Prometheus "
                "Operator CRD, not part of the Kubernetes API); its references are checked below"
            )
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{target}: {name_of(doc)} against Kubernetes {version}: {path}: {e.message}")
                continue
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{target}: {name_of(doc)}: {e.message}")
                continue
        ok(f"{target}: {name_of(doc)} valid against Kubernetes {', '.join(versions)} (strict)")


# ------------------------------------------------------------------ pods


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    return None


def pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"].get("labels", {})


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def prestop_sleep(container: dict) -> int:
    return container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)


def mount_for(container: dict, spec: dict, path: str) -> tuple[dict, dict] | None:
    """The (volumeMount, volume) a file path lies in, if any."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if path.startswith(m["mountPath"].rstrip("/") + "/") and m["name"] in volumes:
            return m, volumes[m["name"]]
    return None


def dockerfile() -> tuple[str, int, set[int]]:
    """The config path in ENTRYPOINT, the numeric USER and the EXPOSEd ports."""
    text = DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
    config = entry[entry.index("--config") + 1]
    user = int(re.search(r"^USER\s+(\d+)", text, re.M).group(1))
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.M) for p in line.split()}
    return config, user, exposed


def check_config(gateway: Path, toml_text: str, env: dict[str, str], what: str) -> dict | None:
    """`amity-gateway check-config` on the mounted file with the container's environment;
    returns the effective file config it prints."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml_text)
        f.flush()
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        out = subprocess.run(
            [str(gateway), "check-config", "--config", f.name],
            capture_output=True,
            text=True,
            env=run_env,
        )
    if not check(
        out.returncode == 0,
        f"{what}: `amity-gateway check-config` accepts the mounted {CONFIG_KEY} with the "
        f"container's environment ({', '.join(sorted(env)) or 'none'})"
        + ("" if out.returncode == 0 else f": {out.stderr.strip()}"),
    ):
        return None
    return tomllib.loads(out.stdout)


def check_gateway(target: str, doc: dict, docs: list[dict], gateway: Path) -> None:
    spec = pod_spec(doc)
    what = f"{target}: {name_of(doc)}"
    sidecar = any(c["name"] == GATEWAY for c in spec.get("initContainers", []))
    gw = next((c for c in containers(spec) if c["name"] == GATEWAY), None)
    if not check(gw is not None, f"{what}: runs the `{GATEWAY}` container"):
        return
    if sidecar:
        check(
            gw.get("restartPolicy") == "Always",
            f"{what}: the gateway is a native sidecar (init container, restartPolicy: Always)",
        )
    env = {e["name"]: e["value"] for e in gw.get("env", []) if "value" in e}
    config_path, image_user, exposed = dockerfile()

    # The config file: a ConfigMap mounted where the image's ENTRYPOINT reads it.
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    mounted = mount_for(gw, spec, config_path)
    cm = configmaps.get(mounted[1].get("configMap", {}).get("name")) if mounted else None
    if not check(
        cm is not None and CONFIG_KEY in cm.get("data", {}) and not mounted[0].get("subPath"),
        f"{what}: a ConfigMap with {CONFIG_KEY} is mounted at {PurePosixPath(config_path).parent} "
        "(the image's --config path)",
    ):
        return
    effective = check_config(gateway, cm["data"][CONFIG_KEY], env, what)
    if effective is None:
        return
    server = effective["server"]
    listen = env.get("GATEWAY_LISTEN", server["listen"])
    admin = env.get("GATEWAY_ADMIN_LISTEN", server["admin_listen"])
    listen_port = int(listen.rsplit(":", 1)[1])
    admin_port = int(admin.rsplit(":", 1)[1])
    drain = int(server["drain_timeout_secs"])

    # Secrets mounted as files, as directories so rotations reach them.
    for var, role in [
        ("GATEWAY_API_KEY_FILE", "API key"),
        ("GATEWAY_TLS_CERT_FILE", "TLS certificate"),
        ("GATEWAY_TLS_KEY_FILE", "TLS key"),
    ]:
        if var not in env:
            continue
        m = mount_for(gw, spec, env[var])
        check(
            m is not None and "secret" in m[1] and not m[0].get("subPath"),
            f"{what}: {var} ({role}) lies in a Secret volume mounted as a directory",
        )
    check("GATEWAY_API_KEY_FILE" in env, f"{what}: the API key comes from a mounted Secret file")

    # Probes on the admin port.
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ]:
        get = gw.get(probe, {}).get("httpGet", {})
        check(
            get.get("path") == path and port_number(gw, get.get("port")) == admin_port,
            f"{what}: {probe} GET {path} on the admin port {admin_port}",
        )
    check(admin_port in exposed and listen_port in exposed, f"{what}: the image EXPOSEs {listen_port} and {admin_port}")
    check(
        port_number(gw, ADMIN_PORT_NAME) == admin_port,
        f"{what}: the admin port {admin_port} is named `{ADMIN_PORT_NAME}` (what Prometheus discovery keeps)",
    )

    # Role-specific listener.
    if sidecar:
        check(
            listen.startswith("127.0.0.1:") or listen.startswith("[::1]:"),
            f"{what}: the sidecar listens on loopback only ({listen}): nothing outside the pod can use the injected key",
        )
    else:
        check(
            "GATEWAY_TLS_CERT_FILE" in env and "GATEWAY_TLS_KEY_FILE" in env,
            f"{what}: the edge gateway serves HTTPS",
        )
        check(
            port_number(gw, "https") == listen_port,
            f"{what}: the `https` container port is the client listener's ({listen_port})",
        )
        check("GATEWAY_REDIS_URL" in env, f"{what}: GATEWAY_REDIS_URL is set for shared rate limiting")

    # Shutdown budget: what runs before the gateway's SIGTERM, then its drain, then a margin.
    before = max((prestop_sleep(c) for c in spec.get("containers", []) if c is not gw), default=0) if sidecar else 0
    budget = before + prestop_sleep(gw) + drain + GRACE_MARGIN
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(
        grace >= budget,
        f"{what}: terminationGracePeriodSeconds {grace} >= preStop before the gateway {before} + "
        f"gateway preStop {prestop_sleep(gw)} + drain_timeout_secs {drain} + margin {GRACE_MARGIN}",
    )


def check_pod(target: str, doc: dict, docs: list[dict], gateway: Path) -> None:
    spec = pod_spec(doc)
    what = f"{target}: {name_of(doc)}"
    _, image_user, _ = dockerfile()
    check(selects(doc["spec"]["selector"], pod_labels(doc)), f"{what}: selector matches its pod labels")
    psc = spec.get("securityContext", {})
    check(
        psc.get("runAsNonRoot") is True
        and psc.get("runAsUser") == image_user
        and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{what}: pod runs as non-root user {image_user} (the image's USER) with the RuntimeDefault seccomp profile",
    )
    check(spec.get("automountServiceAccountToken") is False, f"{what}: no service account token mounted")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in containers(spec):
        sc = c.get("securityContext", {})
        check(
            sc.get("allowPrivilegeEscalation") is False
            and sc.get("readOnlyRootFilesystem") is True
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
            and (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True),
            f"{what}: container {c['name']}: non-root, read-only root filesystem, no privilege escalation, all capabilities dropped",
        )
        res = c.get("resources", {})
        check(
            {"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
            f"{what}: container {c['name']}: cpu and memory requests, memory limit",
        )
        missing = [m["name"] for m in c.get("volumeMounts", []) if m["name"] not in volumes]
        check(not missing, f"{what}: container {c['name']}: every volumeMount names a volume")
    check_gateway(target, doc, docs, gateway)


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if pod_spec(d) is not None]


def pods_selected(selector: dict, docs: list[dict]) -> list[dict]:
    return [d for d in workloads(docs) if selects(selector, pod_labels(d))]


def alert_job() -> str:
    """The job the alert rules expect the gateway's targets in."""
    return re.search(r'up\{job="([^"]+)"\}', ALERT_RULES.read_text()).group(1)


def sets_job(endpoint: dict, job: str) -> bool:
    return any(
        r.get("targetLabel") == "job"
        and r.get("replacement") == job
        and r.get("action", "replace") == "replace"
        and not r.get("sourceLabels")
        for r in endpoint.get("relabelings", [])
    )


def check_references(target: str, docs: list[dict]) -> None:
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        what = f"{target}: {name_of(svc)}"
        pods = pods_selected(svc["spec"].get("selector", {}), docs)
        if not check(bool(pods), f"{what}: selects the pods of a workload"):
            continue
        for p in svc["spec"]["ports"]:
            found = any(
                port_number(c, p.get("targetPort", p["port"])) is not None
                for d in pods
                for c in containers(pod_spec(d))
            )
            check(found, f"{what}: port {p.get('name')} targets a declared container port ({p.get('targetPort')})")
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        what = f"{target}: {name_of(hpa)}"
        target_doc = next(
            (d for d in docs if d["kind"] == ref["kind"] and d["metadata"]["name"] == ref["name"]), None
        )
        if not check(target_doc is not None, f"{what}: scales {ref['kind']}/{ref['name']}, which exists"):
            continue
        check(
            all("cpu" in c.get("resources", {}).get("requests", {}) for c in containers(pod_spec(target_doc))),
            f"{what}: every container of the target requests CPU (utilization needs it)",
        )
        for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
            check(
                pdb["spec"].get("maxUnavailable", 1) < hpa["spec"].get("minReplicas", 1),
                f"{target}: {name_of(pdb)} leaves replicas up at the autoscaler's minimum ({hpa['spec'].get('minReplicas')})",
            )
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        check(bool(pods_selected(pdb["spec"]["selector"], docs)), f"{target}: {name_of(pdb)}: selects the pods of a workload")
    for pm in (d for d in docs if d["kind"] == "PodMonitor"):
        what = f"{target}: {name_of(pm)}"
        pods = pods_selected(pm["spec"]["selector"], docs)
        if not check(bool(pods), f"{what}: selects the pods of a workload"):
            continue
        for ep in pm["spec"]["podMetricsEndpoints"]:
            check(
                ep.get("path") == "/metrics"
                and any(port_number(c, ep["port"]) is not None for d in pods for c in containers(pod_spec(d))),
                f"{what}: scrapes /metrics on the named container port {ep['port']}",
            )
            check(sets_job(ep, alert_job()), f"{what}: targets get job=\"{alert_job()}\", the job the alert rules select")
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        what = f"{target}: {name_of(sm)}"
        svcs = [s for s in services if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not check(bool(svcs), f"{what}: selects a Service"):
            continue
        for ep in sm["spec"]["endpoints"]:
            check(
                ep.get("path") == "/metrics"
                and all(any(p.get("name") == ep["port"] for p in s["spec"]["ports"]) for s in svcs),
                f"{what}: scrapes /metrics on the Service port {ep['port']}",
            )
            check(sets_job(ep, alert_job()), f"{what}: targets get job=\"{alert_job()}\", the job the alert rules select")
        check(
            all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in svcs),
            f"{what}: the admin port it scrapes is only on a ClusterIP Service, never the load balancer",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, type=Path, help="the amity-gateway binary")
    parser.add_argument("--renderer", default="", help="e.g. 'kubectl kustomize'; empty: none")
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version (repeatable)")
    args = parser.parse_args()
    renderer = shlex.split(args.renderer) or None
    if not renderer:
        skip(
            "rendering: no kustomize renderer (kustomize, or kubectl >= 1.27) on PATH; the "
            "kustomizations are read by the stand-in in deploy/validate.py instead"
        )
    for target in TARGETS:
        try:
            docs = objects(target, renderer)
        except Unsupported as e:
            fail(f"{target}: the stand-in renderer does not implement {e}; install kubectl >= 1.27 or kustomize")
            continue
        validate_schemas(target, docs, args.k8s)
        for w in workloads(docs):
            check_pod(target, w, docs, args.gateway)
        check_references(target, docs)
    print(f"\n{'FAILED: ' + str(failures) + ' check(s)' if failures else 'deploy: all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
