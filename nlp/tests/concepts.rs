//! Concept extraction with ConText attributes, on hand-written sentences and
//! on the Synthea and ctakes-examples note sets, with the ICD-10-CM 2026
//! tables and the codings of a Synthea Bulk Data export as the dictionary.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::sync::LazyLock;
use std::time::Instant;

use infoctor_nlp::terminology::{
    DEFAULT_HARVEST_SYSTEMS, ICD10CM_SYSTEM, RXNORM_SYSTEM, SNOMED_SYSTEM, harvest_fhir_codings,
    load_icd10cm_dir, open_text,
};
use infoctor_nlp::{
    Dictionary, DictionaryEntry, Experiencer, Mention, SectionKind, Temporality, extract,
};
use serde_json::Value;

static DICTIONARY: LazyLock<Dictionary> = LazyLock::new(|| {
    let started = Instant::now();
    let mut dictionary = Dictionary::new();
    let icd = load_icd10cm_dir(&common::test_data_file("icd10cm-2026")).expect("ICD-10-CM loads");
    dictionary.extend(icd);
    let harvested = harvest_fhir_codings(
        &common::test_data_file("synthea-bulk-10-2024/ndjson"),
        &DEFAULT_HARVEST_SYSTEMS,
    )
    .expect("Synthea codings load");
    dictionary.extend(harvested);
    // ICD-10-CM titles use "malignant neoplasm"; clinicians write "cancer".
    dictionary.add(
        &DictionaryEntry::new(
            ICD10CM_SYSTEM,
            "C50.919",
            "Malignant neoplasm of unspecified site of unspecified female breast",
        )
        .with_synonyms(["breast cancer"]),
    );
    println!(
        "dictionary: {} concepts, {} terms, built in {:.1?}",
        dictionary.len(),
        dictionary.term_count(),
        started.elapsed()
    );
    dictionary
});

/// Returns the only mention whose text is `text`, after checking its offsets.
fn mention<'a>(note: &str, mentions: &'a [Mention], text: &str) -> &'a Mention {
    let found: Vec<&Mention> = mentions
        .iter()
        .filter(|mention| mention.text == text)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "mentions of {text:?} in {note:?}: {mentions:#?}"
    );
    let mention = found[0];
    assert_eq!(&note[mention.start..mention.end], text);
    mention
}

#[test]
fn denies_chest_pain_is_negated() {
    let note = "Patient denies chest pain.";
    let mentions = extract(note, &DICTIONARY);
    let chest_pain = mention(note, &mentions, "chest pain");
    assert!(chest_pain.negated);
    assert!(!chest_pain.uncertain);
    assert_eq!(chest_pain.start, 15);
    assert_eq!(chest_pain.triggers[0].text, "denies");
    assert!(
        chest_pain
            .concepts
            .iter()
            .any(|concept| concept.code == "R07.9")
    );
}

#[test]
fn rule_out_pneumonia_is_uncertain() {
    let note = "Rule out pneumonia.";
    let mentions = extract(note, &DICTIONARY);
    let pneumonia = mention(note, &mentions, "pneumonia");
    assert!(pneumonia.uncertain);
    assert!(!pneumonia.negated);

    let note = "Pneumonia was ruled out.";
    let mentions = extract(note, &DICTIONARY);
    let pneumonia = mention(note, &mentions, "Pneumonia");
    assert!(pneumonia.negated);
    assert!(!pneumonia.uncertain);
}

#[test]
fn return_if_is_hypothetical() {
    let note = "Return to clinic if fever develops. Should chest pain recur, call 911.";
    let mentions = extract(note, &DICTIONARY);
    assert_eq!(
        mention(note, &mentions, "fever").temporality,
        Temporality::Hypothetical
    );
    assert_eq!(
        mention(note, &mentions, "chest pain").temporality,
        Temporality::Hypothetical
    );
}

#[test]
fn mother_had_breast_cancer_is_other_experiencer() {
    let note = "Mother had breast cancer. The patient has asthma.";
    let mentions = extract(note, &DICTIONARY);
    let cancer = mention(note, &mentions, "breast cancer");
    assert_eq!(cancer.experiencer, Experiencer::Other);
    assert_eq!(cancer.concepts[0].code, "C50.919");
    assert_eq!(
        mention(note, &mentions, "asthma").experiencer,
        Experiencer::Patient
    );
}

