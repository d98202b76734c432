//! The model registry in object storage:
//! `<root>/models/<name>/versions/<version>/` holds an immutable checkpoint and
//! `<root>/models/<name>/aliases/<alias>.json` points at a version. Aliases are moved with
//! conditional writes, so two publishers can never silently overwrite each other, and only ever
//! point at versions whose manifest (written last) exists.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError, Manifest};
use crate::store::{Expect, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("model {name:?} has no version {version:?}")]
    UnknownVersion { name: String, version: String },
    #[error("model {name:?} has no alias {alias:?}")]
    UnknownAlias { name: String, alias: String },
    #[error("version {version:?} of {name:?} already exists; versions are immutable")]
    VersionExists { name: String, version: String },
    #[error(
        "alias {alias:?} of {name:?} was not at {expected:?} (found {found:?}); nothing changed"
    )]
    AliasMoved {
        name: String,
        alias: String,
        expected: Option<String>,
        found: Option<String>,
    },
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    #[error("{uri}: invalid alias record: {message}")]
    AliasRecord { uri: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasRecord {
    pub version: String,
    pub updated_at: String,
    /// Unique per write: tells a writer whether the record it reads back is its own (an HTTP
    /// client may retry a conditional PUT whose first attempt landed, and then see a conflict).
    #[serde(default)]
    pub write_id: String,
}

/// Alias writes of this process go one at a time: the store's conditional write guards against
/// other processes, and this keeps a process from racing itself on servers whose conditional
/// writes are not atomic under concurrency (seen with s3s-fs 0.14).
static ALIAS_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A new, sortable version id: UTC time plus a random suffix.
pub fn new_version_id() -> String {
    let suffix: u32 = rand::random();
    format!(
        "{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        suffix
    )
}

/// Registry names (models, versions, aliases): 1–128 of letters, digits, '-', '_' and '.', not
/// starting with '.', so a name can never climb out of its folder.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.to_string()))
    }
}

#[derive(Clone, Debug)]
pub struct Registry {
    root: Store,
}

impl Registry {
    pub fn new(root: Store) -> Self {
        Self { root }
    }

    pub fn open(uri: &str) -> Result<Self, RegistryError> {
        Ok(Self::new(Store::open(uri)?))
    }

    pub fn root(&self) -> &Store {
        &self.root
    }

    pub fn version_store(&self, name: &str, version: &str) -> Store {
        self.root
            .child(&format!("models/{name}/versions/{version}"))
    }

    fn aliases(&self, name: &str) -> Store {
        self.root.child(&format!("models/{name}/aliases"))
    }

    /// Writes a new immutable version (files first, manifest last). Does not move any alias.
    pub async fn publish(
        &self,
        name: &str,
        files: &[(String, Bytes)],
        manifest: Manifest,
    ) -> Result<Manifest, RegistryError> {
        let staged = self.stage_version(name, files, manifest).await?;
        self.commit_version(&staged).await?;
        Ok(staged)
    }

    /// Writes a new version's files (not its manifest, so it stays invisible); returns the
    /// manifest to commit it with.
    pub async fn stage_version(
        &self,
        name: &str,
        files: &[(String, Bytes)],
        mut manifest: Manifest,
    ) -> Result<Manifest, RegistryError> {
        check_name(name)?;
        check_name(&manifest.version)?;
        let store = self.version_store(name, &manifest.version);
        if store.exists(checkpoint::MANIFEST).await? {
            return Err(RegistryError::VersionExists {
                name: name.into(),
                version: manifest.version,
            });
        }
        manifest.model_name = name.to_string();
        Ok(checkpoint::write_files(&store, files, manifest).await?)
    }

    /// Writes a staged version's manifest: from now on readers see the version.
    pub async fn commit_version(&self, manifest: &Manifest) -> Result<(), RegistryError> {
        check_name(&manifest.model_name)?;
        check_name(&manifest.version)?;
        let store = self.version_store(&manifest.model_name, &manifest.version);
        Ok(checkpoint::write_manifest(&store, manifest).await?)
    }

