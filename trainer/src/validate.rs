//! One validation step for a training job, shared by `trainer train` and `StartTraining`: every
//! field is checked before any work starts, so a job that would fail later (at publish, or with a
//! torch error mid-run) fails at once with a message naming the field.
use std::path::Path;

use common::checkpoint::{self, CONFIG, TOKENIZER, WEIGHTS};
use common::data::Dataset;
use common::model::{BertConfig, Pooling, Precision, ProblemType};
use common::registry::{self, Registry};
use common::store::{Store, StoreError};
use common::tokenizer::TextTokenizer;

use crate::config::{JobSpec, TrainConfig};
use crate::teachers::{self, TeacherData};

/// Upper bounds that keep a typo from asking for a run of years.
pub const MAX_EPOCHS: u32 = 1000;
pub const MAX_BATCH_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The value can never work.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The value could not be checked because its store did not answer (worth a retry).
    #[error("{field}: {source}")]
    Unreachable { field: String, source: StoreError },
}

impl ValidationError {
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Unreachable { field, .. } => field,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks the numbers of a training configuration.
pub fn check_config(cfg: &TrainConfig) -> Result<(), ValidationError> {
    let h = |name: &str| format!("hyperparameters.{name}");
    // Zero epochs publishes the start as it is: only a trained start (init_from) may do that.
    let fewest_epochs = u32::from(cfg.init_from.is_empty());
    if !(fewest_epochs..=MAX_EPOCHS).contains(&cfg.epochs) {
        return Err(invalid(
            &h("epochs"),
            format!(
                "must be in 1..={MAX_EPOCHS} (0 only with init_from), found {}",
                cfg.epochs
            ),
        ));
    }
    for (name, value) in [
        ("batch_size", cfg.batch_size),
        ("eval_batch_size", cfg.eval_batch_size),
    ] {
        if !(1..=MAX_BATCH_SIZE).contains(&value) {
            return Err(invalid(
                &h(name),
                format!("must be in 1..={MAX_BATCH_SIZE}, found {value}"),
            ));
        }
    }
    let finite_in = |name: &str, value: f64, ok: bool, interval: &str| {
        if value.is_finite() && ok {
            Ok(())
        } else {
            Err(invalid(
                &h(name),
                format!("must be a finite number in {interval}, found {value}"),
            ))
        }
    };
    let (lr, warmup, decay, clip) = (
        cfg.learning_rate,
        cfg.warmup_ratio,
        cfg.weight_decay,
        cfg.max_grad_norm,
    );
    finite_in("learning_rate", lr, lr > 0.0 && lr <= 1.0, "(0, 1]")?;
    finite_in(
        "warmup_ratio",
        warmup,
        (0.0..=1.0).contains(&warmup),
        "[0, 1]",
    )?;
    finite_in("weight_decay", decay, (0.0..1.0).contains(&decay), "[0, 1)")?;
    finite_in("max_grad_norm", clip, clip > 0.0, "(0, ∞)")?;
    if let Some(p) = cfg.dropout {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(invalid(
                &h("dropout"),
                format!("must be in [0, 1), found {p}"),
            ));
        }
    }
    finite_in(
        "loss_gamma",
        cfg.loss_gamma,
        (0.0..=10.0).contains(&cfg.loss_gamma),
        "[0, 10]",
    )?;
    finite_in(
        "asl_clip",
        cfg.asl_clip,
        (0.0..0.5).contains(&cfg.asl_clip),
        "[0, 0.5)",
    )?;
    finite_in(
        "label_smoothing",
        cfg.label_smoothing,
        (0.0..0.5).contains(&cfg.label_smoothing),
        "[0, 0.5)",
    )?;
    finite_in(
        "distill_weight",
        cfg.distill_weight,
        (0.0..=1.0).contains(&cfg.distill_weight),
        "[0, 1]",
    )?;
    finite_in(
        "layer_lr_decay",
        cfg.layer_lr_decay,
        cfg.layer_lr_decay > 0.0 && cfg.layer_lr_decay <= 1.0,
        "(0, 1]",
    )?;
    finite_in(
        "rdrop_weight",
        cfg.rdrop_weight,
        (0.0..=10.0).contains(&cfg.rdrop_weight),
        "[0, 10]",
    )?;
    finite_in(
        "ema_decay",
        cfg.ema_decay,
        (0.0..1.0).contains(&cfg.ema_decay),
        "[0, 1)",
    )?;
    if let Some(fold) = cfg.holdout_fold {
        fold.check()
            .map_err(|message| invalid(&h("holdout_fold"), message))?;
    }
    for (name, uris) in [("teachers", &cfg.teachers), ("init_from", &cfg.init_from)] {
        if let Some(i) = uris.iter().position(|t| t.trim().is_empty()) {
            return Err(invalid(&format!("{}[{i}]", h(name)), "is empty"));
        }
    }
    if cfg.epochs == 0 && !cfg.teachers.is_empty() {
        return Err(invalid(
            &h("teachers"),
            "distillation needs training, and epochs is 0",
        ));
    }
    if cfg.patience == 0 {
        return Err(invalid(&h("patience"), "must be at least 1"));
    }
    if cfg.max_steps == Some(0) {
        return Err(invalid(
            &h("max_steps"),
            "must be at least 1 (a run of 0 steps would publish an untrained model)",
        ));
    }
    if cfg.max_length < checkpoint::MIN_MAX_LENGTH {
        return Err(invalid(
            &h("max_length"),
            format!(
                "must be at least {} ([CLS], a token, [SEP]), found {}",
                checkpoint::MIN_MAX_LENGTH,
                cfg.max_length
            ),
        ));
    }
    Ok(())
}

