//! Out-of-fold distillation with the real trainer: teachers trained with `--holdout-fold` split
//! the training texts between them, a student given one teacher per fold records that it learned
//! out of fold, and a fold set with a hole or a repeat is refused before any training.
use std::path::Path;
use std::process::Command;

use goemotions_tests::*;

fn manifest(registry: &Path, name: &str, version: &str) -> serde_json::Value {
    let path = registry.join(format!("models/{name}/versions/{version}/manifest.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("manifest json")
}

fn alias(registry: &Path, name: &str) -> String {
    format!("{}/models/{name}/aliases/latest", registry.display())
}

#[test]
fn out_of_fold_teachers_split_the_texts_and_a_student_learns_each_from_the_one_that_held_it_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    let folds = ["0/2", "1/2"];
    let mut kept = Vec::new();
    for (k, fold) in folds.iter().enumerate() {
        let name = format!("fold{k}");
        let version = train_small_checkpoint(&registry, &name, &["--holdout-fold", fold]);
        let m = manifest(&registry, &name, &version);
        assert_eq!(
            m["hyperparameters"]["train"]["holdout_fold"],
            serde_json::json!({"index": k, "count": 2})
        );
        let n = m["hyperparameters"]["train_examples"]
            .as_u64()
            .expect("train_examples");
        assert!(0 < n && n < 200, "fold {fold} kept {n} of 200");
        kept.push(n);
    }
    assert_eq!(
        kept.iter().sum::<u64>(),
        200,
        "the two teachers' training texts are the 200 split in two: {kept:?}"
    );

    let teachers = [alias(&registry, "fold0"), alias(&registry, "fold1")];
    let version = train_small_checkpoint(
        &registry,
        "student",
        &["--teacher", &teachers[0], "--teacher", &teachers[1]],
    );
    let m = manifest(&registry, "student", &version);
    assert_eq!(m["hyperparameters"]["teacher_scoring"], "out-of-fold");
    assert_eq!(
        m["hyperparameters"]["teacher_versions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // The same teacher twice leaves fold 1/2 with no teacher that did not see it.
    let out = Command::new(bin("trainer"))
        .args(["train", "--device", "cpu", "--baseline", "false"])
        .args(["--model-name", "refused", "--train-limit", "200"])
        .arg("--registry")
        .arg(&registry)
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--base-model")
        .arg(base_model())
        .args(["--teacher", &teachers[0], "--teacher", &teachers[0]])
        .output()
        .expect("run trainer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("hyperparameters.teachers")
            && stderr.contains("no teacher holds out fold 1/2"),
        "{stderr}"
    );
    assert!(
        !registry.join("models/refused").exists(),
        "nothing published"
    );
}