    /// Removes a version that must not be served (a job that failed or was cancelled after its
    /// files were written): the manifest first, so readers stop seeing it at once, then the rest.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        check_name(name)?;
        check_name(version)?;
        let store = self.version_store(name, version);
        store.delete(checkpoint::MANIFEST).await?;
        store.delete_all("").await?;
        Ok(())
    }

    /// Versions with a manifest (i.e. completely published), oldest first.
    pub async fn list_versions(&self, name: &str) -> Result<Vec<Manifest>, RegistryError> {
        check_name(name)?;
        let mut out = Vec::new();
        for version in self
            .root
            .child(&format!("models/{name}/versions"))
            .list_children("")
            .await?
        {
            match checkpoint::read_manifest(&self.version_store(name, &version)).await {
                Ok(m) => out.push(m),
                Err(CheckpointError::Store(StoreError::NotFound { .. })) => {} // still being written
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Alias names of a model with the versions they point at.
    pub async fn list_aliases(&self, name: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let mut out = Vec::new();
        for file in self.aliases(name).list_children("").await? {
            if let Some(alias) = file.strip_suffix(".json") {
                if let Some(record) = self.get_alias(name, alias).await? {
                    out.push((alias.to_string(), record.version));
                }
            }
        }
        Ok(out)
    }

    pub async fn get_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<AliasRecord>, RegistryError> {
        Ok(self.get_alias_versioned(name, alias).await?.map(|(r, _)| r))
    }

    async fn get_alias_versioned(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<(AliasRecord, crate::store::ObjectVersion)>, RegistryError> {
        check_name(name)?;
        check_name(alias)?;
        let store = self.aliases(name);
        let file = format!("{alias}.json");
        match store.get_opt(&file).await? {
            None => Ok(None),
            Some((bytes, version)) => {
                let record =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::AliasRecord {
                        uri: format!("{}/{file}", store.uri()),
                        message: e.to_string(),
                    })?;
                Ok(Some((record, version)))
            }
        }
    }

    /// Points `alias` at `version` (which must be completely published). With `expected`, only if the
    /// alias currently points there (`Some(None)`: only if it does not exist yet). Either way the write
    /// is conditional on what was read, so a concurrent update makes this fail with `AliasMoved`.
    /// Returns the version it pointed at before.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
        expected: Option<Option<String>>,
    ) -> Result<Option<String>, RegistryError> {
        check_name(name)?;
        check_name(alias)?;
        check_name(version)?;
        if !self
            .version_store(name, version)
            .exists(checkpoint::MANIFEST)
            .await?
        {
            return Err(RegistryError::UnknownVersion {
                name: name.into(),
                version: version.into(),
            });
        }
        let _one_at_a_time = ALIAS_WRITES.lock().await;
        let current = self.get_alias_versioned(name, alias).await?;
        let found = current.as_ref().map(|(r, _)| r.version.clone());
        if let Some(expected) = &expected {
            if *expected != found {
                return Err(RegistryError::AliasMoved {
                    name: name.into(),
                    alias: alias.into(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let record = AliasRecord {
            version: version.to_string(),
            updated_at: chrono::Utc::now().to_rfc3339(),
            write_id: format!("{:032x}", rand::random::<u128>()),
        };
        let bytes =
            Bytes::from(serde_json::to_vec_pretty(&record).expect("alias record serializes"));
        let expect = match current {
            None => Expect::Absent,
            Some((_, v)) => Expect::Version(v),
        };
        match self
            .aliases(name)
            .put_if(&format!("{alias}.json"), bytes, expect)
            .await
        {
            Ok(()) => Ok(found),
            Err(StoreError::Conflict { .. }) => {
                // A retried request whose first attempt landed conflicts with itself: read back.
                let now = self.get_alias(name, alias).await?;
                if now.as_ref().map(|r| &r.write_id) == Some(&record.write_id) {
                    return Ok(found);
                }
                Err(RegistryError::AliasMoved {
                    name: name.into(),
                    alias: alias.into(),
                    expected: found,
                    found: now.map(|r| r.version),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The version an alias points at.
    pub async fn resolve_alias(&self, name: &str, alias: &str) -> Result<String, RegistryError> {
        self.get_alias(name, alias)
            .await?
            .map(|r| r.version)
            .ok_or_else(|| RegistryError::UnknownAlias {
                name: name.into(),
                alias: alias.into(),
            })
    }
}

/// What a model URI names.
#[derive(Debug, Clone)]
pub enum ModelRef {
    /// A fixed checkpoint: `<root>/models/<name>/versions/<v>` or any folder with a manifest.
    Checkpoint(Store),
    /// An alias to follow: `<root>/models/<name>/aliases/<alias>[.json]`.
    Alias {
        registry: Registry,
        name: String,
        alias: String,
    },
}

impl ModelRef {
    pub fn parse(uri: &str) -> Result<Self, RegistryError> {
        let trimmed = uri.trim_end_matches('/');
        if let Some((head, alias)) = trimmed.rsplit_once("/aliases/") {
            if let Some((root, name)) = head.rsplit_once("/models/") {
                let alias = alias.trim_end_matches(".json").to_string();
                check_name(&alias)?;
                check_name(name)?;
                return Ok(ModelRef::Alias {
                    registry: Registry::open(root)?,
                    name: name.to_string(),
                    alias,
                });
            }
        }
        Ok(ModelRef::Checkpoint(Store::open(trimmed)?))
    }

    /// The checkpoint this reference names right now, and its version id.
    pub async fn resolve(&self) -> Result<(Store, Option<String>), RegistryError> {
        match self {
            ModelRef::Checkpoint(store) => Ok((store.clone(), None)),
            ModelRef::Alias {
                registry,
                name,
                alias,
            } => {
                let version = registry.resolve_alias(name, alias).await?;
                Ok((registry.version_store(name, &version), Some(version)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn manifest(version: &str) -> Manifest {
        Manifest {
            format_version: checkpoint::FORMAT_VERSION,
            model_name: String::new(),
            version: version.into(),
            labels: vec!["a".into()],
            problem_type: Default::default(),
            thresholds: vec![0.5],
            global_threshold: 0.5,
            max_length: 8,
            pooling: "mean".into(),
            base_model: "b".into(),
            precision: String::new(),
            metrics: BTreeMap::new(),
            hyperparameters: serde_json::Value::Null,
            data_sha256: BTreeMap::new(),
            created_at: "now".into(),
            files: vec![],
            groupings: vec![],
            dataset: None,
            calibration: None,
        }
    }

    #[tokio::test]
    async fn publish_alias_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().to_str().unwrap()).unwrap();
        let files = vec![("config.json".to_string(), Bytes::from_static(b"{}"))];
        reg.publish("m", &files, manifest("v1")).await.unwrap();
        reg.publish("m", &files, manifest("v2")).await.unwrap();
        assert!(matches!(
            reg.publish("m", &files, manifest("v1")).await,
            Err(RegistryError::VersionExists { .. })
        ));
        assert!(matches!(
            reg.set_alias("m", "latest", "v9", None).await,
            Err(RegistryError::UnknownVersion { .. })
        ));
        assert_eq!(
            reg.set_alias("m", "latest", "v1", Some(None))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            reg.set_alias("m", "latest", "v2", None).await.unwrap(),
            Some("v1".into())
        );
        // A stale expectation loses and changes nothing.
        let err = reg
            .set_alias("m", "latest", "v1", Some(Some("v1".into())))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::AliasMoved { .. }), "{err}");
        assert_eq!(reg.resolve_alias("m", "latest").await.unwrap(), "v2");
        let versions: Vec<String> = reg
            .list_versions("m")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, vec!["v1", "v2"]);

        let uri = format!("{}/models/m/aliases/latest", dir.path().display());
        let (store, version) = ModelRef::parse(&uri).unwrap().resolve().await.unwrap();
        assert_eq!(version.as_deref(), Some("v2"));
        assert!(store.uri().ends_with("models/m/versions/v2"));
    }

    #[test]
    fn rejects_path_tricks_in_names() {
        assert!(check_name("../x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("20261126T083000Z-1a2b3c4d").is_ok());
    }
}
