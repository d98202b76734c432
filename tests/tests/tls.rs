//! The predictor over TLS as a user sets it up: a private CA and a server certificate made with
//! openssl, `predictor serve --tls-cert/--tls-key`, and the binaries' own clients (`predictor
//! health`, the image's health check, and `predictor classify`) trusting the CA with `--ca-cert`.
use std::process::Command;
use std::time::{Duration, Instant};

use goemotions_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_classify_clients_trust_a_ca_certificate_over_https() {
    let dir = tempfile::tempdir().unwrap();
    shared_registry(dir.path());
    // A private CA and a server certificate it signs, as an internal PKI hands them out.
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        &path("ca-key.pem"),
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=predictor",
        "-keyout",
        &key,
        "-out",
        &path("cert.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("cert.csr"),
        "-CA",
        &ca,
        "-CAkey",
        &path("ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &cert,
    ]);
    let alias = dir.path().join("models/goemotions/aliases/latest");
    let (proc, addr, _) = spawn_predictor(
        alias.to_str().unwrap(),
        &["--tls-cert", &cert, "--tls-key", &key],
        &[],
        dir.path().join("p.log"),
    );
    let https = addr.replace("http://", "https://");
    let health = |trust: bool| {
        let mut cmd = Command::new(bin("predictor"));
        cmd.args(["health", "--addr", &https, "--timeout-secs", "5"]);
        if trust {
            cmd.arg("--ca-cert").arg(&ca);
        }
        cmd.output().expect("predictor health")
    };
    let started = Instant::now();
    while !health(true).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not healthy over TLS: {}\n{}",
            String::from_utf8_lossy(&health(true).stderr),
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let untrusted = health(false);
    assert!(
        !untrusted.status.success(),
        "a self-signed server is not trusted without --ca-cert"
    );
    let classified = Command::new(bin("predictor"))
        .args(["classify", "--addr", &https])
        .arg("--ca-cert")
        .arg(&ca)
        .arg("I am so happy today!")
        .output()
        .expect("predictor classify");
    assert!(
        classified.status.success(),
        "{}",
        String::from_utf8_lossy(&classified.stderr)
    );
    assert!(
        String::from_utf8_lossy(&classified.stdout).contains("top:"),
        "{}",
        String::from_utf8_lossy(&classified.stdout)
    );
}
