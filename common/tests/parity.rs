//! Parity with Python `transformers`: the fixture holds token ids, last hidden states and logits
//! computed by `scripts/make_parity_fixture.py` for the packaged all-MiniLM-L6-v2.
use std::path::PathBuf;

use common::model::{BertClassifier, Pooling};
use common::safetensors_io;
use common::tokenizer::TextTokenizer;
use tch::{Device, Kind, Tensor};

fn model_dir() -> PathBuf {
    let dir = std::env::var("GOEMOTIONS_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "{} missing: run scripts/setup.sh first",
        dir.display()
    );
    dir
}

fn fixture() -> (Vec<(String, Tensor)>, Vec<String>) {
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity.safetensors"),
    )
    .expect("fixture");
    let st = safetensors::SafeTensors::read_metadata(&bytes)
        .expect("metadata")
        .1;
    let sentences = st.metadata().as_ref().expect("metadata")["sentences"]
        .split('\n')
        .map(String::from)
        .collect();
    (safetensors_io::decode(&bytes).expect("decode"), sentences)
}

fn get(tensors: &[(String, Tensor)], name: &str) -> Tensor {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
        .1
        .shallow_clone()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tokenizer_and_model_match_transformers() {
    let dir = model_dir();
    let (fx, sentences) = fixture();
    let tokenizer =
        TextTokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap(), 128)
            .unwrap();
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    // Base encoder plus the fixture's classification head.
    let mut tensors = safetensors_io::decode(&weights).unwrap();
    tensors.push(("classifier.weight".into(), get(&fx, "classifier.weight")));
    tensors.push(("classifier.bias".into(), get(&fx, "classifier.bias")));
    let with_head = safetensors_io::encode(&tensors).unwrap();
    // Unprepared (as trained and evaluated during training) and prepared for inference (fused
    // query/key/value projections, as served).
    for (pooling, prepared) in [
        (Pooling::Cls, false),
        (Pooling::Mean, false),
        (Pooling::Mean, true),
    ] {
        let (mut model, report) =
            BertClassifier::load(&config, &with_head, 28, pooling, Device::Cpu).unwrap();
        assert!(report.initialised.is_empty(), "{report:?}");
        if prepared {
            model.store_weights_for_inference();
        }
        for (i, text) in sentences.iter().enumerate() {
            let enc = tokenizer.encode(text).unwrap();
            let expected_ids: Vec<i64> =
                Vec::try_from(get(&fx, &format!("s{i}.input_ids"))).unwrap();
            assert_eq!(enc.ids, expected_ids, "token ids of {text:?}");
            let batch = tokenizer.batch(&[&enc], Device::Cpu);
            let out =
                tch::no_grad(|| model.forward(&batch.input_ids, &batch.attention_mask, false));
            let hidden = out.last_hidden_state.squeeze_dim(0).to_kind(Kind::Float);
            let d_hidden = max_abs_diff(&hidden, &get(&fx, &format!("s{i}.last_hidden_state")));
            assert!(
                d_hidden < 1e-4,
                "{text:?} (prepared {prepared}): last hidden state differs by {d_hidden}"
            );
            let key = match pooling {
                Pooling::Cls => "logits_cls",
                Pooling::Mean => "logits_mean",
            };
            let d_logits = max_abs_diff(
                &out.logits.squeeze_dim(0),
                &get(&fx, &format!("s{i}.{key}")),
            );
            assert!(
                d_logits < 1e-4,
                "{text:?} ({key}, prepared {prepared}): logits differ by {d_logits}"
            );
        }
    }
}

#[test]
fn batched_padded_inference_matches_single() {
    let dir = model_dir();
    let (_, sentences) = fixture();
    let tokenizer =
        TextTokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap(), 128)
            .unwrap();
    let (model, _) = BertClassifier::load(
        &std::fs::read(dir.join("config.json")).unwrap(),
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
        28,
        Pooling::Mean,
        Device::Cpu,
    )
    .unwrap();
    let encoded = tokenizer.encode_all(&sentences).unwrap();
    let refs: Vec<_> = encoded.iter().collect();
    let batch = tokenizer.batch(&refs, Device::Cpu);
    let together = model.predict_proba(&batch.input_ids, &batch.attention_mask);
    for (i, e) in encoded.iter().enumerate() {
        let b = tokenizer.batch(&[e], Device::Cpu);
        let alone = model.predict_proba(&b.input_ids, &b.attention_mask);
        let d = max_abs_diff(&alone.squeeze_dim(0), &together.get(i as i64));
        assert!(d < 1e-5, "sentence {i}: padded batch differs by {d}");
    }
}
