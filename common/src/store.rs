//! Object storage addressed by URI: `file:///path` (or a plain path) and `s3://bucket/prefix`.
//! S3 credentials, region and endpoint come from the standard `AWS_*` environment variables;
//! a custom `AWS_ENDPOINT_URL` (MinIO, Ceph, s3s) uses path-style addressing.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URI {uri:?}: {message}")]
    Uri { uri: String, message: String },
    #[error("{uri}: not found")]
    NotFound { uri: String },
    #[error("{uri}: changed concurrently (conditional write lost): {message}")]
    Conflict { uri: String, message: String },
    #[error("{uri}: {source}")]
    Backend {
        uri: String,
        source: object_store::Error,
    },
    #[error("{uri}: {message}")]
    Io { uri: String, message: String },
}

/// Identifies the stored version of an object for a later conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// An object's name (relative to the folder it was listed from), size and entity tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub e_tag: Option<String>,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Write only if nothing is there yet.
    Absent,
    /// Write only if the object is still at this version.
    Version(ObjectVersion),
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URI of `prefix`, for messages and child URIs.
    uri: String,
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.uri)
    }
}

fn retry_config() -> RetryConfig {
    let timeout = std::env::var("OBJECT_STORE_RETRY_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(timeout),
        ..Default::default()
    }
}

