//! Fine-tuning on small GoEmotions subsets with the packaged MiniLM: the loss goes down, the
//! under-trained labels of a short run keep no predict-everything threshold, divergence and bad
//! configurations are caught, bf16 keeps fp32 master weights, a resumed run equals an
//! uninterrupted one (with a weight average too, which is what gets published), distillation pulls towards the teachers' scores, and calibration (temperature or Platt scaling)
//! is what the published model serves. (A few dozen steps teach MiniLM little beyond the label priors — in
//! `transformers` too — so ranking quality is the main job's to show, not these tests'.)
use std::path::PathBuf;

use common::checkpoint::{self, BaseModel};
use common::data::{self, Dataset, SplitLimits};
use common::inference;
use common::labels::LabelSet;
use common::metrics::{self, Fallback};
use common::model::Precision;
use common::store::Store;
use tch::{Device, Kind, Tensor};
use trainer::config::{CalibrationChoice, TrainConfig};
use trainer::fine_tune::{self as train, TrainError};
use trainer::history::EpochRecord;
use trainer::observe::{Observer, Progress};
use trainer::resume::{ResumeMeta, ResumeState, StateError};

fn data_dir() -> PathBuf {
    std::env::var("GOEMOTIONS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/data/goemotions")
        })
}

fn base() -> BaseModel {
    let dir = std::env::var("GOEMOTIONS_BASE_MODEL").unwrap_or_else(|_| {
        format!(
            "{}/../.cache/models/all-MiniLM-L6-v2",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(checkpoint::read_base(&Store::open(&dir).unwrap()))
        .expect("run scripts/setup.sh first")
}

/// libtorch's thread count is process-wide: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Recorder {
    losses: Vec<f64>,
    epochs: Vec<EpochRecord>,
    states: Vec<(u64, Vec<u8>, ResumeMeta)>,
    keep_states: bool,
}

impl Observer for Recorder {
    fn progress(&mut self, p: &Progress) {
        self.losses.push(p.loss);
    }
    fn epoch_end(&mut self, r: &EpochRecord) {
        self.epochs.push(r.clone());
    }
    fn wants_state(&self) -> bool {
        self.keep_states
    }
    fn save_state(&mut self, state: &ResumeState) -> Result<(), StateError> {
        let tensors = state.encode_tensors()?;
        self.states
            .push((state.meta.global_step, tensors, state.meta.clone()));
        Ok(())
    }
}

fn limits(train: usize, dev: usize) -> SplitLimits {
    SplitLimits {
        train: Some(train),
        dev: Some(dev),
        test: Some(1),
    }
}

fn build(
    data: &Dataset,
    cfg: &TrainConfig,
) -> (
    common::model::BertClassifier,
    common::tokenizer::TextTokenizer,
) {
    train::build_model(
        &base(),
        &data.labels,
        common::model::ProblemType::MultiLabel,
        cfg,
        Device::Cpu,
        Precision::Fp32,
    )
    .unwrap()
}

fn small_config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 16,
        learning_rate: 2e-4,
        eval_batch_size: 64,
        ..TrainConfig::default()
    }
}