fn check_names(spec: &JobSpec) -> Result<(), ValidationError> {
    let named = |field: &str, value: &str| {
        registry::check_name(value).map_err(|e| invalid(field, e.to_string()))
    };
    named("model_name", &spec.model_name)?;
    if let Some(alias) = &spec.alias {
        named("alias", alias)?;
    }
    if let Some(version) = &spec.version {
        named("version", version)?;
    }
    Ok(())
}

fn check_data_dir(dir: &Path) -> Result<(), ValidationError> {
    common::data::detect_format(dir).map_err(|e| invalid("data_dir", e.to_string()))?;
    Ok(())
}

/// Reads the base model's config and tokenizer (and checks its weights exist): a readable BERT
/// checkpoint whose position table fits `max_length`.
async fn check_base_model(uri: &str, max_length: usize) -> Result<(), ValidationError> {
    const FIELD: &str = "base_model";
    let fetch_error = |e: StoreError| match e {
        StoreError::Backend { .. } => ValidationError::Unreachable {
            field: FIELD.into(),
            source: e,
        },
        other => invalid(FIELD, format!("not a readable BERT checkpoint: {other}")),
    };
    let store = Store::open(uri).map_err(fetch_error)?;
    let config = store.get(CONFIG).await.map_err(fetch_error)?;
    let config = BertConfig::from_json(&config)
        .map_err(|e| invalid(FIELD, format!("{}/{CONFIG}: {e}", store.uri())))?;
    config
        .validate()
        .map_err(|e| invalid(FIELD, format!("{}/{CONFIG}: {e}", store.uri())))?;
    checkpoint::check_max_length(&config, max_length)
        .map_err(|e| invalid("hyperparameters.max_length", e.to_string()))?;
    let tokenizer = store.get(TOKENIZER).await.map_err(fetch_error)?;
    let tokenizer = TextTokenizer::from_bytes(&tokenizer, max_length)
        .map_err(|e| invalid(FIELD, format!("{}/{TOKENIZER}: {e}", store.uri())))?;
    checkpoint::check_vocab(&config, &tokenizer).map_err(|e| invalid(FIELD, e.to_string()))?;
    if !store.exists(WEIGHTS).await.map_err(fetch_error)? {
        return Err(invalid(
            FIELD,
            format!(
                "not a readable BERT checkpoint: {}/{WEIGHTS} not found",
                store.uri()
            ),
        ));
    }
    Ok(())
}