#[test]
fn history_of_asthma_is_historical() {
    let note = "History of asthma. Now with acute bronchitis.";
    let mentions = extract(note, &DICTIONARY);
    let asthma = mention(note, &mentions, "asthma");
    assert_eq!(asthma.temporality, Temporality::Historical);
    assert!(asthma.concepts.iter().any(|concept| concept.code == "J45"));
    assert_eq!(
        mention(note, &mentions, "acute bronchitis").temporality,
        Temporality::Recent
    );
}

#[test]
fn but_ends_negation_scope() {
    let note = "No evidence of pneumonia but has asthma.";
    let mentions = extract(note, &DICTIONARY);
    assert!(mention(note, &mentions, "pneumonia").negated);
    assert!(!mention(note, &mentions, "asthma").negated);

    let note = "Denies fever; reports cough.";
    let mentions = extract(note, &DICTIONARY);
    assert!(mention(note, &mentions, "fever").negated);
    assert!(!mention(note, &mentions, "cough").negated);
}

#[test]
fn negation_does_not_cross_sentences() {
    let note = "No fever. Cough for three days.";
    let mentions = extract(note, &DICTIONARY);
    assert!(mention(note, &mentions, "fever").negated);
    assert!(!mention(note, &mentions, "Cough").negated);
}

#[test]
fn sections_set_attributes() {
    let note =
        "PAST MEDICAL HISTORY: Asthma.\nFAMILY HISTORY: Hypertension.\nASSESSMENT: Pneumonia.";
    let mentions = extract(note, &DICTIONARY);
    let asthma = mention(note, &mentions, "Asthma");
    assert_eq!(asthma.section, SectionKind::PastMedicalHistory);
    assert_eq!(asthma.temporality, Temporality::Historical);
    let hypertension = mention(note, &mentions, "Hypertension");
    assert_eq!(hypertension.section, SectionKind::FamilyHistory);
    assert_eq!(hypertension.experiencer, Experiencer::Other);
    let pneumonia = mention(note, &mentions, "Pneumonia");
    assert_eq!(pneumonia.section, SectionKind::Assessment);
    assert_eq!(pneumonia.temporality, Temporality::Recent);
    assert_eq!(pneumonia.experiencer, Experiencer::Patient);
}

#[test]
fn carriage_return_line_ends_separate_sections() {
    let note = "FAMILY HISTORY: Hypertension.\rASSESSMENT: Pneumonia.\rPLAN: Suspected asthma.";
    let mentions = extract(note, &DICTIONARY);
    let hypertension = mention(note, &mentions, "Hypertension");
    assert_eq!(hypertension.experiencer, Experiencer::Other);
    let pneumonia = mention(note, &mentions, "Pneumonia");
    assert_eq!(pneumonia.section, SectionKind::Assessment);
    assert_eq!(pneumonia.experiencer, Experiencer::Patient);
    assert_eq!(pneumonia.start, note.find("Pneumonia").unwrap());
    assert!(mention(note, &mentions, "asthma").uncertain);
}

#[test]
fn offsets_are_bytes_into_unicode_text() {
    let note = "Température 38,9 °C — patiënt has Sézary disease and no asthma.";
    let mentions = extract(note, &DICTIONARY);
    let sezary = mention(note, &mentions, "Sézary disease");
    assert_eq!(sezary.start, note.find("Sézary").unwrap());
    assert!(
        sezary
            .concepts
            .iter()
            .any(|concept| concept.code.starts_with("C84.1"))
    );
    let asthma = mention(note, &mentions, "asthma");
    assert_eq!(asthma.end, note.len() - 1);
    assert!(asthma.negated);
    assert!(!sezary.negated);
}

#[test]
fn longest_term_wins() {
    let note = "Diagnosed with type 2 diabetes mellitus without complications.";
    let mentions = extract(note, &DICTIONARY);
    let diabetes = mention(
        note,
        &mentions,
        "type 2 diabetes mellitus without complications",
    );
    assert_eq!(diabetes.concepts[0].code, "E11.9");
    assert_eq!(mentions.len(), 1, "{mentions:#?}");
}

