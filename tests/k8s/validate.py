#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/k8s (run by tests/k8s/validate.sh).

Renders a kustomization the way kustomize does for the features used here (`resources:` files and
directories, `patches:` as JSON 6902 lists with a `target:` or as merge patches of maps), refusing
anything else, then:
  - validates every built-in object against the Kubernetes JSON schemas of kubernetes-validate
    (strict: unknown fields are errors);
  - checks the CRD-based objects (ServiceMonitor) and the kustomization files for shape;
  - checks the references between objects: selectors match pod labels, Service target ports and
    probe ports name container ports, a StatefulSet's serviceName is a headless Service, volume
    mounts, ConfigMaps and claims exist, the ServiceMonitor selects a Service and names its port;
  - with --kubectl (when `kubectl kustomize` runs here), renders with kubectl too and requires the
    same objects;
  - writes the sessiongate config held in the ConfigMap to --config-out, for `sessiongate check`.
Exit status 1 with every problem listed.
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys

import jsonpatch
import kubernetes_validate
import yaml

CONFIGMAP = "sessiongate-config"
CONFIG_KEY = "sessiongate.yaml"
CRD_GROUPS = ("monitoring.coreos.com/",)
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, msg):
        self.items.append(f"{where}: {msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(obj):
    md = obj.get("metadata", {})
    return f"{obj.get('kind')}/{md.get('namespace', '-')}/{md.get('name')}"


def has_list(value):
    if isinstance(value, list):
        return True
    if isinstance(value, dict):
        return any(has_list(v) for v in value.values())
    return False


def merge(base, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif value is None:
            base.pop(key, None)
        else:
            base[key] = copy.deepcopy(value)


def target_matches(obj, target):
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    md = obj.get("metadata", {})
    want = {
        "group": group,
        "version": version,
        "kind": obj.get("kind"),
        "name": md.get("name"),
        "namespace": md.get("namespace"),
    }
    return all(want.get(k) == v for k, v in target.items())


def render(kdir, problems):
    """The objects of the kustomization in kdir."""
    kfile = os.path.join(kdir, "kustomization.yaml")
    if not os.path.isfile(kfile):
        problems.add(kdir, "no kustomization.yaml")
        return []
    docs = load_docs(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        problems.add(kfile, "must hold exactly one map")
        return []
    k = docs[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        problems.add(kfile, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        problems.add(kfile, f"fields this renderer does not support: {sorted(unknown)}")
    if not isinstance(k.get("resources"), list) or not k["resources"]:
        problems.add(kfile, "resources: must be a non-empty list")
        return []
    objects = []
    for res in k["resources"]:
        path = os.path.normpath(os.path.join(kdir, res))
        if os.path.isdir(path):
            objects.extend(render(path, problems))
        elif os.path.isfile(path):
            for doc in load_docs(path):
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    problems.add(path, "every document must be an object with apiVersion and kind")
                    continue
                doc["__file"] = path
                objects.append(doc)
        else:
            problems.add(kfile, f"resource {res} does not exist")
    seen = set()
    for obj in objects:
        if ident(obj) in seen:
            problems.add(kfile, f"{ident(obj)} defined twice")
        seen.add(ident(obj))
    for p in k.get("patches", []) or []:
        if not isinstance(p, dict) or set(p) - {"path", "target"} or "path" not in p:
            problems.add(kfile, f"patch {p!r}: only `path` (+ `target`) is supported")
            continue
        ppath = os.path.join(kdir, p["path"])
        pdocs = load_docs(ppath)
        if len(pdocs) != 1:
            problems.add(ppath, "must hold exactly one document")
            continue
        patch = pdocs[0]
        if isinstance(patch, list):
            target = p.get("target")
            if not target:
                problems.add(ppath, "a JSON 6902 patch needs a target")
                continue
            hits = [o for o in objects if target_matches(o, target)]
            for obj in hits:
                file = obj.pop("__file")
                try:
                    patched = jsonpatch.apply_patch(obj, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    problems.add(ppath, f"does not apply to {ident(obj)}: {e}")
                    patched = obj
                obj.clear()
                obj.update(patched)
                obj["__file"] = file
        elif isinstance(patch, dict):
            if has_list(patch):
                # kustomize merges lists by key (strategic merge); keep to maps so this stays exact.
                problems.add(ppath, "merge patches with lists are not supported here: use JSON 6902")
                continue
            target = p.get("target") or {}
            hits = [
                o
                for o in objects
                if o.get("apiVersion") == patch.get("apiVersion")
                and o.get("kind") == patch.get("kind")
                and o["metadata"].get("name") == patch.get("metadata", {}).get("name")
                and target_matches(o, target)
            ]
            for obj in hits:
                merge(obj, patch)
        else:
            problems.add(ppath, "a patch must be a list (JSON 6902) or a map (merge patch)")
            continue
        if not hits:
            problems.add(ppath, "matches no object")
    return objects


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return obj.get("spec", {}).get("template", {})
    return None


def subset(labels, of):
    return bool(labels) and all(of.get(k) == v for k, v in labels.items())


def check_refs(objects, problems):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", [])}
    workloads = [o for o in objects if pod_spec(o) is not None]
    names = lambda kind: {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in by_kind.get(kind, [])}
    secrets = {}

    for o in objects:
        ns = o["metadata"].get("namespace")
        if o["kind"] != "Namespace" and ns is not None and ns not in namespaces:
            problems.add(ident(o), f"namespace {ns} is not created by this kustomization")

    for w in workloads:
        ns = w["metadata"].get("namespace")
        tmpl = pod_spec(w)
        labels = tmpl.get("metadata", {}).get("labels", {})
        sel = w["spec"].get("selector", {}).get("matchLabels", {})
        if not subset(sel, labels):
            problems.add(ident(w), f"selector {sel} does not match the pod labels {labels}")
        spec = tmpl.get("spec", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v and (ns, v["configMap"]["name"]) not in names("ConfigMap"):
                problems.add(ident(w), f"volume {v['name']}: ConfigMap {v['configMap']['name']} not found")
            if "persistentVolumeClaim" in v and (ns, v["persistentVolumeClaim"]["claimName"]) not in names(
                "PersistentVolumeClaim"
            ):
                problems.add(ident(w), f"volume {v['name']}: claim {v['persistentVolumeClaim']['claimName']} not found")
        if w["kind"] == "StatefulSet":
            svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == w["spec"].get("serviceName")]
            if not svc or svc[0]["spec"].get("clusterIP") != "None":
                problems.add(ident(w), f"serviceName {w['spec'].get('serviceName')} is not a headless Service here")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ports = {p.get("name") for p in c.get("ports", [])}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    problems.add(ident(w), f"container {c['name']}: mount {m['name']} has no volume")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe) or {}
                for how in ("httpGet", "tcpSocket"):
                    port = (pr.get(how) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        problems.add(ident(w), f"container {c['name']}: {probe} port {port} is not a container port")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secrets.setdefault(f"{ns}/{ref['name']}", set()).add(ref["key"])

    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        ns = s["metadata"].get("namespace")
        pods = [w for w in workloads if w["metadata"].get("namespace") == ns
                and subset(sel, pod_spec(w).get("metadata", {}).get("labels", {}))]
        if not pods:
            problems.add(ident(s), f"selector {sel} matches no pod template")
            continue
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str):
                for w in pods:
                    cports = {cp.get("name") for c in pod_spec(w)["spec"]["containers"] for cp in c.get("ports", [])}
                    if tp not in cports:
                        problems.add(ident(s), f"targetPort {tp} is not a port of {ident(w)}")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(subset(sel, pod_spec(w).get("metadata", {}).get("labels", {})) for w in workloads):
            problems.add(ident(pdb), f"selector {sel} matches no pod template")

    for sm in by_kind.get("ServiceMonitor", []):
        check_servicemonitor(sm, by_kind.get("Service", []), problems)
    return secrets


def check_servicemonitor(sm, services, problems):
    where = ident(sm)
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.add(where, "apiVersion must be monitoring.coreos.com/v1")
    unknown = set(sm) - {"apiVersion", "kind", "metadata", "spec", "__file"}
    if unknown:
        problems.add(where, f"unknown top-level fields {sorted(unknown)}")
    md = sm.get("metadata") or {}
    if not md.get("name") or not md.get("namespace"):
        problems.add(where, "metadata.name and metadata.namespace are required")
    spec = sm.get("spec") or {}
    sel = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(sel, dict) or not sel:
        problems.add(where, "spec.selector.matchLabels is required")
        return
    nss = (spec.get("namespaceSelector") or {}).get("matchNames") or [md.get("namespace")]
    targets = [s for s in services if s["metadata"].get("namespace") in nss and subset(sel, s["metadata"].get("labels", {}))]
    if not targets:
        problems.add(where, f"selector {sel} matches no Service labels in {nss}")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.add(where, "spec.endpoints must be a non-empty list")
        return
    for ep in endpoints:
        port = ep.get("port")
        if not isinstance(port, str):
            problems.add(where, "each endpoint needs a named `port`")
            continue
        for s in targets:
            if port not in {p.get("name") for p in s["spec"].get("ports", [])}:
                problems.add(where, f"endpoint port {port} is not a port name of {ident(s)}")
        if ep.get("path", "/metrics") != "/metrics":
            problems.add(where, f"endpoint path {ep.get('path')}: sessiongate serves /metrics")


def clean(obj):
    return {k: v for k, v in obj.items() if k != "__file"}


def compare_kubectl(kdir, objects, problems):
    try:
        out = subprocess.run(["kubectl", "kustomize", kdir], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"kubectl kustomize not usable ({e}); skipped the comparison"
    if out.returncode != 0:
        problems.add(kdir, f"kubectl kustomize failed: {out.stderr.strip()}")
        return None
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out.stdout) if d)
    ours = sorted(json.dumps(clean(o), sort_keys=True) for o in objects)
    if theirs != ours:
        problems.add(kdir, "kubectl kustomize renders different objects than this renderer")
        for line in sorted(set(theirs) ^ set(ours))[:4]:
            problems.add(kdir, f"  differs: {line[:300]}")
        return None
    return "kubectl kustomize renders the same objects"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kustomization", help="directory holding kustomization.yaml")
    ap.add_argument("--kubernetes-version", default="1.30.0")
    ap.add_argument("--config-out", help="write the sessiongate config of the ConfigMap here")
    ap.add_argument("--kubectl", action="store_true", help="also compare with `kubectl kustomize` when present")
    args = ap.parse_args()

    problems = Problems()
    objects = render(args.kustomization, problems)
    for obj in objects:
        where = f"{obj['__file']}: {ident(obj)}"
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # CRD-based: no schema here; shape-checked in check_refs
        try:
            kubernetes_validate.validate(clean(obj), args.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            problems.add(where, f"schema (Kubernetes {args.kubernetes_version}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.add(where, f"no schema: {e}")
    secrets = check_refs(objects, problems) if objects else {}

    note = None
    if args.kubectl and shutil.which("kubectl") and not problems.items:
        note = compare_kubectl(args.kustomization, objects, problems)

    if args.config_out:
        cms = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == CONFIGMAP]
        if len(cms) != 1 or CONFIG_KEY not in (cms[0].get("data") or {}):
            problems.add(args.kustomization, f"ConfigMap {CONFIGMAP} with data.{CONFIG_KEY} not found")
        else:
            with open(args.config_out, "w") as f:
                f.write(cms[0]["data"][CONFIG_KEY])

    if problems.items:
        print(f"FAIL {args.kustomization}:")
        for p in problems.items:
            print(f"  {p}")
        return 1
    kinds = {}
    for o in objects:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    print(f"ok   {args.kustomization}: {len(objects)} objects valid for Kubernetes {args.kubernetes_version} "
          f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    wanted = [f"{name} ({', '.join(sorted(keys))})" for name, keys in sorted(secrets.items())]
    print(f"     Secrets to create: {'; '.join(wanted)}")
    if note:
        print(f"     {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
