//! The offline check of the KServe overlay can fail: a broken InferenceService is refused with
//! the reason (scripts/validate_kserve.py; the venv comes from scripts/validate-k8s.sh).
use std::process::Command;

use goemotions_tests::workspace_root;

fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kserve.yaml");
    std::fs::write(&path, yaml).unwrap();
    let root = workspace_root();
    let out = Command::new(root.join(".cache/venv-k8s/bin/python"))
        .arg(root.join("scripts/validate_kserve.py"))
        .arg(&path)
        .output()
        .expect("run validate_kserve.py (scripts/validate-k8s.sh makes its venv)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const RUNTIME: &str = "apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {name: goemotions-predictor}
spec:
  supportedModelFormats: [{name: goemotions, version: '1'}]
  protocolVersions: [v2, grpc-v2]
  containers: [{name: kserve-container, image: x, ports: [{containerPort: 8080}, {name: h2c, containerPort: 8081}]}]
";

fn isvc(runtime: &str, uri: &str) -> String {
    format!(
        "---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: goemotions}}
spec:
  predictor:
    model: {{modelFormat: {{name: goemotions}}, protocolVersion: v2, runtime: {runtime}, storageUri: '{uri}'}}
"
    )
}

#[test]
fn the_shipped_shape_passes_and_broken_references_fail() {
    let good = format!("{RUNTIME}{}", isvc("goemotions-predictor", "s3://b/m"));
    let (ok, err) = check(&good);
    assert!(ok, "{err}");
    let (ok, err) = check(&format!("{RUNTIME}{}", isvc("triton", "s3://b/m")));
    assert!(
        !ok && err.contains("runtime 'triton' is not a ServingRuntime"),
        "{err}"
    );
    let (ok, err) = check(&format!(
        "{RUNTIME}{}",
        isvc("goemotions-predictor", "/data/m")
    ));
    assert!(!ok && err.contains("no supported scheme"), "{err}");
    // gRPC declared without an h2c port: KServe could not route it.
    let no_h2c = RUNTIME.replace(", {name: h2c, containerPort: 8081}", "");
    let (ok, err) = check(&format!(
        "{no_h2c}{}",
        isvc("goemotions-predictor", "s3://b/m")
    ));
    assert!(
        !ok && err.contains("no container port is named h2c"),
        "{err}"
    );
    // A gRPC InferenceService must select the h2c port; with it, it passes.
    let grpc = isvc("goemotions-predictor", "s3://b/m")
        .replace("protocolVersion: v2", "protocolVersion: grpc-v2");
    let (ok, err) = check(&format!("{RUNTIME}{grpc}"));
    assert!(!ok && err.contains("needs the h2c port"), "{err}");
    let grpc_port = grpc.replace(
        "storageUri: 's3://b/m'}",
        "storageUri: 's3://b/m', ports: [{name: h2c, containerPort: 8081}]}",
    );
    let (ok, err) = check(&format!("{RUNTIME}{grpc_port}"));
    assert!(ok, "{err}");
    let no_port = RUNTIME.replace(
        ", ports: [{containerPort: 8080}, {name: h2c, containerPort: 8081}]",
        "",
    );
    let (ok, err) = check(&format!(
        "{no_port}{}",
        isvc("goemotions-predictor", "s3://b/m")
    ));
    assert!(!ok && err.contains("serving port"), "{err}");
}
