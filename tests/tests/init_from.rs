//! Starting a job from published checkpoints with the real trainer: one checkpoint and no epochs
//! republishes the same model (its head taken back through its calibration and calibrated
//! again), two give the mean of their weights (a model soup), and a start that cannot work is
//! refused before any work, naming the field.
use std::path::Path;
use std::process::Output;

use goemotions_tests::*;
use tch::Tensor;

fn manifest(registry: &Path, name: &str, version: &str) -> serde_json::Value {
    let path = registry.join(format!("models/{name}/versions/{version}/manifest.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("manifest json")
}

fn weights(registry: &Path, name: &str, version: &str) -> Vec<(String, Tensor)> {
    let path = registry.join(format!(
        "models/{name}/versions/{version}/{}",
        common::checkpoint::WEIGHTS
    ));
    common::safetensors_io::decode(&std::fs::read(&path).expect("weights")).expect("safetensors")
}

fn tensor(weights: &[(String, Tensor)], name: &str) -> Tensor {
    weights
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.to_kind(tch::Kind::Float))
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn alias(registry: &Path, name: &str) -> String {
    format!("{}/models/{name}/aliases/latest", registry.display())
}

/// `trainer train` with no epochs from `extra`'s starts, on the small data of the members.
fn start_job(registry: &Path, name: &str, extra: &[&str]) -> Output {
    small_train_command(registry, name)
        .args(["--epochs", "0"])
        .args(extra)
        .output()
        .expect("run trainer")
}

fn published(registry: &Path, name: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "trainer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    latest_version(registry, name)
}

#[test]
fn a_start_republishes_one_checkpoint_and_averages_several() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    let platt = ["--calibration", "platt"];
    let a = train_small_checkpoint(&registry, "a", &[&platt[..], &["--seed", "1"]].concat());
    let b = train_small_checkpoint(&registry, "b", &[&platt[..], &["--seed", "2"]].concat());
    let (wa, wb) = (weights(&registry, "a", &a), weights(&registry, "b", &b));
    let query = "bert.encoder.layer.0.attention.self.query.weight";
    assert!(
        max_difference(&tensor(&wa, query), &tensor(&wb, query)) > 1e-4,
        "two seeds trained apart"
    );

    // One start, no training: the same weights; the head goes back through a's Platt maps and
    // through the same maps fitted again on the same dev scores.
    // (Same seed and calibration as a: the seed also draws the subsampled splits.)
    let out = start_job(
        &registry,
        "again",
        &[
            &platt[..],
            &["--seed", "1", "--init-from", &alias(&registry, "a")],
        ]
        .concat(),
    );
    let again = published(&registry, "again", &out);
    let w = weights(&registry, "again", &again);
    // The head goes through two maps and back; Platt temperatures up to 20 magnify rounding.
    for (name, tolerance) in [
        (query, 1e-6),
        ("classifier.weight", 1e-3),
        ("classifier.bias", 1e-3),
    ] {
        let d = max_difference(&tensor(&w, name), &tensor(&wa, name));
        assert!(d < tolerance, "{name} moved by {d}");
    }
    let (ma, m) = (
        manifest(&registry, "a", &a),
        manifest(&registry, "again", &again),
    );
    assert_eq!(
        m["hyperparameters"]["init_versions"],
        serde_json::json!([a])
    );
    // The maps fitted again are a's: the head started from a's unscaled logits (scaled ones
    // would have been fitted with temperatures near 1 and no shifts).
    let numbers = |m: &serde_json::Value, key: &str| -> Vec<f64> {
        m["calibration"][key]
            .as_array()
            .unwrap_or_else(|| panic!("calibration.{key}"))
            .iter()
            .map(|v| v.as_f64().expect("f64"))
            .collect()
    };
    for key in ["temperatures", "shifts"] {
        let (ours, theirs) = (numbers(&m, key), numbers(&ma, key));
        assert_eq!(ours.len(), theirs.len());
        for (x, y) in ours.iter().zip(&theirs) {
            assert!(
                (x - y).abs() <= 1e-2 * y.abs().max(1.0),
                "{key}: {ours:?} against {theirs:?}"
            );
        }
    }
    assert!(
        numbers(&ma, "temperatures")
            .iter()
            .any(|t| (t - 1.0).abs() > 0.1),
        "a's calibration is not the identity"
    );
    assert_eq!(m["hyperparameters"]["steps"], 0);
    for (t, ta) in m["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .zip(ma["thresholds"].as_array().expect("thresholds"))
    {
        let (t, ta) = (t.as_f64().expect("f64"), ta.as_f64().expect("f64"));
        assert!((t - ta).abs() < 1e-3, "threshold {t} against {ta}");
    }

    // Two starts: every encoder tensor is their mean.
    let out = start_job(
        &registry,
        "soup",
        &[
            "--init-from",
            &alias(&registry, "a"),
            "--init-from",
            &alias(&registry, "b"),
        ],
    );
    let soup = published(&registry, "soup", &out);
    let w = weights(&registry, "soup", &soup);
    for name in [query, "bert.embeddings.LayerNorm.weight"] {
        let mean = (tensor(&wa, name) + tensor(&wb, name)) / 2.0;
        let d = max_difference(&tensor(&w, name), &mean);
        assert!(d < 1e-6, "{name} is {d} off the mean");
    }
    assert_eq!(
        manifest(&registry, "soup", &soup)["hyperparameters"]["init_versions"],
        serde_json::json!([a, b])
    );

    // Refused before any work, nothing published.
    let refusals: [(&str, Vec<String>, &str); 3] = [
        ("no-start", vec![], "hyperparameters.epochs"),
        (
            "missing",
            vec![
                "--init-from".into(),
                alias(&registry, "a"),
                "--init-from".into(),
                alias(&registry, "nothing-here"),
            ],
            "hyperparameters.init_from[1]",
        ),
        (
            "other-pooling",
            vec![
                "--init-from".into(),
                alias(&registry, "a"),
                "--pooling".into(),
                "cls".into(),
            ],
            "hyperparameters.init_from[0]",
        ),
    ];
    for (name, args, field) in refusals {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = start_job(&registry, name, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(field), "{name}: {stderr}");
        assert!(
            !registry.join(format!("models/{name}")).exists(),
            "{name} published something"
        );
    }
}
