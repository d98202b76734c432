#!/usr/bin/env python3
"""Offline checks for KServe resources, whose CRD schemas are not available here.

  validate_kserve.py --split ALL.yaml BUILTIN.yaml KSERVE.yaml   splits a rendered overlay
  validate_kserve.py KSERVE.yaml                                 checks the KServe documents

What is checked (and no more): ServingRuntime (serving.kserve.io/v1alpha1) has metadata.name,
spec.supportedModelFormats[].name, spec.protocolVersions within {v1, v2, grpc-v1, grpc-v2} and
containers with a name and an image, the first one exposing a containerPort, and ports that
match the protocols: KServe routes gRPC (grpc-v1, grpc-v2) only to a port named h2c and HTTP to the
first port, so a gRPC protocol needs an h2c port and an HTTP protocol a first port that is not
h2c; an InferenceService asking for a gRPC protocol must then select the h2c port (its own
spec.predictor.model.ports, or the runtime's first port being h2c); InferenceService
(serving.kserve.io/v1beta1) has spec.predictor.model with modelFormat.name, runtime, storageUri
(s3://, gs://, pvc://, http(s)://) and protocolVersion; its runtime is a ServingRuntime of the same
render that supports its model format and protocol. Unknown KServe kinds fail. Prints one line
per problem and exits 1 when there is any.
"""
import sys

import yaml

KSERVE = "serving.kserve.io/"
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def split(src, builtin, kserve):
    docs = [d for d in yaml.safe_load_all(open(src)) if d]
    with open(builtin, "w") as b, open(kserve, "w") as k:
        yaml.safe_dump_all([d for d in docs if not d.get("apiVersion", "").startswith(KSERVE)], b)
        ks = [d for d in docs if d.get("apiVersion", "").startswith(KSERVE)]
        if ks:
            yaml.safe_dump_all(ks, k)


def get(doc, path):
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def check(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    problems = []
    runtimes = {}
    for d in docs:
        kind, name = d.get("kind"), get(d, "metadata.name")
        where = f"{kind}/{name}"
        if not name:
            problems.append(f"{kind}: metadata.name missing")
        if kind == "ServingRuntime":
            if d.get("apiVersion") != "serving.kserve.io/v1alpha1":
                problems.append(f"{where}: apiVersion {d.get('apiVersion')}, expected serving.kserve.io/v1alpha1")
            formats = [f.get("name") for f in get(d, "spec.supportedModelFormats") or []]
            if not formats or not all(formats):
                problems.append(f"{where}: spec.supportedModelFormats needs named formats")
            protocols = get(d, "spec.protocolVersions") or []
            if not protocols or set(protocols) - PROTOCOLS:
                problems.append(f"{where}: spec.protocolVersions {protocols} not within {sorted(PROTOCOLS)}")
            containers = get(d, "spec.containers") or []
            if not containers:
                problems.append(f"{where}: spec.containers missing")
            for c in containers:
                if not c.get("name") or not c.get("image"):
                    problems.append(f"{where}: every container needs a name and an image")
            ports = (containers[0].get("ports") or []) if containers else []
            if containers and not (ports or [{}])[0].get("containerPort"):
                problems.append(f"{where}: the first container must expose the serving port")
            names = [p.get("name") for p in ports]
            if any(p.startswith("grpc-") for p in protocols) and "h2c" not in names:
                problems.append(f"{where}: protocolVersions {protocols} include gRPC but no container port is named h2c "
                                "(KServe routes gRPC only to an h2c port)")
            if any(not p.startswith("grpc-") for p in protocols) and names and names[0] == "h2c":
                problems.append(f"{where}: an HTTP protocol is declared but the first port (where KServe routes HTTP) is h2c")
            runtimes[name] = (set(formats), set(protocols), names[0] if names else None)
        elif kind == "InferenceService":
            if d.get("apiVersion") != "serving.kserve.io/v1beta1":
                problems.append(f"{where}: apiVersion {d.get('apiVersion')}, expected serving.kserve.io/v1beta1")
        else:
            problems.append(f"{where}: unknown KServe kind")
    for d in docs:
        if d.get("kind") != "InferenceService":
            continue
        where = f"InferenceService/{get(d, 'metadata.name')}"
        model = get(d, "spec.predictor.model") or {}
        fmt, runtime = get(model, "modelFormat.name"), model.get("runtime")
        uri, protocol = model.get("storageUri", ""), model.get("protocolVersion")
        for field, value in (("modelFormat.name", fmt), ("runtime", runtime), ("storageUri", uri),
                             ("protocolVersion", protocol)):
            if not value:
                problems.append(f"{where}: spec.predictor.model.{field} missing")
        if uri and not uri.startswith(("s3://", "gs://", "pvc://", "http://", "https://")):
            problems.append(f"{where}: storageUri {uri!r} has no supported scheme")
        if runtime and runtime not in runtimes:
            problems.append(f"{where}: runtime {runtime!r} is not a ServingRuntime of this render")
        elif runtime:
            formats, protocols, first_port = runtimes[runtime]
            own_ports = [p.get("name") for p in model.get("ports") or []]
            if protocol and protocol.startswith("grpc-") and "h2c" not in own_ports and first_port != "h2c":
                problems.append(f"{where}: protocol {protocol} needs the h2c port: set spec.predictor.model.ports "
                                "to the runtime's h2c port (its first port serves HTTP)")
            if fmt not in formats:
                problems.append(f"{where}: runtime {runtime} does not support model format {fmt!r}")
            if protocol and protocol not in protocols:
                problems.append(f"{where}: runtime {runtime} does not speak protocol {protocol!r}")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"KServe: {len(docs)} resources checked (required fields, runtime/format/protocol references)")
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1] == "--split":
        split(*sys.argv[2:5])
    else:
        sys.exit(check(sys.argv[1]))
