//! Evaluation of concept extraction against hand-labelled notes.
//!
//! The gold labels ([`gold`]) mark every mention of a problem, medication
//! and allergy in notes of the shared data folder, with its assertion and,
//! where one was assigned, its codes. [`evaluate`] runs up to three systems
//! over the notes of one part and scores them ([`score`]):
//!
//! | system | what it is |
//! |---|---|
//! | [`System::Baseline`] | the dictionary matches of [`crate::extract()`], every one counted as present |
//! | [`System::Context`] | the same matches with their ConText attributes, as `infoctor nlp extract` returns them |
//! | [`System::Linking`] | [`System::Context`] plus phrases linked by embedding ([`crate::linking`]) |
//!
//! All systems use one dictionary: the ICD-10-CM titles and the SNOMED CT,
//! RxNorm and LOINC displays of a FHIR export ([`Terminology`]). Extracted
//! mentions are typed by [`typing`]; those without a problem, medication or
//! allergy concept are left out of the scores.

pub mod gold;
pub mod report;
pub mod score;
pub mod typing;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::dictionary::Dictionary;
use crate::error::Result;
use crate::extract::{Mention, extract};
use crate::linking::{LinkCandidates, Linker, link_candidates};
use crate::terminology::{DEFAULT_HARVEST_SYSTEMS, harvest_fhir_codings, load_icd10cm_dir};

pub use gold::{Assertion, ConceptType, GoldMention, GoldNote, GoldSet, Part, gold_file};
pub use score::{Counts, Prediction, RowGroup, ScoreRow, row_labels, score_notes};
pub use typing::{ConceptTypes, icd10cm_concept_type};

/// Folder of the ICD-10-CM tables below the data folder.
pub const ICD10CM_DATA_DIR: &str = "icd10cm-2026";

/// Folder of the FHIR NDJSON export whose codings the dictionary matches,
/// below the data folder.
pub const CODINGS_DATA_DIR: &str = "synthea-bulk-10-2024/ndjson";

/// The dictionary the systems match and the types of its concepts.
#[derive(Debug, Clone)]
pub struct Terminology {
    pub dictionary: Dictionary,
    pub types: ConceptTypes,
}

impl Terminology {
    /// Builds the dictionary `infoctor nlp extract --icd10cm DIR --codings
    /// DIR` uses: ICD-10-CM titles and the SNOMED CT, RxNorm and LOINC
    /// codings of the FHIR files, and reads the concept types of the codings.
    pub fn load(icd10cm_dir: &Path, codings_dir: &Path) -> Result<Terminology> {
        let mut dictionary = Dictionary::new();
        dictionary.extend(load_icd10cm_dir(icd10cm_dir)?);
        dictionary.extend(harvest_fhir_codings(codings_dir, &DEFAULT_HARVEST_SYSTEMS)?);
        let mut types = ConceptTypes::new();
        types.add_fhir_dir(codings_dir)?;
        tracing::info!(
            concepts = dictionary.len(),
            terms = dictionary.term_count(),
            typed_fhir_concepts = types.len(),
            "evaluation terminology loaded"
        );
        Ok(Terminology { dictionary, types })
    }
}

/// A system under evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    Baseline,
    Context,
    Linking,
}

impl System {
    pub fn description(self) -> &'static str {
        match self {
            System::Baseline => "dictionary match, no context (all present)",
            System::Context => "dictionary match + ConText",
            System::Linking => "dictionary match + ConText + embedding linking",
        }
    }
}

/// Scores of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemReport {
    pub system: System,
    pub description: String,
    /// Minimum cosine similarity of a link, for [`System::Linking`].
    pub link_threshold: Option<f32>,
    /// Extracted mentions with a problem, medication or allergy concept.
    pub predictions: usize,
    /// Extracted mentions left out because none of their concepts has a type.
    pub untyped_mentions: usize,
    pub rows: Vec<ScoreRow>,
}

/// Counts of the gold labels of the evaluated part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoldSummary {
    pub notes: usize,
    pub notes_by_corpus: BTreeMap<String, usize>,
    pub mentions: usize,
    pub mentions_by_type: BTreeMap<String, usize>,
    pub mentions_by_assertion: BTreeMap<String, usize>,
    pub mentions_with_codes: usize,
}