#[test]
fn subset_fine_tune_stores_no_predict_everything_threshold() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(400, 300), 42).unwrap();
    let cfg = small_config();
    let (model, tokenizer) = build(&data, &cfg);
    let mut rec = Recorder::default();
    let out = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &cfg,
        None,
        &mut rec,
    )
    .unwrap();

    // Running mean loss at the end is below the first reports.
    assert!(rec.losses.len() >= 4, "{:?}", rec.losses);
    let first = rec.losses[0];
    let last = *rec.losses.last().unwrap();
    assert!(last < first * 0.8, "loss did not go down: {:?}", rec.losses);
    assert_eq!(rec.epochs.len(), 1);

    let l = data.labels.len();
    let targets = data::targets(&data.dev, l);
    let t = &out.thresholds;
    let dev_texts: Vec<&str> = data.dev.iter().map(|e| e.text.as_str()).collect();
    let model_eval = metrics::evaluate(&out.dev_scores, &targets, &data.labels, &t.per_label);
    assert!(model_eval.empty_prediction_rate < 1.0);
    // The dev scores returned are those of the returned (best-epoch) model.
    let rescored = inference::score_all(
        &out.model,
        &out.tokenizer,
        &out.tokenizer.encode_all(&dev_texts).unwrap(),
        64,
    )
    .unwrap();
    let drift = rescored
        .iter()
        .zip(&out.dev_scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        drift < 1e-4,
        "dev scores are not the returned model's: {drift}"
    );
    // 400 examples and one epoch leave many labels under-trained: none may keep a threshold
    // that predicts it for half the dev texts, and labels with no dev positives use the global
    // threshold (through their temperature where calibration was applied).
    let calibrated = out.calibration.as_ref().is_some_and(|c| c.applied);
    let n = data.dev.len();
    for j in 0..l {
        let support = (0..n).filter(|&i| targets[i * l + j] == 1).count();
        let predicted = (0..n)
            .filter(|&i| out.dev_scores[i * l + j] >= t.per_label[j])
            .count();
        let (rate, prevalence) = (predicted as f64 / n as f64, support as f64 / n as f64);
        assert!(
            rate < 0.5 || rate < 3.0 * prevalence,
            "{}: threshold {} predicts it for {rate:.2} of dev (prevalence {prevalence:.2})",
            data.labels.names[j],
            t.per_label[j]
        );
        assert_eq!(
            support == 0,
            t.fallbacks[j] == Some(Fallback::NoPositives),
            "{}: {:?}",
            data.labels.names[j],
            t.fallbacks[j]
        );
        if t.fallbacks[j].is_some() && !calibrated {
            assert_eq!(t.per_label[j], t.global);
        }
    }
    // Label names travel in config.json (never LABEL_27).
    let names = out.model.config().label_names().unwrap();
    assert_eq!(names[27], "neutral");
}

#[test]
fn divergence_is_reported_not_published() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(64, 32), 1).unwrap();
    let cfg = small_config();
    let (model, tokenizer) = build(&data, &cfg);
    // A poisoned head makes the first loss NaN.
    tch::no_grad(|| {
        let _ = model.var_store().variables()["classifier.weight"]
            .shallow_clone()
            .fill_(f64::NAN);
    });
    let err = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &cfg,
        None,
        &mut Recorder::default(),
    )
    .err()
    .expect("must fail");
    assert!(
        matches!(err, TrainError::NonFinite { step: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("diverged"));

    // A configuration that cannot work is refused before any step.
    let (model, tokenizer) = build(&data, &cfg);
    let bad = TrainConfig {
        learning_rate: f64::INFINITY,
        ..small_config()
    };
    let err = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &bad,
        None,
        &mut Recorder::default(),
    )
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("learning_rate"), "{err}");
}

#[test]
fn bf16_tracks_fp32_and_keeps_fp32_master_weights() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(96, 48), 5).unwrap();
    let cfg = TrainConfig {
        max_steps: Some(6),
        warmup_ratio: 0.0,
        ..small_config()
    };
    let (mut model, tokenizer) = build(&data, &cfg);
    let texts: Vec<&str> = data.dev.iter().map(|e| e.text.as_str()).collect();
    let encoded = tokenizer.encode_all(&texts).unwrap();
    let fp32 = inference::score_all(&model, &tokenizer, &encoded, 16).unwrap();
    model.set_precision(Precision::Bf16);
    let bf16 = inference::score_all(&model, &tokenizer, &encoded, 16).unwrap();
    let diff = fp32
        .iter()
        .zip(&bf16)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 0.0, "bf16 must actually run in bf16");
    assert!(diff < 0.03, "bf16 scores drift from fp32 by {diff}");

    let mut rec = Recorder::default();
    let out = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &cfg,
        None,
        &mut rec,
    )
    .unwrap();
    assert_eq!(out.steps, 6);
    assert!(rec.losses.iter().all(|l| l.is_finite()), "{:?}", rec.losses);
    for (name, t) in out.model.named_parameters() {
        assert_eq!(t.kind(), Kind::Float, "{name} is not an fp32 master weight");
    }
    // Trained in bf16, the final dev scores (and so the thresholds) are fp32's: what the
    // predictor serves by default.
    assert_eq!(out.model.precision(), Precision::Fp32);
    let served = inference::score_all(&out.model, &out.tokenizer, &encoded, 16).unwrap();
    assert_eq!(
        served, out.dev_scores,
        "thresholds tuned on the served scores"
    );
}

