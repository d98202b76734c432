//! The gRPC contract is guarded: `buf lint` and `buf breaking` against the released contract pass
//! for `proto/` as it is, and a change that would break callers is caught.
use std::path::Path;
use std::process::{Command, Output};

use goemotions_tests::workspace_root;

fn proto_check(proto_dir: &Path) -> Output {
    Command::new(workspace_root().join("scripts/proto-check.sh"))
        .arg(proto_dir)
        .output()
        .expect("run scripts/proto-check.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn contract_is_lint_clean_and_compatible_with_the_release() {
    let out = proto_check(&workspace_root().join("proto"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("contract OK"), "{}", text(&out));
}

/// Copies proto/ (the .proto files and buf.yaml), applies `edit` to predictor.proto, runs the check.
fn check_edited(edit: impl Fn(String) -> String) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = workspace_root().join("proto");
    std::fs::create_dir_all(dir.path().join("goemotions/v1")).unwrap();
    std::fs::create_dir_all(dir.path().join("inference")).unwrap();
    std::fs::copy(src.join("buf.yaml"), dir.path().join("buf.yaml")).unwrap();
    let oip = "inference/grpc_predict_v2.proto";
    std::fs::copy(src.join(oip), dir.path().join(oip)).unwrap();
    for file in ["predictor.proto", "trainer.proto"] {
        let mut body = std::fs::read_to_string(src.join("goemotions/v1").join(file)).unwrap();
        if file == "predictor.proto" {
            let edited = edit(body.clone());
            assert_ne!(edited, body, "the edit must change something");
            body = edited;
        }
        std::fs::write(dir.path().join("goemotions/v1").join(file), body).unwrap();
    }
    proto_check(dir.path())
}

#[test]
fn breaking_changes_are_caught() {
    // A field's type changes: old clients would decode garbage.
    let out = check_edited(|p| {
        p.replace(
            "  repeated string texts = 1;",
            "  repeated bytes texts = 1;",
        )
    });
    assert!(!out.status.success(), "type change passed: {}", text(&out));
    assert!(text(&out).contains("texts"), "{}", text(&out));
    // A method is renamed: old clients get UNIMPLEMENTED.
    let out = check_edited(|p| p.replace("rpc GetModelInfo(", "rpc ModelInfoGet("));
    assert!(!out.status.success(), "rename passed: {}", text(&out));
    assert!(text(&out).contains("GetModelInfo"), "{}", text(&out));
}

#[test]
fn additions_are_allowed_and_linted() {
    // A new optional field is compatible...
    let out = check_edited(|p| {
        p.replace(
            "message GetModelInfoRequest {}",
            "message GetModelInfoRequest {\n  // Added later.\n  bool verbose = 1;\n}",
        )
    });
    assert!(out.status.success(), "{}", text(&out));
    // ...but a new enum without a zero `_UNSPECIFIED` value fails lint.
    let out = check_edited(|p| format!("{p}\nenum Mode {{\n  FAST = 0;\n}}\n"));
    assert!(!out.status.success(), "lint passed: {}", text(&out));
    assert!(text(&out).contains("_UNSPECIFIED"), "{}", text(&out));
}