impl GoldSummary {
    fn of(gold: &GoldSet) -> GoldSummary {
        let mut summary = GoldSummary {
            notes: gold.notes.len(),
            notes_by_corpus: BTreeMap::new(),
            mentions: gold.mention_count(),
            mentions_by_type: ConceptType::ALL
                .iter()
                .map(|concept_type| (concept_type.as_str().to_string(), 0))
                .collect(),
            mentions_by_assertion: Assertion::ALL
                .iter()
                .map(|assertion| (assertion.as_str().to_string(), 0))
                .collect(),
            mentions_with_codes: 0,
        };
        for note in &gold.notes {
            *summary
                .notes_by_corpus
                .entry(note.corpus.clone())
                .or_default() += 1;
            for mention in &note.mentions {
                *summary
                    .mentions_by_type
                    .entry(mention.concept_type.as_str().to_string())
                    .or_default() += 1;
                *summary
                    .mentions_by_assertion
                    .entry(mention.assertion.as_str().to_string())
                    .or_default() += 1;
                if !mention.codes.is_empty() {
                    summary.mentions_with_codes += 1;
                }
            }
        }
        summary
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    pub part: Part,
    pub gold: GoldSummary,
    pub systems: Vec<SystemReport>,
}

/// Runs the baseline and the ConText system, and the linking system when a
/// linker is given, over the notes of `gold` (whose texts are `texts`, in
/// the same order) and scores them.
pub fn evaluate(
    gold: &GoldSet,
    texts: &[String],
    terminology: &Terminology,
    linker: Option<&Linker<'_>>,
) -> Result<EvaluationReport> {
    assert_eq!(gold.notes.len(), texts.len(), "one text per gold note");
    tracing::info!(part = %gold.part, notes = gold.notes.len(), linking = linker.is_some(), "evaluation started");
    let mut extracted = Vec::with_capacity(texts.len());
    let mut linked = Vec::new();
    for text in texts {
        match linker {
            Some(linker) => {
                let candidates = link_candidates(text, &terminology.dictionary, linker)?;
                extracted.push(candidates.matched.clone());
                linked.push(candidates.mentions(linker.threshold));
            }
            None => extracted.push(extract(text, &terminology.dictionary)),
        }
    }

    let mut systems = vec![
        score_system(System::Baseline, None, gold, &extracted, terminology),
        score_system(System::Context, None, gold, &extracted, terminology),
    ];
    if let Some(linker) = linker {
        systems.push(score_system(
            System::Linking,
            Some(linker.threshold),
            gold,
            &linked,
            terminology,
        ));
    }
    tracing::info!(part = %gold.part, "evaluation finished");
    Ok(EvaluationReport {
        part: gold.part,
        gold: GoldSummary::of(gold),
        systems,
    })
}

/// Scores the linking system at each threshold, embedding the candidate
/// phrases once. `linker.threshold` must not exceed the lowest threshold,
/// because links below it are never computed.
pub fn sweep_link_thresholds(
    gold: &GoldSet,
    texts: &[String],
    terminology: &Terminology,
    linker: &Linker<'_>,
    thresholds: &[f32],
) -> Result<Vec<SystemReport>> {
    assert_eq!(gold.notes.len(), texts.len(), "one text per gold note");
    assert!(
        thresholds
            .iter()
            .all(|&threshold| threshold >= linker.threshold),
        "thresholds below the linker's threshold {} cannot be scored",
        linker.threshold
    );
    let candidates: Vec<LinkCandidates> = texts
        .iter()
        .map(|text| link_candidates(text, &terminology.dictionary, linker))
        .collect::<Result<_>>()?;
    Ok(thresholds
        .iter()
        .map(|&threshold| {
            let mentions: Vec<Vec<Mention>> = candidates
                .iter()
                .map(|note| note.mentions(threshold))
                .collect();
            score_system(
                System::Linking,
                Some(threshold),
                gold,
                &mentions,
                terminology,
            )
        })
        .collect())
}

fn score_system(
    system: System,
    link_threshold: Option<f32>,
    gold: &GoldSet,
    mentions: &[Vec<Mention>],
    terminology: &Terminology,
) -> SystemReport {
    let mut untyped_mentions = 0;
    let predictions: Vec<Vec<Prediction>> = mentions
        .iter()
        .map(|note_mentions| {
            let (predictions, untyped) = to_predictions(system, note_mentions, &terminology.types);
            untyped_mentions += untyped;
            predictions
        })
        .collect();
    let notes: Vec<(&[GoldMention], &[Prediction])> = gold
        .notes
        .iter()
        .zip(&predictions)
        .map(|(note, predicted)| (note.mentions.as_slice(), predicted.as_slice()))
        .collect();
    SystemReport {
        system,
        description: system.description().to_string(),
        link_threshold,
        predictions: predictions.iter().map(Vec::len).sum(),
        untyped_mentions,
        rows: score_notes(&notes),
    }
}

/// Converts extracted mentions to predictions; returns them and the number
/// of mentions left out for having no typed concept.
fn to_predictions(
    system: System,
    mentions: &[Mention],
    types: &ConceptTypes,
) -> (Vec<Prediction>, usize) {
    let mut predictions = Vec::with_capacity(mentions.len());
    let mut untyped = 0;
    for mention in mentions {
        let Some(concept_type) = types.mention_type(mention) else {
            untyped += 1;
            continue;
        };
        let assertion = match system {
            System::Baseline => Assertion::Present,
            System::Context | System::Linking => Assertion::of_mention(mention),
        };
        predictions.push(Prediction {
            start: mention.start,
            end: mention.end,
            concept_type,
            assertion,
            codes: mention
                .concepts
                .iter()
                .map(|concept| format!("{}|{}", concept.system, concept.code))
                .collect(),
        });
    }
    (predictions, untyped)
}