/// The manifest of a published checkpoint (version or alias) named by `field`.
async fn read_published(field: &str, uri: &str) -> Result<checkpoint::Manifest, ValidationError> {
    let unreadable = |e: String| invalid(field, format!("{uri}: {e}"));
    let model = registry::ModelRef::parse(uri).map_err(|e| unreadable(e.to_string()))?;
    let (store, _) = model
        .resolve()
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    checkpoint::read_manifest(&store)
        .await
        .map_err(|e| unreadable(e.to_string()))
}

/// A teacher must be a published checkpoint (version or alias) with the data's labels; returns
/// what it records about its training data.
async fn check_teacher(
    field: &str,
    uri: &str,
    labels: &[String],
    train_file: &str,
) -> Result<TeacherData, ValidationError> {
    let manifest = read_published(field, uri).await?;
    let unreadable = |e: String| invalid(field, format!("{uri}: {e}"));
    if manifest.labels != labels {
        return Err(invalid(
            field,
            format!(
                "{uri} has {} labels that are not the data's {}: a teacher must be trained on the same labels",
                manifest.labels.len(),
                labels.len()
            ),
        ));
    }
    TeacherData::from_manifest(&manifest, train_file).map_err(unreadable)
}

/// A checkpoint to start from: readable, with the data's labels, the job's problem type and
/// pooling. Architecture and tokenizer are compared with the base model's when the job loads it.
async fn check_start(
    field: &str,
    uri: &str,
    labels: &[String],
    problem: ProblemType,
    pooling: Pooling,
) -> Result<(), ValidationError> {
    let manifest = read_published(field, uri).await?;
    let differs = |what: &str, theirs: String, ours: String| {
        invalid(
            field,
            format!("{uri} has {what} {theirs}, the job {ours}: a start must match the job"),
        )
    };
    if manifest.labels != labels {
        return Err(differs(
            "labels",
            format!("({})", manifest.labels.len()),
            format!("the data's ({})", labels.len()),
        ));
    }
    if manifest.problem_type != problem {
        return Err(differs(
            "problem type",
            manifest.problem_type.to_string(),
            problem.to_string(),
        ));
    }
    let theirs = manifest
        .pooling()
        .map_err(|e| invalid(field, format!("{uri}: {e}")))?;
    if theirs != pooling {
        return Err(differs(
            "pooling",
            theirs.as_str().into(),
            pooling.as_str().into(),
        ));
    }
    Ok(())
}

/// Each `init_from` and `teachers` entry that names an alias, replaced by the version the alias
/// names now. A job reads the checkpoints it was validated against from its first step to its
/// last, also when it resumes after a restart, wherever the alias has moved meanwhile. A store
/// that does not answer is `Unreachable` (worth a retry), not an invalid field.
pub async fn pin_checkpoints(train: &mut TrainConfig) -> Result<(), ValidationError> {
    for (name, uris) in [
        ("init_from", &mut train.init_from),
        ("teachers", &mut train.teachers),
    ] {
        for (i, uri) in uris.iter_mut().enumerate() {
            let field = format!("hyperparameters.{name}[{i}]");
            let unreadable = |e: registry::RegistryError| match e {
                registry::RegistryError::Store(source @ StoreError::Backend { .. }) => {
                    ValidationError::Unreachable {
                        field: field.clone(),
                        source,
                    }
                }
                e => invalid(&field, format!("{uri}: {e}")),
            };
            let model = registry::ModelRef::parse(uri).map_err(unreadable)?;
            if matches!(model, registry::ModelRef::Alias { .. }) {
                let (store, _) = model.resolve().await.map_err(unreadable)?;
                *uri = store.uri().to_string();
            }
        }
    }
    Ok(())
}