fn weights(model: &common::model::BertClassifier) -> Vec<(String, Tensor)> {
    model.named_parameters()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_with(TrainConfig {
        epochs: 2,
        state_every_steps: 4,
        patience: 5,
        ..small_config()
    });
}

#[test]
fn resumed_run_with_a_weight_average_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_with(TrainConfig {
        epochs: 2,
        state_every_steps: 4,
        patience: 5,
        ema_decay: 0.9,
        ..small_config()
    });
}

fn resumed_run_equals_uninterrupted_run_with(cfg: TrainConfig) {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(96, 48), 3).unwrap();
    let labels: &LabelSet = &data.labels;
    let run = |resume: Option<ResumeState>, rec: &mut Recorder| {
        let (model, tokenizer) = build(&data, &cfg);
        train::fine_tune(
            model,
            tokenizer,
            &data.train,
            &data.dev,
            labels,
            &cfg,
            resume,
            rec,
        )
        .unwrap()
    };
    let mut full_rec = Recorder {
        keep_states: true,
        ..Default::default()
    };
    let full = run(None, &mut full_rec);
    // 6 steps per epoch: states every 4 steps within an epoch and at each epoch end.
    let steps: Vec<u64> = full_rec.states.iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![4, 6, 8, 12]);
    // "Crash" after step 8: resume from that state in a fresh model.
    let (_, tensors, meta) = &full_rec.states[2];
    let state = ResumeState::decode(tensors, meta.clone()).unwrap();
    let mut resumed_rec = Recorder::default();
    let resumed = run(Some(state), &mut resumed_rec);
    assert_eq!(full.history.len(), resumed.history.len());
    // Float tolerance: multi-threaded CPU kernels are not bitwise reproducible (differences of
    // ~1e-5 were seen). 5e-5 stays 20x below what the 12 steps move the encoder (checked below).
    let base_model = build(&data, &cfg).0;
    let mut largest_update = 0f64;
    for ((a, b), (_, start)) in weights(&full.model)
        .iter()
        .zip(weights(&resumed.model))
        .zip(weights(&base_model))
    {
        assert_eq!(a.0, b.0);
        let diff = (&a.1 - &b.1).abs().max().double_value(&[]);
        assert!(diff < 5e-5, "{} differs by {diff}", a.0);
        if !a.0.starts_with("classifier.") {
            largest_update = largest_update.max((&a.1 - &start).abs().max().double_value(&[]));
        }
    }
    assert!(
        largest_update > 9e-4,
        "training moved the encoder (max update {largest_update})"
    );
    let scores_diff = full
        .dev_scores
        .iter()
        .zip(&resumed.dev_scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(scores_diff < 1e-3, "dev scores differ by {scores_diff}");
}

