//! Helpers for the end-to-end tests: real trainer, predictor and S3 server processes on 127.0.0.1,
//! and the adversarial cases (`cases`) that both the tests and the chaos report
//! (`scripts/chaos.sh`) run.
pub mod cases;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1::predictor_client::PredictorClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A workspace binary built by `cargo build --bins` (scripts/test.sh does this first), next to
/// the running executable (the chaos binary) or one folder up (test binaries live in deps/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("target/<profile>");
    let path = [here.join(name), here.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn data_dir() -> PathBuf {
    std::env::var("GOEMOTIONS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache/data/goemotions"))
}

pub fn base_model() -> PathBuf {
    std::env::var("GOEMOTIONS_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache/models/all-MiniLM-L6-v2"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::from(file.try_clone().expect("dup")))
            .stderr(Stdio::from(file));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for exit up to `timeout`; returns the exit status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `trainer train` on the small data (200 training, 100 dev, 50 test examples), CPU, 2 threads,
/// no baseline, publishing into `registry` under `name` (alias `latest`, the default), the report
/// beside it; the caller adds the epochs and its own flags.
pub fn small_train_command(registry: &Path, name: &str) -> Command {
    let mut cmd = Command::new(bin("trainer"));
    cmd.args([
        "train",
        "--train-limit",
        "200",
        "--dev-limit",
        "100",
        "--test-limit",
        "50",
    ])
    .args([
        "--baseline",
        "false",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--model-name",
        name,
    ])
    .arg("--registry")
    .arg(registry)
    .arg("--report-dir")
    .arg(registry.join(format!("report-{name}")))
    .arg("--data-dir")
    .arg(data_dir())
    .arg("--base-model")
    .arg(base_model());
    cmd
}

/// The version `name`'s alias `latest` points at in `registry`.
pub fn latest_version(registry: &Path, name: &str) -> String {
    let alias: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.join(format!("models/{name}/aliases/latest.json")))
            .expect("alias written"),
    )
    .expect("alias json");
    alias["version"].as_str().expect("version").to_string()
}

/// Publishes a small fine-tuned checkpoint (200 training examples, 1 epoch) with the real trainer
/// into `registry` under `name`, alias `latest`; returns its version.
pub fn train_small_checkpoint(registry: &Path, name: &str, extra: &[&str]) -> String {
    let out = small_train_command(registry, name)
        .args(["--epochs", "1"])
        .args(extra)
        .output()
        .expect("run trainer");
    assert!(
        out.status.success(),
        "trainer failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    latest_version(registry, name)
}

/// Copies a published version under a new version id (same weights), as a second publish would.
pub fn copy_version(registry: &Path, name: &str, from: &str, to: &str) {
    let src = registry.join(format!("models/{name}/versions/{from}"));
    let dst = registry.join(format!("models/{name}/versions/{to}"));
    std::fs::create_dir_all(&dst).expect("mkdir");
    for entry in std::fs::read_dir(&src).expect("read version") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name != "manifest.json" {
            std::fs::copy(entry.path(), dst.join(&name)).expect("copy");
        }
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).expect("manifest"))
            .expect("json");
    manifest["version"] = to.into();
    std::fs::write(
        dst.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write");
}

/// Starts `predictor serve` on free ports; returns the process and its gRPC address.
pub fn spawn_predictor(
    model: &str,
    extra: &[&str],
    env: &[(&str, String)],
    log: PathBuf,
) -> (Proc, String, u16) {
    let port = free_port();
    let metrics_port = free_port();
    let mut cmd = Command::new(bin("predictor"));
    cmd.args(["serve", "--model", model, "--device", "cpu"]);
    if !extra.contains(&"--threads") {
        cmd.args(["--threads", "1"]);
    }
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
    ])
    .args(extra)
    .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (
        Proc::spawn(cmd, log),
        format!("http://127.0.0.1:{port}"),
        metrics_port,
    )
}

pub async fn health_status(addr: &str, service: &str) -> Option<i32> {
    let channel = Channel::from_shared(addr.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Waits until the predictor reports SERVING (panics with its log after `timeout`).
pub async fn wait_serving(proc: &mut Proc, addr: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if health_status(addr, "").await == Some(ServingStatus::Serving as i32) {
            return start.elapsed();
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("predictor exited ({status}):\n{}", proc.log_text());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "predictor not SERVING after {timeout:?}:\n{}",
        proc.log_text()
    );
}

pub async fn client(addr: &str) -> PredictorClient<Channel> {
    PredictorClient::connect(addr.to_string())
        .await
        .expect("connect predictor")
}

/// A real S3 server (s3s-fs) on 127.0.0.1 with one bucket.
pub struct S3Server {
    pub proc: Proc,
    pub endpoint: String,
    pub root: PathBuf,
    pub bucket: String,
    port: u16,
}

pub const S3_ACCESS_KEY: &str = "goemotions-test";
pub const S3_SECRET_KEY: &str = "goemotions-test-secret";

impl S3Server {
    pub fn start(root: &Path, bucket: &str) -> Self {
        let bin = std::env::var("S3S_FS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join(".cache/tools/bin/s3s-fs"));
        assert!(
            bin.exists(),
            "{} missing: run scripts/setup.sh --with-s3",
            bin.display()
        );
        std::fs::create_dir_all(root.join(bucket)).expect("bucket dir");
        let port = free_port();
        let proc = Self::spawn(&bin, root, port);
        let server = Self {
            proc,
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
            bucket: bucket.into(),
            port,
        };
        server.wait_ready();
        server
    }

    fn spawn(bin: &Path, root: &Path, port: u16) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root);
        Proc::spawn(cmd, root.with_extension(format!("s3s-{port}.log")))
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s3s-fs did not start:\n{}",
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the server (SIGKILL), as an outage would.
    pub fn stop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        let bin = std::env::var("S3S_FS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join(".cache/tools/bin/s3s-fs"));
        self.proc = Self::spawn(&bin, &self.root, self.port);
        self.wait_ready();
    }

    /// AWS_* variables that point a process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("OBJECT_STORE_RETRY_TIMEOUT_SECS", "3".into()),
        ]
    }

    /// Sets this server's AWS_* variables in the current process (for in-test object_store use).
    pub fn export_env(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    pub fn uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }
}