#[test]
fn mention_serializes_to_json() {
    let note = "History of asthma.";
    let mentions = extract(note, &DICTIONARY);
    let json = serde_json::to_value(&mentions).expect("mentions serialize");
    let first = &json[0];
    assert_eq!(first["text"], "asthma");
    assert_eq!(first["start"], 11);
    assert_eq!(first["end"], 17);
    assert_eq!(first["temporality"], "historical");
    assert_eq!(first["experiencer"], "patient");
    assert_eq!(first["negated"], false);
    assert_eq!(first["section"], "untitled");
    assert_eq!(first["concepts"][0]["system"], ICD10CM_SYSTEM);
    assert_eq!(first["triggers"][0]["kind"], "historical");
    let back: Vec<Mention> = serde_json::from_value(json).expect("mentions deserialize");
    assert_eq!(back, mentions);
}

fn read_jsonl(relative: &str) -> Vec<Value> {
    let path = common::test_data_file(relative);
    open_text(&path)
        .expect("notes open")
        .lines()
        .map(|line| serde_json::from_str(&line.expect("line reads")).expect("line is JSON"))
        .collect()
}

fn check_offsets(note: &str, mentions: &[Mention]) {
    let mut previous_end = 0;
    for mention in mentions {
        assert_eq!(&note[mention.start..mention.end], mention.text);
        assert!(
            mention.start >= previous_end,
            "mentions overlap: {mention:?}"
        );
        assert!(mention.sentence_start <= mention.start, "{mention:?}");
        assert!(mention.end <= mention.sentence_end, "{mention:?}");
        assert!(!mention.concepts.is_empty());
        assert!(
            !DICTIONARY.lookup(&mention.text).is_empty(),
            "{:?} is not a dictionary term",
            mention.text
        );
        for trigger in &mention.triggers {
            assert_eq!(&note[trigger.start..trigger.end], trigger.text);
        }
        previous_end = mention.end;
    }
}

#[test]
fn synthea_notes_find_encounter_conditions() {
    let notes = read_jsonl("synthea-bulk-10-2024/notes.jsonl.gz");
    assert_eq!(notes.len(), 1215);

    let mut conditions_by_encounter: HashMap<String, HashSet<String>> = HashMap::new();
    let conditions = open_text(&common::test_data_file(
        "synthea-bulk-10-2024/ndjson/Condition.000.ndjson.gz",
    ))
    .expect("conditions open");
    for line in conditions.lines() {
        let condition: Value = serde_json::from_str(&line.expect("line reads")).expect("JSON");
        let encounter = condition["encounter"]["reference"]
            .as_str()
            .expect("encounter")
            .to_string();
        for coding in condition["code"]["coding"].as_array().expect("codings") {
            if coding["system"] == SNOMED_SYSTEM {
                let code = coding["code"].as_str().expect("code").to_string();
                conditions_by_encounter
                    .entry(encounter.clone())
                    .or_default()
                    .insert(code);
            }
        }
    }

    let started = Instant::now();
    let (mut expected, mut found, mut total_mentions) = (0usize, 0usize, 0usize);
    let mut negated_allergies = 0usize;
    let mut medications = 0usize;
    for note in &notes {
        let text = note["text"].as_str().expect("text");
        let mentions = extract(text, &DICTIONARY);
        check_offsets(text, &mentions);
        total_mentions += mentions.len();

        let codes: HashSet<&str> = mentions
            .iter()
            .flat_map(|mention| mention.concepts.iter())
            .filter(|concept| concept.system == SNOMED_SYSTEM)
            .map(|concept| concept.code.as_str())
            .collect();
        let encounter = note["encounter"].as_str().expect("encounter");
        for code in conditions_by_encounter.get(encounter).into_iter().flatten() {
            expected += 1;
            if codes.contains(code.as_str()) {
                found += 1;
            }
        }

        for mention in &mentions {
            let sentence = &text[mention.sentence_start..mention.sentence_end];
            if sentence.starts_with("Patient has a history of") {
                assert_eq!(mention.temporality, Temporality::Historical, "{mention:#?}");
                assert!(!mention.negated, "{mention:#?}");
            }
            if mention.section == SectionKind::Medications
                && mention
                    .concepts
                    .iter()
                    .any(|concept| concept.system == RXNORM_SYSTEM)
            {
                medications += 1;
            }
            if mention.section == SectionKind::Allergies && sentence == "No Known Allergies." {
                assert!(mention.negated, "{mention:#?}");
                negated_allergies += 1;
            }
        }
    }
    let recall = found as f64 / expected as f64;
    println!(
        "Synthea: {} notes, {total_mentions} mentions in {:.1?}; encounter conditions found {found}/{expected} ({:.1}%); negated 'No Known Allergies' {negated_allergies}; RxNorm mentions in medication sections {medications}",
        notes.len(),
        started.elapsed(),
        recall * 100.0
    );
    assert!(expected > 300, "too few encounter conditions: {expected}");
    assert!(recall >= 0.9, "recall of encounter conditions {recall}");
    assert!(
        negated_allergies > 100,
        "negated allergies: {negated_allergies}"
    );
    assert!(
        medications > 500,
        "RxNorm mentions in medication sections: {medications}"
    );
}

