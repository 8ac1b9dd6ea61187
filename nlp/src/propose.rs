//! From mentions to proposal drafts: which mentions may become a problem,
//! allergy or medication of the patient, grouped by concept.
//!
//! A mention is never proposed when it is negated, uncertain, hypothetical,
//! or experienced by someone other than the patient. A historical mention is
//! proposed, marked `historical`, because "history of diabetes" usually names
//! a problem the patient still has; the reviewer sets the clinical status.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::dictionary::Concept;
use crate::extract::{Experiencer, Mention, Temporality};
use crate::sections::SectionKind;
use crate::terminology::{ICD10CM_SYSTEM, LOINC_SYSTEM, RXNORM_SYSTEM, SNOMED_SYSTEM};

/// Kind of record entry a draft would add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftKind {
    Problem,
    Allergy,
    Medication,
}

/// Words of the note behind a draft (byte offsets into the note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// A concept the patient may have, with every mention that supports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Draft {
    pub kind: DraftKind,
    /// The matched concepts, the primary one first.
    pub concepts: Vec<Concept>,
    pub evidence: Vec<Evidence>,
    /// Sections, temporality and triggers of the supporting mentions.
    pub attributes: Value,
}

/// Reason a mention was not proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Negated,
    Uncertain,
    Hypothetical,
    OtherExperiencer,
    /// The concept is not a problem, allergy or medication (a procedure, a
    /// laboratory test, a substance outside an allergy section).
    NotProposable,
}

/// Drafts of a note and the count of mentions left out, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drafts {
    pub drafts: Vec<Draft>,
    pub skipped: BTreeMap<SkipReason, usize>,
}

/// Groups a note's mentions into drafts. Mentions with no concept (linking
/// candidates) are ignored.
pub fn drafts(mentions: &[Mention]) -> Drafts {
    let mut result = Drafts::default();
    let mut grouped: BTreeMap<(DraftKind, String, String), Draft> = BTreeMap::new();
    for mention in mentions {
        let Some(primary) = mention.concepts.first() else {
            continue;
        };
        if let Some(reason) = context_skip(mention) {
            *result.skipped.entry(reason).or_default() += 1;
            continue;
        }
        let Some(kind) = classify(mention.section, primary) else {
            *result.skipped.entry(SkipReason::NotProposable).or_default() += 1;
            continue;
        };
        let key = (kind, primary.system.clone(), primary.code.clone());
        let draft = grouped.entry(key).or_insert_with(|| Draft {
            kind,
            concepts: mention.concepts.clone(),
            evidence: Vec::new(),
            attributes: json!({ "sections": [], "historical": false, "triggers": [] }),
        });
        draft.evidence.push(Evidence {
            start: mention.start,
            end: mention.end,
            text: mention.text.clone(),
        });
        merge_attributes(&mut draft.attributes, mention);
    }
    result.drafts = grouped.into_values().collect();
    result
}

fn context_skip(mention: &Mention) -> Option<SkipReason> {
    if mention.negated {
        Some(SkipReason::Negated)
    } else if mention.uncertain {
        Some(SkipReason::Uncertain)
    } else if mention.temporality == Temporality::Hypothetical {
        Some(SkipReason::Hypothetical)
    } else if mention.experiencer == Experiencer::Other {
        Some(SkipReason::OtherExperiencer)
    } else {
        None
    }
}

/// Sections whose untagged terms are read as the patient's problems.
fn is_problem_section(section: SectionKind) -> bool {
    matches!(
        section,
        SectionKind::ChiefComplaint
            | SectionKind::HistoryOfPresentIllness
            | SectionKind::PastMedicalHistory
            | SectionKind::Assessment
            | SectionKind::AssessmentAndPlan
            | SectionKind::Diagnoses
            | SectionKind::ProblemList
            | SectionKind::Impression
    )
}