/// Resolves `.` and `..` lexically (the folder need not exist, so it cannot be canonicalised).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Store {
    /// Opens `file:///abs/dir`, a plain filesystem path, or `s3://bucket[/prefix]`.
    pub fn open(uri: &str) -> Result<Self, StoreError> {
        let bad = |message: String| StoreError::Uri {
            uri: uri.to_string(),
            message,
        };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("missing bucket name".into()));
            }
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config());
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                builder = builder.with_region("us-east-1");
            }
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            return Ok(Self {
                inner: Arc::new(s3),
                prefix: Path::from(prefix),
                uri: format!(
                    "s3://{bucket}{}{prefix}",
                    if prefix.is_empty() { "" } else { "/" }
                ),
                local_root: None,
            });
        }
        let path = match uri.strip_prefix("file://") {
            Some(p) => p.to_string(),
            None if uri.contains("://") => {
                return Err(bad("unsupported scheme (use file:// or s3://)".into()))
            }
            None => uri.to_string(),
        };
        if path.is_empty() {
            return Err(bad("empty path".into()));
        }
        // Opening never touches the filesystem: reading a missing folder gives NotFound, and only
        // writes create folders (object_store's local puts create their parents).
        let abs = normalize(&std::path::absolute(&path).map_err(|e| bad(e.to_string()))?);
        let prefix = Path::from_absolute_path(&abs).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(LocalFileSystem::new()),
            prefix,
            uri: format!("file://{}", abs.display()),
            local_root: Some(abs),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A store rooted at `sub` below this one (`a/b/c`).
    pub fn child(&self, sub: &str) -> Store {
        let mut prefix = self.prefix.clone();
        for part in sub.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.child(part);
        }
        let sub = sub.trim_matches('/');
        Store {
            inner: self.inner.clone(),
            prefix,
            uri: format!("{}/{}", self.uri.trim_end_matches('/'), sub),
            local_root: self.local_root.clone(),
        }
    }

    fn path(&self, name: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            p = p.child(part);
        }
        p
    }

    fn err(&self, name: &str, e: object_store::Error) -> StoreError {
        let uri = format!("{}/{}", self.uri, name);
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { uri },
            object_store::Error::Precondition { source, .. }
            | object_store::Error::AlreadyExists { source, .. } => StoreError::Conflict {
                uri,
                message: source.to_string(),
            },
            source => StoreError::Backend { uri, source },
        }
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        Ok(self.get_versioned(name).await?.0)
    }

    /// The object's bytes and version (for a later conditional write).
    pub async fn get_versioned(&self, name: &str) -> Result<(Bytes, ObjectVersion), StoreError> {
        let result = self
            .inner
            .get(&self.path(name))
            .await
            .map_err(|e| self.err(name, e))?;
        let version = ObjectVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result.bytes().await.map_err(|e| self.err(name, e))?;
        Ok((bytes, version))
    }

    /// `Ok(None)` when the object does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<(Bytes, ObjectVersion)>, StoreError> {
        match self.get_versioned(name).await {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object's size in bytes.
    pub async fn size(&self, name: &str) -> Result<u64, StoreError> {
        let meta = self
            .inner
            .head(&self.path(name))
            .await
            .map_err(|e| self.err(name, e))?;
        Ok(meta.size)
    }

    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(name, e)),
        }
    }

    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    /// Writes only if the object is as expected; otherwise `StoreError::Conflict`.
    /// S3 uses conditional requests (If-None-Match / If-Match on the ETag). The local filesystem
    /// has no conditional overwrite, so it compares under an exclusive file lock instead.
    pub async fn put_if(&self, name: &str, bytes: Bytes, expect: Expect) -> Result<(), StoreError> {
        if let Some(root) = &self.local_root {
            return self.put_if_local(root.clone(), name, bytes, expect).await;
        }
        let mode = match expect {
            Expect::Absent => PutMode::Create,
            Expect::Version(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.inner
            .put_opts(&self.path(name), PutPayload::from(bytes), opts)
            .await
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    async fn put_if_local(
        &self,
        root: std::path::PathBuf,
        name: &str,
        bytes: Bytes,
        expect: Expect,
    ) -> Result<(), StoreError> {
        let uri = format!("{}/{}", self.uri, name);
        let io = |message: String| StoreError::Io {
            uri: uri.clone(),
            message,
        };
        let lock_path = root.join(".conditional-put.lock");
        let lock = tokio::task::spawn_blocking(move || -> Result<std::fs::File, String> {
            use std::os::fd::AsRawFd;
            std::fs::create_dir_all(&root)
                .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| format!("cannot open lock {}: {e}", lock_path.display()))?;
            // SAFETY: flock on an fd we own; the lock is released when the file is closed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!("flock failed: {}", std::io::Error::last_os_error()));
            }
            Ok(file)
        })
        .await
        .map_err(|e| io(e.to_string()))?
        .map_err(io)?;
        let current = self.get_opt(name).await?;
        let matches = match (&expect, &current) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some((_, cur))) => v == cur,
            _ => false,
        };
        let result = if matches {
            self.put(name, bytes).await
        } else {
            Err(StoreError::Conflict {
                uri: uri.clone(),
                message: "object is not at the expected version".into(),
            })
        };
        drop(lock);
        result
    }

    /// Names directly below `dir` (both objects and "folders"), sorted.
    pub async fn list_children(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.path(dir);
        let listing = match self.inner.list_with_delimiter(Some(&prefix)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(dir, e)),
        };
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .chain(listing.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(name, e)),
        }
    }

    /// Every object under `dir` (at any depth), sorted by name; names are relative to `dir`.
    pub async fn list_objects(&self, dir: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = self.path(dir);
        let objects: Vec<_> = match self.inner.list(Some(&prefix)).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(dir, e)),
        };
        let mut found: Vec<ObjectInfo> = objects
            .into_iter()
            .filter_map(|o| {
                let name = o
                    .location
                    .prefix_match(&prefix)?
                    .map(|p| p.as_ref().to_string());
                Some(ObjectInfo {
                    name: name.collect::<Vec<_>>().join("/"),
                    size: o.size,
                    e_tag: o.e_tag,
                })
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The object's size and entity tag, or `None` when there is no such object.
    pub async fn head(&self, name: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self.inner.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                name: name.to_string(),
                size: meta.size,
                e_tag: meta.e_tag,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(name, e)),
        }
    }

    /// The file behind `name` when this store is a local folder (read it in place).
    pub fn local_path(&self, name: &str) -> Option<std::path::PathBuf> {
        self.local_root.as_ref().map(|root| {
            name.split('/')
                .filter(|p| !p.is_empty())
                .fold(root.clone(), |path, part| path.join(part))
        })
    }

    /// Streams the object into the local file `to` (created or truncated), never holding it
    /// whole in memory; returns the bytes written.
    pub async fn download(&self, name: &str, to: &std::path::Path) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| StoreError::Io {
            uri: to.display().to_string(),
            message: e.to_string(),
        };
        let result = self
            .inner
            .get(&self.path(name))
            .await
            .map_err(|e| self.err(name, e))?;
        let mut stream = result.into_stream();
        let mut file = tokio::fs::File::create(to).await.map_err(io)?;
        let mut written = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.err(name, e))? {
            file.write_all(&chunk).await.map_err(io)?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(written)
    }

    /// Deletes every object under `dir`.
    pub async fn delete_all(&self, dir: &str) -> Result<(), StoreError> {
        let prefix = self.path(dir);
        let objects: Vec<_> = match self.inner.list(Some(&prefix)).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(self.err(dir, e)),
        };
        for o in objects {
            self.inner
                .delete(&o.location)
                .await
                .map_err(|e| self.err(dir, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_put_get_and_conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap())
            .unwrap()
            .child("a/b");
        store.put("x.json", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(store.get("x.json").await.unwrap(), Bytes::from_static(b"1"));
        assert!(matches!(
            store.get("nope").await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.list_children("").await.unwrap(), vec!["x.json"]);

        store
            .put_if("alias", Bytes::from_static(b"v1"), Expect::Absent)
            .await
            .unwrap();
        let err = store
            .put_if("alias", Bytes::from_static(b"v2"), Expect::Absent)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        let (_, seen) = store.get_versioned("alias").await.unwrap();
        store
            .put_if(
                "alias",
                Bytes::from_static(b"v2"),
                Expect::Version(seen.clone()),
            )
            .await
            .unwrap();
        let stale = store
            .put_if("alias", Bytes::from_static(b"v3"), Expect::Version(seen))
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
        assert_eq!(store.get("alias").await.unwrap(), Bytes::from_static(b"v2"));
    }

    #[tokio::test]
    async fn opening_and_reading_a_missing_folder_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/../c");
        let store = Store::open(missing.to_str().unwrap()).unwrap();
        assert!(store.uri().ends_with("/a/c"), "{}", store.uri());
        assert!(matches!(
            store.get("config.json").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(!store.exists("config.json").await.unwrap());
        assert!(store.list_children("").await.unwrap().is_empty());
        assert!(!dir.path().join("a").exists(), "reading created folders");
        store
            .put("x/y.json", Bytes::from_static(b"1"))
            .await
            .unwrap();
        assert!(dir.path().join("a/c/x/y.json").exists());
    }

    #[tokio::test]
    async fn objects_are_listed_at_any_depth_and_downloaded_in_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("in").to_str().unwrap()).unwrap();
        store
            .put("b.jsonl", Bytes::from_static(b"12345"))
            .await
            .unwrap();
        store
            .put("a/x.jsonl", Bytes::from_static(b"1"))
            .await
            .unwrap();
        let listed = store.list_objects("").await.unwrap();
        let names: Vec<(&str, u64)> = listed.iter().map(|o| (o.name.as_str(), o.size)).collect();
        assert_eq!(names, vec![("a/x.jsonl", 1), ("b.jsonl", 5)]);
        assert_eq!(
            store.head("b.jsonl").await.unwrap().map(|o| o.size),
            Some(5)
        );
        assert_eq!(store.head("nope").await.unwrap(), None);
        assert_eq!(
            store.local_path("a/x.jsonl"),
            Some(dir.path().join("in/a/x.jsonl"))
        );
        let copy = dir.path().join("copy");
        assert_eq!(store.download("b.jsonl", &copy).await.unwrap(), 5);
        assert_eq!(std::fs::read(&copy).unwrap(), b"12345");
        assert!(Store::open(dir.path().join("none").to_str().unwrap())
            .unwrap()
            .list_objects("")
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_unknown_schemes() {
        assert!(Store::open("gs://bucket").is_err());
        assert!(Store::open("s3://").is_err());
    }
}