/// moto's S3 server (PyPI `moto[server]`) on 127.0.0.1 with one bucket. Unlike s3s-fs it makes
/// conditional writes atomic, so cross-process compare-and-swap runs against it.
pub struct MotoServer {
    pub proc: Proc,
    pub endpoint: String,
    pub bucket: String,
}

impl MotoServer {
    pub fn bin() -> PathBuf {
        std::env::var("MOTO_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join(".cache/tools/moto/bin/moto_server"))
    }

    pub fn start(log_dir: &Path, bucket: &str) -> Self {
        let bin = Self::bin();
        assert!(
            bin.exists(),
            "{} missing: run scripts/setup.sh --with-s3",
            bin.display()
        );
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn(cmd, log_dir.join(format!("moto-{port}.log")));
        let endpoint = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        // Create the bucket (moto's server accepts unsigned requests).
        loop {
            let created = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                use std::io::{Read, Write};
                write!(
                    s,
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply.starts_with("HTTP/1.1 200"))
            });
            if matches!(created, Ok(true)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto server did not start:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            proc,
            endpoint,
            bucket: bucket.into(),
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "moto".into()),
            ("AWS_SECRET_ACCESS_KEY", "moto".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("OBJECT_STORE_RETRY_TIMEOUT_SECS", "3".into()),
        ]
    }

    pub fn uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }
}

/// GET /metrics with a plain TCP request (no HTTP client dependency needed).
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// The value of a metric line (`name{labels} value`) in a /metrics page; 0 when absent.
pub fn metric_value(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Rewrites a published version in place: `edit_config` and `edit_manifest` change the JSON of
/// config.json and manifest.json; file checksums in the manifest are updated so the version
/// passes integrity checks and only its content is wrong.
pub fn rewrite_version(
    registry: &Path,
    name: &str,
    version: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_manifest: impl FnOnce(&mut serde_json::Value),
) {
    use common::sha256_hex;
    let dir = registry.join(format!("models/{name}/versions/{version}"));
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
            .expect("config json");
    edit_config(&mut config);
    let config_bytes = serde_json::to_vec_pretty(&config).expect("json");
    std::fs::write(dir.join("config.json"), &config_bytes).expect("write config");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    if let Some(files) = manifest["files"].as_array_mut() {
        for f in files {
            if f["path"] == "config.json" {
                f["sha256"] = sha256_hex(&config_bytes).into();
                f["size"] = config_bytes.len().into();
            }
        }
    }
    edit_manifest(&mut manifest);
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");
}

/// Puts a NaN into tensor `tensor` of a published version's weights and updates the manifest's
/// sha256 and size for them: the files verify, only their content is wrong (a store that lies,
/// or a training run that diverged and was published anyway).
pub fn poison_weights(registry: &Path, name: &str, version: &str, tensor: &str) {
    use common::sha256_hex;
    let dir = registry.join(format!("models/{name}/versions/{version}"));
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    let tensors: Vec<(String, tch::Tensor)> = common::safetensors_io::decode(&bytes)
        .expect("decode weights")
        .into_iter()
        .map(|(n, t)| {
            if n == tensor {
                let poisoned = t.copy();
                let _ = poisoned.view([-1]).get(0).fill_(f64::NAN);
                (n, poisoned)
            } else {
                (n, t)
            }
        })
        .collect();
    assert!(
        tensors.iter().any(|(n, _)| n == tensor),
        "no tensor {tensor}"
    );
    let poisoned = common::safetensors_io::encode(&tensors).expect("encode weights");
    std::fs::write(dir.join("model.safetensors"), &poisoned).expect("write weights");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    if let Some(files) = manifest["files"].as_array_mut() {
        for f in files {
            if f["path"] == "model.safetensors" {
                f["sha256"] = sha256_hex(&poisoned).into();
                f["size"] = poisoned.len().into();
            }
        }
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");
}

/// Uploads every file under `dir` to `store` (relative paths kept).
pub async fn upload_dir(store: &common::store::Store, dir: &Path) {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .expect("prefix")
                    .to_string_lossy()
                    .to_string();
                out.push((rel, path));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    // Manifests and aliases last, as a publisher would.
    files.sort_by_key(|(rel, _)| {
        (
            rel.ends_with("manifest.json") || rel.contains("aliases/"),
            rel.clone(),
        )
    });
    for (rel, path) in files {
        store
            .put(
                &rel,
                bytes::Bytes::from(std::fs::read(&path).expect("read")),
            )
            .await
            .expect("upload");
    }
}

/// Copies a folder tree.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).expect("copy");
        }
    }
}

/// One small trained registry per test binary (training once), copied into `dst` for each test.
/// Returns the version that `latest` points at.
pub fn shared_registry(dst: &Path) -> String {
    static SEED: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    let (dir, version) = SEED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let version = train_small_checkpoint(dir.path(), "goemotions", &[]);
        (dir, version)
    });
    copy_tree(&dir.path().join("models"), &dst.join("models"));
    version.clone()
}