/// What the checks need from the job's data (the training split after any held-out fold).
struct DataFacts {
    single_label: bool,
    labels: Vec<String>,
    train_file: String,
    train_sha256: Option<String>,
    train_examples: usize,
}

/// Checks every field of a job before it exists; returns the precision it will train in.
pub async fn check_job(spec: &JobSpec) -> Result<Precision, ValidationError> {
    check_names(spec)?;
    check_config(&spec.train)?;
    for (name, limit) in [
        ("train_limit", spec.limits.train),
        ("dev_limit", spec.limits.dev),
        ("test_limit", spec.limits.test),
    ] {
        if limit == Some(0) {
            return Err(invalid(
                &format!("hyperparameters.{name}"),
                "must be at least 1 when set",
            ));
        }
    }
    let precision = spec
        .train
        .precision
        .resolve_for_training(spec.device)
        .map_err(|e| invalid("hyperparameters.precision", e.to_string()))?;
    Registry::open(&spec.registry).map_err(|e| invalid("registry", e.to_string()))?;
    check_data_dir(&spec.data_dir)?;
    let dir = spec.data_dir.clone();
    let (limits, seed) = (spec.limits, spec.train.seed);
    let holdout = spec.train.holdout_fold;
    let data = tokio::task::spawn_blocking(move || {
        Dataset::load(&dir, limits, seed).map(|mut d| {
            if let Some(fold) = holdout {
                d.hold_out(fold);
            }
            DataFacts {
                single_label: d.is_single_label(),
                train_file: d.train_file(),
                train_sha256: d.train_sha256().map(str::to_string),
                train_examples: d.train.len(),
                labels: d.labels.names,
            }
        })
    })
    .await
    .map_err(|e| invalid("data_dir", format!("reading the data failed: {e}")))?
    .map_err(|e| invalid("data_dir", e.to_string()))?;
    if let (Some(fold), 0) = (holdout, data.train_examples) {
        return Err(invalid(
            "hyperparameters.holdout_fold",
            format!("holding out fold {fold} leaves no training examples"),
        ));
    }
    let problem = spec
        .train
        .problem_type
        .resolve(data.single_label)
        .map_err(|e| invalid("hyperparameters.problem_type", e))?;
    check_base_model(&spec.base_model, spec.train.max_length).await?;
    for (i, uri) in spec.train.init_from.iter().enumerate() {
        let field = format!("hyperparameters.init_from[{i}]");
        check_start(&field, uri, &data.labels, problem, spec.train.pooling).await?;
    }
    let mut teachers = Vec::with_capacity(spec.train.teachers.len());
    for (i, uri) in spec.train.teachers.iter().enumerate() {
        let field = format!("hyperparameters.teachers[{i}]");
        teachers.push(check_teacher(&field, uri, &data.labels, &data.train_file).await?);
    }
    teachers::plan(&teachers, data.train_sha256.as_deref())
        .map_err(|e| invalid("hyperparameters.teachers", e))?;
    Ok(precision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_number_names_its_field() {
        let ok = TrainConfig::default();
        check_config(&ok).unwrap();
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    epochs: 0,
                    ..ok.clone()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    epochs: u32::MAX,
                    ..ok.clone()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                TrainConfig {
                    learning_rate: f64::INFINITY,
                    ..ok.clone()
                },
                "learning_rate",
            ),
            (
                TrainConfig {
                    learning_rate: 0.0,
                    ..ok.clone()
                },
                "learning_rate",
            ),
            (
                TrainConfig {
                    warmup_ratio: f64::NAN,
                    ..ok.clone()
                },
                "warmup_ratio",
            ),
            (
                TrainConfig {
                    weight_decay: -0.1,
                    ..ok.clone()
                },
                "weight_decay",
            ),
            (
                TrainConfig {
                    dropout: Some(5.0),
                    ..ok.clone()
                },
                "dropout",
            ),
            (
                TrainConfig {
                    max_steps: Some(0),
                    ..ok.clone()
                },
                "max_steps",
            ),
            (
                TrainConfig {
                    max_length: 0,
                    ..ok.clone()
                },
                "max_length",
            ),
            (
                TrainConfig {
                    patience: 0,
                    ..ok.clone()
                },
                "patience",
            ),
            (
                TrainConfig {
                    max_grad_norm: f64::NAN,
                    ..ok.clone()
                },
                "max_grad_norm",
            ),
            (
                TrainConfig {
                    loss_gamma: -1.0,
                    ..ok.clone()
                },
                "loss_gamma",
            ),
            (
                TrainConfig {
                    asl_clip: 0.5,
                    ..ok.clone()
                },
                "asl_clip",
            ),
            (
                TrainConfig {
                    label_smoothing: f64::NAN,
                    ..ok.clone()
                },
                "label_smoothing",
            ),
            (
                TrainConfig {
                    distill_weight: 1.5,
                    ..ok.clone()
                },
                "distill_weight",
            ),
            (
                TrainConfig {
                    layer_lr_decay: 0.0,
                    ..ok.clone()
                },
                "layer_lr_decay",
            ),
            (
                TrainConfig {
                    rdrop_weight: f64::INFINITY,
                    ..ok.clone()
                },
                "rdrop_weight",
            ),
            (
                TrainConfig {
                    ema_decay: 1.0,
                    ..ok.clone()
                },
                "ema_decay",
            ),
            (
                TrainConfig {
                    teachers: vec!["output/registry/models/a/aliases/latest".into(), " ".into()],
                    ..ok.clone()
                },
                "teachers[1]",
            ),
            (
                TrainConfig {
                    init_from: vec!["".into()],
                    ..ok.clone()
                },
                "init_from[0]",
            ),
            (
                TrainConfig {
                    epochs: 0,
                    init_from: vec!["output/registry/models/a/aliases/latest".into()],
                    teachers: vec!["output/registry/models/b/aliases/latest".into()],
                    ..ok.clone()
                },
                "teachers",
            ),
        ];
        for (cfg, field) in cases {
            let err = check_config(&cfg).unwrap_err();
            assert_eq!(err.field(), format!("hyperparameters.{field}"), "{err}");
        }
        // No epochs is a start published as it is: only with a start.
        check_config(&TrainConfig {
            epochs: 0,
            init_from: vec!["output/registry/models/a/aliases/latest".into()],
            ..ok.clone()
        })
        .unwrap();
    }

    #[tokio::test]
    async fn aliases_are_pinned_to_the_version_they_name_at_validation() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        let aliases = registry.join("models/m/aliases");
        std::fs::create_dir_all(&aliases).unwrap();
        std::fs::write(
            aliases.join("latest.json"),
            r#"{"version": "v1", "updated_at": "2026-12-05T00:00:00Z"}"#,
        )
        .unwrap();
        let alias = format!("{}/models/m/aliases/latest", registry.display());
        let fixed = format!("{}/models/m/versions/v0", registry.display());
        let mut train = TrainConfig {
            init_from: vec![alias.clone(), fixed.clone()],
            teachers: vec![alias.clone()],
            ..TrainConfig::default()
        };
        pin_checkpoints(&mut train).await.unwrap();
        let pinned = format!("file://{}/models/m/versions/v1", registry.display());
        assert_eq!(train.init_from, vec![pinned.clone(), fixed]);
        assert_eq!(train.teachers, vec![pinned]);

        // An alias that names nothing is refused, naming its entry.
        let mut missing = TrainConfig {
            teachers: vec![
                alias,
                format!("{}/models/m/aliases/gone", registry.display()),
            ],
            ..TrainConfig::default()
        };
        let err = pin_checkpoints(&mut missing).await.unwrap_err();
        assert_eq!(err.field(), "hyperparameters.teachers[1]", "{err}");
    }
}
