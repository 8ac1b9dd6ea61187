//! Semantic linking with the real model over the SNOMED CT conditions of
//! the Synthea Bulk Data export.

mod common;

use infoctor_nlp::linking::{ConceptIndex, Linker, extract_linked};
use infoctor_nlp::terminology::{CodingHarvest, SNOMED_SYSTEM};
use infoctor_nlp::{Dictionary, Embedder, NlpError};

/// Threshold for the probe phrases below, whose correct links score 0.79 to
/// 0.87: lower than the default, because these tests check which concept is
/// nearest and that context survives linking, not the default's trade-off.
const PROBE_THRESHOLD: f32 = 0.75;

fn condition_dictionary() -> Dictionary {
    let mut harvest = CodingHarvest::new();
    harvest
        .add_ndjson(
            &common::test_data_file("synthea-bulk-10-2024/ndjson/Condition.000.ndjson.gz"),
            &[SNOMED_SYSTEM],
        )
        .expect("conditions load");
    Dictionary::from_entries(harvest.into_entries())
}

#[test]
fn phrases_link_to_nearest_conditions() {
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let dictionary = condition_dictionary();
    assert!(dictionary.len() > 80, "{} concepts", dictionary.len());
    let cache = tempfile::tempdir().expect("temporary folder");
    let index =
        ConceptIndex::from_dictionary(&embedder, &dictionary, cache.path()).expect("index builds");
    let mut linker = Linker::new(&embedder, &index);
    linker.threshold = PROBE_THRESHOLD;

    let cases = [
        ("broken ankle", "Fracture of ankle"),
        (
            "breast carcinoma",
            "Malignant neoplasm of breast (disorder)",
        ),
        ("sleep apnea", "Obstructive sleep apnea syndrome (disorder)"),
        ("aching joints", "Joint pain (finding)"),
        ("anxiety attacks", "Severe anxiety (panic) (finding)"),
    ];
    let phrases: Vec<&str> = cases.iter().map(|(phrase, _)| *phrase).collect();
    let links = linker.link_phrases(&phrases).expect("linking succeeds");
    for ((phrase, expected), linked) in cases.iter().zip(&links) {
        let best = linked
            .first()
            .unwrap_or_else(|| panic!("no link for {phrase:?}"));
        println!(
            "{phrase:?} -> {:?} ({:.3})",
            best.concept.display, best.similarity
        );
        assert_eq!(best.concept.display, *expected, "{phrase:?}: {linked:#?}");
        assert!(best.similarity >= PROBE_THRESHOLD);
    }

    let unrelated = linker
        .link_phrases(&["the weather was pleasant yesterday"])
        .expect("linking succeeds");
    assert!(unrelated[0].is_empty(), "{unrelated:#?}");
}

#[test]
fn extract_linked_keeps_context() {
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let dictionary = condition_dictionary();
    let cache = tempfile::tempdir().expect("temporary folder");
    let index =
        ConceptIndex::from_dictionary(&embedder, &dictionary, cache.path()).expect("index builds");
    let mut linker = Linker::new(&embedder, &index);
    linker.threshold = PROBE_THRESHOLD;

    let note = "HPI: Patient has aching joints and a broken ankle. She denies breast carcinoma. Reports a cough.";
    let mentions = extract_linked(note, &dictionary, &linker).expect("extraction succeeds");
    for mention in &mentions {
        assert_eq!(&note[mention.start..mention.end], mention.text);
    }
    let find = |text: &str| {
        mentions
            .iter()
            .find(|mention| mention.text == text)
            .unwrap_or_else(|| panic!("no mention {text:?} in {mentions:#?}"))
    };
    let joints = find("aching joints");
    assert!(joints.similarity.is_some());
    assert_eq!(joints.concepts[0].display, "Joint pain (finding)");
    assert!(!joints.negated);
    assert_eq!(
        find("broken ankle").concepts[0].display,
        "Fracture of ankle"
    );
    let carcinoma = find("breast carcinoma");
    assert!(carcinoma.negated);
    let cough = find("cough");
    assert_eq!(
        cough.similarity, None,
        "an exact dictionary match has no similarity"
    );
    assert!(
        mentions
            .windows(2)
            .all(|pair| pair[0].start < pair[1].start)
    );
}

#[test]
fn concept_vectors_are_cached() {
    let embedder = Embedder::load(&common::model_dir()).expect("model loads");
    let dictionary = condition_dictionary();
    let cache = tempfile::tempdir().expect("temporary folder");
    let first =
        ConceptIndex::from_dictionary(&embedder, &dictionary, cache.path()).expect("index builds");
    let path = first.cache_path().to_path_buf();
    assert!(path.exists());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!(
            "concept-vectors-{}",
            &embedder.weights_sha256()[..16]
        )),
        "{name}"
    );

    let started = std::time::Instant::now();
    let second =
        ConceptIndex::from_dictionary(&embedder, &dictionary, cache.path()).expect("index loads");
    println!(
        "index of {} concepts read from cache in {:.1?}",
        second.len(),
        started.elapsed()
    );
    let query = embedder
        .embed(&["chronic kidney disease"])
        .expect("embedding succeeds");
    assert_eq!(
        first.nearest(&query, 3, 0.0).expect("search"),
        second.nearest(&query, 3, 0.0).expect("search")
    );

    // A different concept list gets a different file.
    let fewer: Vec<_> = dictionary.concepts()[..10].to_vec();
    let other = ConceptIndex::build(&embedder, fewer, cache.path()).expect("index builds");
    assert_ne!(other.cache_path(), path);

    std::fs::write(&path, b"not a vector file").expect("overwrite cache");
    let error =
        ConceptIndex::from_dictionary(&embedder, &dictionary, cache.path()).expect_err("must fail");
    assert!(
        matches!(error, NlpError::InvalidEmbeddingCache { .. }),
        "{error}"
    );
}