#[test]
fn ctakes_notes_have_valid_mentions() {
    let notes = read_jsonl("clinical-notes-ctakes-examples/notes.jsonl.gz");
    assert_eq!(notes.len(), 2029);

    let started = Instant::now();
    let mut with_mentions = 0usize;
    let mut total = 0usize;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut sections: HashSet<SectionKind> = HashSet::new();
    for note in &notes {
        let text = note["text"].as_str().expect("text");
        let mentions = extract(text, &DICTIONARY);
        check_offsets(text, &mentions);
        if !mentions.is_empty() {
            with_mentions += 1;
        }
        total += mentions.len();
        for mention in &mentions {
            sections.insert(mention.section);
            if mention.negated {
                *counts.entry("negated").or_default() += 1;
            }
            if mention.uncertain {
                *counts.entry("uncertain").or_default() += 1;
            }
            if mention.temporality == Temporality::Historical {
                *counts.entry("historical").or_default() += 1;
            }
            if mention.temporality == Temporality::Hypothetical {
                *counts.entry("hypothetical").or_default() += 1;
            }
            if mention.experiencer == Experiencer::Other {
                *counts.entry("other experiencer").or_default() += 1;
            }
        }
    }
    println!(
        "ctakes examples: {} notes, {with_mentions} with mentions, {total} mentions in {:.1?}; {counts:?}; {} section kinds",
        notes.len(),
        started.elapsed(),
        sections.len()
    );
    // About 5% of these notes are operative and imaging reports whose terms
    // (procedures, "adenoid hypertrophy" for ICD's "hypertrophy of adenoids")
    // no dictionary entry spells word for word.
    assert!(
        with_mentions as f64 >= 0.9 * notes.len() as f64,
        "{with_mentions} notes with mentions"
    );
    for kind in [
        "negated",
        "uncertain",
        "historical",
        "hypothetical",
        "other experiencer",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 100,
            "{kind}: {counts:?}"
        );
    }
    for kind in [
        SectionKind::HistoryOfPresentIllness,
        SectionKind::PastMedicalHistory,
        SectionKind::FamilyHistory,
        SectionKind::SocialHistory,
        SectionKind::ReviewOfSystems,
        SectionKind::PhysicalExam,
        SectionKind::Medications,
        SectionKind::Allergies,
    ] {
        assert!(sections.contains(&kind), "no mention in a {kind:?} section");
    }
}

#[test]
fn ctakes_well_child_note_attributes() {
    let notes = read_jsonl("clinical-notes-ctakes-examples/notes.jsonl.gz");
    let note = notes
        .iter()
        .find(|note| note["name"] == "1-year-old-exam-hp")
        .expect("note 1-year-old-exam-hp");
    let text = note["text"].as_str().expect("text");
    let mentions = extract(text, &DICTIONARY);

    let hypertension = mentions
        .iter()
        .find(|mention| mention.text == "hypertension")
        .expect("hypertension in the family history");
    assert_eq!(hypertension.section, SectionKind::FamilyHistory);
    assert_eq!(hypertension.experiencer, Experiencer::Other);

    let conjunctivitis = mentions
        .iter()
        .find(|mention| mention.text == "conjunctivitis")
        .expect("conjunctivitis in the exam");
    assert_eq!(conjunctivitis.section, SectionKind::PhysicalExam);
    assert!(!conjunctivitis.negated);
    assert_eq!(conjunctivitis.experiencer, Experiencer::Patient);
}