/// Decides what a concept found in a section would be. SNOMED CT displays
/// carry a semantic tag, and `(disorder)` or `(finding)` marks a problem.
/// An untagged SNOMED CT term counts as a problem only in a problem section.
fn classify(section: SectionKind, concept: &Concept) -> Option<DraftKind> {
    let system = concept.system.as_str();
    if system == LOINC_SYSTEM {
        return None;
    }
    if section == SectionKind::Allergies {
        return (system == RXNORM_SYSTEM || system == SNOMED_SYSTEM).then_some(DraftKind::Allergy);
    }
    match system {
        RXNORM_SYSTEM => Some(DraftKind::Medication),
        ICD10CM_SYSTEM => Some(DraftKind::Problem),
        SNOMED_SYSTEM => {
            let display = concept.display.trim_end();
            let tagged_problem = display.ends_with("(disorder)") || display.ends_with("(finding)");
            let tagged = display.ends_with(')') && display.contains(" (");
            if tagged_problem || (!tagged && is_problem_section(section)) {
                Some(DraftKind::Problem)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn merge_attributes(attributes: &mut Value, mention: &Mention) {
    let section = serde_json::to_value(mention.section).unwrap_or(Value::Null);
    if let Some(sections) = attributes["sections"].as_array_mut()
        && !sections.contains(&section)
    {
        sections.push(section);
    }
    if mention.temporality == Temporality::Historical {
        attributes["historical"] = Value::Bool(true);
    }
    if let Some(triggers) = attributes["triggers"].as_array_mut() {
        for trigger in &mention.triggers {
            let value = json!({
                "kind": trigger.kind,
                "text": trigger.text,
                "start": trigger.start,
                "end": trigger.end,
            });
            if !triggers.contains(&value) {
                triggers.push(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dictionary::{Dictionary, DictionaryEntry};
    use crate::extract::extract;

    fn dictionary() -> Dictionary {
        let mut dictionary = Dictionary::new();
        dictionary.extend([
            DictionaryEntry::new(SNOMED_SYSTEM, "29857009", "Chest pain (finding)")
                .with_synonyms(["chest pain"]),
            DictionaryEntry::new(ICD10CM_SYSTEM, "J18.9", "Pneumonia, unspecified organism")
                .with_synonyms(["pneumonia"]),
            DictionaryEntry::new(
                SNOMED_SYSTEM,
                "254837009",
                "Malignant neoplasm of breast (disorder)",
            )
            .with_synonyms(["breast cancer"]),
            DictionaryEntry::new(
                SNOMED_SYSTEM,
                "44054006",
                "Diabetes mellitus type 2 (disorder)",
            )
            .with_synonyms(["type 2 diabetes"]),
            DictionaryEntry::new(RXNORM_SYSTEM, "860975", "metformin 500 MG Oral Tablet")
                .with_synonyms(["metformin"]),
            DictionaryEntry::new(RXNORM_SYSTEM, "7980", "penicillin G")
                .with_synonyms(["penicillin"]),
            DictionaryEntry::new(LOINC_SYSTEM, "4548-4", "Hemoglobin A1c").with_synonyms(["hba1c"]),
        ]);
        dictionary
    }

    fn kinds(note: &str) -> Vec<(DraftKind, String)> {
        drafts(&extract(note, &dictionary()))
            .drafts
            .into_iter()
            .map(|draft| (draft.kind, draft.concepts[0].code.clone()))
            .collect()
    }

    #[test]
    fn negated_uncertain_and_family_mentions_are_not_proposed() {
        let note = "HPI: Denies chest pain. Rule out pneumonia. Mother had breast cancer.";
        let result = drafts(&extract(note, &dictionary()));
        assert!(result.drafts.is_empty(), "{:?}", result.drafts);
        assert_eq!(result.skipped.get(&SkipReason::Negated), Some(&1));
        assert_eq!(result.skipped.get(&SkipReason::Uncertain), Some(&1));
        assert_eq!(result.skipped.get(&SkipReason::OtherExperiencer), Some(&1));
    }

    #[test]
    fn hypothetical_mention_is_not_proposed() {
        assert!(kinds("Plan: return if chest pain develops.").is_empty());
    }

    #[test]
    fn affirmed_mentions_become_drafts_by_kind() {
        let note = "Assessment: type 2 diabetes. Continue metformin daily.\n\
                    Allergies: penicillin (hives).\nResults: HbA1c 8.1%.";
        let found = kinds(note);
        assert!(
            found.contains(&(DraftKind::Problem, "44054006".to_owned())),
            "{found:?}"
        );
        assert!(
            found.contains(&(DraftKind::Medication, "860975".to_owned())),
            "{found:?}"
        );
        assert!(
            found.contains(&(DraftKind::Allergy, "7980".to_owned())),
            "{found:?}"
        );
        assert_eq!(found.len(), 3, "a LOINC test is not proposed: {found:?}");
    }

    #[test]
    fn repeated_concept_is_one_draft_with_all_evidence() {
        let note = "Assessment: type 2 diabetes. Plan: type 2 diabetes education.";
        let result = drafts(&extract(note, &dictionary()));
        assert_eq!(result.drafts.len(), 1);
        let evidence = &result.drafts[0].evidence;
        assert_eq!(evidence.len(), 2);
        for span in evidence {
            assert_eq!(&note[span.start..span.end], span.text);
        }
    }

    #[test]
    fn historical_mention_is_proposed_and_marked() {
        let note = "HPI: The patient has a history of type 2 diabetes.";
        let result = drafts(&extract(note, &dictionary()));
        assert_eq!(result.drafts.len(), 1);
        assert_eq!(result.drafts[0].attributes["historical"], Value::Bool(true));
    }
}