#[test]
fn the_weight_average_is_what_is_evaluated_and_published() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(96, 48), 3).unwrap();
    let labels: &LabelSet = &data.labels;
    let cfg = TrainConfig {
        ema_decay: 0.9,
        calibration: CalibrationChoice::None,
        ..small_config()
    };
    let (model, tokenizer) = build(&data, &cfg);
    let mut rec = Recorder {
        keep_states: true,
        ..Default::default()
    };
    let out = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        labels,
        &cfg,
        None,
        &mut rec,
    )
    .unwrap();
    // One epoch: its end state holds the trained weights and their average; the average won.
    let (_, tensors, meta) = rec.states.last().unwrap();
    let state = ResumeState::decode(tensors, meta.clone()).unwrap();
    let average = state.average.expect("the state keeps the average");
    let trained: std::collections::HashMap<String, Tensor> = state.weights.into_iter().collect();
    let published: std::collections::HashMap<String, Tensor> =
        weights(&out.model).into_iter().collect();
    let mut largest_gap = 0f64;
    for (name, avg) in &average {
        let p = &published[name];
        assert_eq!((p - avg).abs().max().double_value(&[]), 0.0, "{name}");
        largest_gap = largest_gap.max((avg - &trained[name]).abs().max().double_value(&[]));
    }
    // Six steps with the warm-up decay ((1 + t) / (10 + t): 0.1 … 0.4) under a decaying rate: the
    // average stays close to the weights, but copies of them would give exactly 0.
    assert!(
        largest_gap > 1e-6,
        "the average lags the trained weights (largest gap {largest_gap})"
    );
    let dev_scores = inference::score_all(
        &out.model,
        &out.tokenizer,
        &out.tokenizer
            .encode_all(&data.dev.iter().map(|e| e.text.clone()).collect::<Vec<_>>())
            .unwrap(),
        64,
    )
    .unwrap();
    assert_eq!(
        dev_scores, out.dev_scores,
        "dev was scored with the average"
    );

    // A saved state whose average does not fit the model is refused before any step.
    // `extra`: one tensor more than the model has; otherwise one less.
    let resume_with = |extra: bool| {
        let mut state = ResumeState::decode(tensors, meta.clone()).unwrap();
        let average = state.average.as_mut().unwrap();
        if extra {
            average.push((
                "extra".into(),
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            ));
        } else {
            average.pop();
        }
        let (model, tokenizer) = build(&data, &cfg);
        let mut rec = Recorder::default();
        train::fine_tune(
            model,
            tokenizer,
            &data.train,
            &data.dev,
            labels,
            &cfg,
            Some(state),
            &mut rec,
        )
        .err()
        .expect("refused")
    };
    let err = resume_with(false);
    assert!(
        matches!(err, TrainError::State(StateError::MissingAverage(_))),
        "{err}"
    );
    let err = resume_with(true);
    assert!(
        matches!(err, TrainError::State(StateError::AverageMismatch(_))),
        "{err}"
    );
}

#[test]
fn distilling_pulls_the_student_towards_the_teachers_scores() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(96, 48), 7).unwrap();
    let l = data.labels.len();
    let cfg = TrainConfig {
        max_steps: Some(8),
        warmup_ratio: 0.0,
        learning_rate: 1e-3,
        distill_weight: 1.0,
        ..small_config()
    };
    let texts: Vec<&str> = data.dev.iter().map(|e| e.text.as_str()).collect();
    let prepared = || {
        let (model, tokenizer) = build(&data, &cfg);
        train::FineTune::prepare(
            model,
            tokenizer,
            &data.train,
            &data.dev,
            &data.labels,
            &cfg,
            None,
        )
        .unwrap()
    };
    // Same seed, batches and dropout: only the teacher's scores differ between the two runs.
    let mean_dev_score = |teacher: f32| {
        let run = prepared()
            .with_soft_targets(vec![teacher; data.train.len() * l])
            .unwrap();
        let out = run.run(&mut Recorder::default()).unwrap();
        let encoded = out.tokenizer.encode_all(&texts).unwrap();
        let scores = inference::score_all(&out.model, &out.tokenizer, &encoded, 16).unwrap();
        scores.iter().sum::<f32>() / scores.len() as f32
    };
    let high = mean_dev_score(0.95);
    let low = mean_dev_score(0.05);
    assert!(
        high > low + 0.2,
        "teacher 0.95 → {high}, teacher 0.05 → {low}"
    );

    // Scores of the wrong shape, or that are not probabilities, are refused.
    let err = prepared()
        .with_soft_targets(vec![0.5; l])
        .err()
        .expect("wrong shape");
    assert!(matches!(err, TrainError::SoftTargets { .. }), "{err}");
    let mut bad = vec![0.5; data.train.len() * l];
    bad[3] = f32::NAN;
    let err = prepared().with_soft_targets(bad).err().expect("NaN");
    assert!(matches!(err, TrainError::SoftTargetValue { .. }), "{err}");
}

