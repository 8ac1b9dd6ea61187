//! The evaluation over the development part of the gold labels in
//! `evaluation/gold/`, with the notes, ICD-10-CM tables and Synthea codings
//! of the shared data folder and the real model.
//!
//! The linking system embeds every dictionary title once (about 98,000) and
//! caches the vectors in `concept-vectors/` below the model cache. A cold
//! cache costs tens of CPU minutes in the dev profile, so the test with
//! linking is ignored by default and the default test scores the baseline
//! and context systems.

mod common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use infoctor_nlp::evaluate::report::{render_markdown, render_table};
use infoctor_nlp::evaluate::{
    Assertion, CODINGS_DATA_DIR, EvaluationReport, GoldSet, ICD10CM_DATA_DIR, Part, System,
    Terminology, evaluate, gold_file, row_labels,
};
use infoctor_nlp::linking::{ConceptIndex, Linker};
use infoctor_nlp::terminology::open_text;
use infoctor_nlp::{Embedder, NlpError};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CTAKES: &str = "clinical-notes-ctakes-examples";
const SYNTHEA: &str = "synthea-bulk-10-2024";

fn labels_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../evaluation"))
}

fn dev_gold() -> GoldSet {
    let path = gold_file(&labels_dir(), Part::Dev);
    GoldSet::load(&path, Part::Dev).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn check_numbers(report: &EvaluationReport) {
    for system in &report.systems {
        for row in &system.rows {
            for (name, value) in [
                ("precision", row.precision),
                ("recall", row.recall),
                ("F1", row.f1),
            ] {
                assert!(
                    value.is_finite() && (0.0..=1.0).contains(&value),
                    "{:?} {}: {name} {value}",
                    system.system,
                    row.label
                );
            }
        }
    }
}

#[test]
fn dev_part_report_is_complete() {
    check_dev_report(false);
}

/// Embeds about 98,000 dictionary titles on a cold cache (tens of CPU
/// minutes in the dev profile), so it runs on demand:
/// `cargo test -p infoctor-nlp --test evaluation -- --ignored`.
#[test]
#[ignore = "embeds the whole dictionary on a cold cache; run on demand"]
fn dev_part_report_with_linking() {
    check_dev_report(true);
}

fn check_dev_report(with_linking: bool) {
    let data = common::test_data_dir();
    let gold = dev_gold();
    assert!(gold.notes.len() >= 50, "{} dev notes", gold.notes.len());
    for corpus in [CTAKES, SYNTHEA] {
        assert!(
            gold.notes.iter().any(|note| note.corpus == corpus),
            "no dev note from {corpus}"
        );
    }

    let texts = gold
        .read_texts(&data)
        .expect("note texts match their labels");
    assert_eq!(texts.len(), gold.notes.len());
    for (note, text) in gold.notes.iter().zip(&texts) {
        assert_eq!(
            hex::encode(Sha256::digest(text.as_bytes())),
            note.sha256,
            "{}",
            note.note
        );
    }

    let terminology = Terminology::load(
        &common::test_data_file(ICD10CM_DATA_DIR),
        &common::test_data_file(CODINGS_DATA_DIR),
    )
    .expect("terminology loads");
    let report = if with_linking {
        let embedder = Embedder::load(&common::model_dir()).expect("model loads");
        let cache = common::model_cache_root().join("concept-vectors");
        let index = ConceptIndex::from_dictionary(&embedder, &terminology.dictionary, &cache)
            .expect("concept index builds");
        let linker = Linker::new(&embedder, &index);
        evaluate(&gold, &texts, &terminology, Some(&linker)).expect("evaluation runs")
    } else {
        evaluate(&gold, &texts, &terminology, None).expect("evaluation runs")
    };
    print!("{}", render_table(&report));

    assert_eq!(report.part, Part::Dev);
    assert_eq!(report.gold.notes, gold.notes.len());
    assert_eq!(report.gold.mentions, gold.mention_count());
    let systems: Vec<System> = report.systems.iter().map(|system| system.system).collect();
    if with_linking {
        assert_eq!(
            systems,
            [System::Baseline, System::Context, System::Linking]
        );
    } else {
        assert_eq!(systems, [System::Baseline, System::Context]);
    }
    check_numbers(&report);

    let labels = row_labels();
    for system in &report.systems {
        let rows: Vec<_> = system
            .rows
            .iter()
            .map(|row| (row.group, row.label.clone()))
            .collect();
        assert_eq!(rows, labels, "{:?}", system.system);
        let strict = &system.rows[0];
        assert_eq!(
            strict.counts.true_positives + strict.counts.false_negatives,
            gold.mention_count(),
            "{:?}",
            system.system
        );
        assert!(
            system.predictions > 0,
            "{:?} predicted nothing",
            system.system
        );
        assert!(
            system.rows[1].counts.true_positives >= strict.counts.true_positives,
            "matching without assertions cannot find fewer pairs"
        );
    }

    let baseline = &report.systems[0];
    let context = &report.systems[1];
    assert_eq!(baseline.predictions, context.predictions);
    if let Some(linking) = report.systems.get(2) {
        assert!(linking.predictions >= context.predictions);
    }
    let negated_row = labels
        .iter()
        .position(|(_, label)| label == Assertion::Negated.as_str())
        .expect("a negated row");
    assert_eq!(
        baseline.rows[negated_row].counts.true_positives, 0,
        "the baseline calls every mention present"
    );
    assert!(context.rows[negated_row].counts.true_positives > 0);

    let markdown = render_markdown(&report, "infoctor evaluate nlp --part dev");
    for (_, label) in &labels {
        assert!(
            markdown.contains(&format!("| {label} |")),
            "row {label} missing from the Markdown report"
        );
    }
    let json: Value = serde_json::to_value(&report).expect("report serialises");
    assert_eq!(
        json["systems"].as_array().map(Vec::len),
        Some(report.systems.len())
    );
}

/// Writes `data_dir/{CTAKES}/notes.jsonl.gz` with the shared ctakes notes,
/// changed by `edit`.
fn write_ctakes_copy(data_dir: &Path, edit: impl Fn(&mut Value) -> bool) {
    let source = common::test_data_file(&format!("{CTAKES}/notes.jsonl.gz"));
    let folder = data_dir.join(CTAKES);
    std::fs::create_dir_all(&folder).expect("folder created");
    let file = std::fs::File::create(folder.join("notes.jsonl.gz")).expect("file created");
    let mut encoder = GzEncoder::new(file, Compression::fast());
    for line in open_text(&source).expect("notes open").lines() {
        let mut record: Value = serde_json::from_str(&line.expect("line reads")).expect("JSON");
        if edit(&mut record) {
            writeln!(encoder, "{record}").expect("line written");
        }
    }
    encoder.finish().expect("file finished");
}

fn ctakes_dev_gold() -> GoldSet {
    let mut gold = dev_gold();
    gold.notes.retain(|note| note.corpus == CTAKES);
    assert!(!gold.notes.is_empty());
    gold
}

#[test]
fn changed_note_text_is_rejected() {
    let gold = ctakes_dev_gold();
    let changed = gold.notes[0].note.clone();
    let temporary = tempfile::tempdir().expect("temporary folder");
    write_ctakes_copy(temporary.path(), |record| {
        if record["name"] == changed.as_str() {
            let text = format!("{} ", record["text"].as_str().unwrap_or_default());
            record["text"] = Value::String(text);
        }
        true
    });
    match gold.read_texts(temporary.path()) {
        Err(NlpError::NoteChanged {
            note,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(note, changed);
            assert_ne!(expected, actual);
        }
        other => panic!("expected NoteChanged, got {other:?}"),
    }
}

#[test]
fn missing_note_is_rejected() {
    let gold = ctakes_dev_gold();
    let removed = gold.notes[0].note.clone();
    let temporary = tempfile::tempdir().expect("temporary folder");
    write_ctakes_copy(temporary.path(), |record| {
        record["name"] != removed.as_str()
    });
    match gold.read_texts(temporary.path()) {
        Err(NlpError::NoteNotFound { note, .. }) => assert_eq!(note, removed),
        other => panic!("expected NoteNotFound, got {other:?}"),
    }
}

#[test]
fn missing_data_folder_fails() {
    let gold = dev_gold();
    let temporary = tempfile::tempdir().expect("temporary folder");
    let error = gold
        .read_texts(&temporary.path().join("no-such-folder"))
        .expect_err("a missing data folder is an error");
    assert!(
        matches!(error, NlpError::Io { .. }),
        "expected an I/O error, got {error:?}"
    );
}