#[test]
fn calibration_is_folded_into_the_served_scores() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data = Dataset::load(&data_dir(), limits(96, 64), 11).unwrap();
    let run = |calibration: CalibrationChoice| {
        let cfg = TrainConfig {
            max_steps: Some(6),
            calibration,
            ..small_config()
        };
        let (model, tokenizer) = build(&data, &cfg);
        train::fine_tune(
            model,
            tokenizer,
            &data.train,
            &data.dev,
            &data.labels,
            &cfg,
            None,
            &mut Recorder::default(),
        )
        .unwrap()
    };
    let plain = run(CalibrationChoice::None);
    let p = plain.calibration.as_ref().unwrap();
    assert!(!p.applied);
    let l = data.labels.len();
    let texts: Vec<&str> = data.dev.iter().map(|e| e.text.as_str()).collect();
    for (choice, method) in [
        (CalibrationChoice::Temperature, "temperature"),
        (CalibrationChoice::Platt, "platt"),
    ] {
        let scaled = run(choice);
        let s = scaled.calibration.as_ref().unwrap();
        assert!(s.applied && s.method == method, "{s:?}");
        assert!(
            s.temperatures.iter().any(|t| (t - 1.0).abs() > 0.05),
            "{:?}",
            s.temperatures
        );
        if method == "platt" {
            assert_eq!(s.shifts.len(), l);
            assert!(s.shifts.iter().any(|b| b.abs() > 0.05), "{:?}", s.shifts);
        } else {
            assert!(s.shifts.is_empty());
        }
        // Same training: what the `none` run recorded (the lower cross-fitted log-loss of the
        // two) is what this run fitted, when it is the same method.
        if p.method == method {
            assert_eq!((&p.temperatures, &p.shifts), (&s.temperatures, &s.shifts));
        }
        // The published model serves the mapped scores, and the thresholds were tuned on that.
        let expect = s.scaling().apply(&plain.dev_scores);
        let gap = expect
            .iter()
            .zip(&scaled.dev_scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            gap < 1e-4,
            "{method}: served scores differ from the mapped ones by {gap}"
        );
        let encoded = scaled.tokenizer.encode_all(&texts).unwrap();
        // Batched as the trainer re-scored dev: on some CPUs fp32 products differ in the last bit
        // with the number of rows, so another batch size only agrees to about 1e-7.
        let eval_batch = small_config().eval_batch_size;
        let served =
            inference::score_all(&scaled.model, &scaled.tokenizer, &encoded, eval_batch).unwrap();
        assert_eq!(served, scaled.dev_scores);
        let by_16 = inference::score_all(&scaled.model, &scaled.tokenizer, &encoded, 16).unwrap();
        let gap = by_16
            .iter()
            .zip(&served)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-5, "batches of 16 moved the scores by {gap}");
        // The thresholds are the uncalibrated run's, each through its label's map: every dev
        // decision is the same.
        assert_eq!(plain.thresholds.fallbacks, scaled.thresholds.fallbacks);
        let maps = s.scaling();
        for (j, (&p, &s)) in plain
            .thresholds
            .per_label
            .iter()
            .zip(&scaled.thresholds.per_label)
            .enumerate()
        {
            let mapped = maps.score(j, p);
            assert!(
                (mapped - s).abs() < 1e-6,
                "{method}: {p} through label {j}'s map: {s}"
            );
        }
        assert_eq!(
            metrics::decide(&plain.dev_scores, l, &plain.thresholds.per_label),
            metrics::decide(&scaled.dev_scores, l, &scaled.thresholds.per_label),
            "{method}"
        );
    }
}
