//! Concept types of dictionary concepts, so that extracted mentions can be
//! scored by type.
//!
//! The extractor returns concepts, not types. The evaluation gives each
//! concept a type from where it comes from:
//!
//! - FHIR codings by the element they were found in: `Condition.code` and
//!   `AllergyIntolerance.reaction.manifestation` are problems,
//!   `medicationCodeableConcept` of MedicationRequest, MedicationStatement,
//!   MedicationAdministration and MedicationDispense, and `Medication.code`,
//!   are medications, and `AllergyIntolerance.code` and
//!   `AllergyIntolerance.reaction.substance` are allergies. Codings of
//!   other resources (procedures, encounters, observations) get no type.
//! - ICD-10-CM codes by chapter, see [`icd10cm_concept_type`].
//!
//! A mention takes the type of its first concept that has one. Mentions
//! whose concepts have none (a LOINC test name, a procedure) are not scored.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::gold::ConceptType;
use crate::dictionary::Concept;
use crate::error::{NlpError, Result};
use crate::extract::Mention;
use crate::terminology::{ICD10CM_SYSTEM, open_text};

/// ICD-10-CM code prefixes whose concepts are allergies: anaphylaxis and
/// other adverse reactions to food (T78.0, T78.1), allergy unspecified or
/// other (T78.4), allergy status to drugs (Z88) and to food, insects and
/// other substances (Z91.01 to Z91.04).
const ICD10CM_ALLERGY_PREFIXES: &[&str] = &[
    "T78.0", "T78.1", "T78.4", "Z88", "Z91.01", "Z91.02", "Z91.03", "Z91.04",
];

/// Returns the type of an ICD-10-CM code: allergy for the codes of
/// [`ICD10CM_ALLERGY_PREFIXES`], problem for chapters A to U and for the Z
/// codes of socioeconomic and psychosocial circumstances (Z55-Z65), lifestyle
/// and life management (Z72-Z73) and exposure to hazards (Z77). External
/// causes (V-Y) and the other Z codes (encounters, status, history) get none.
pub fn icd10cm_concept_type(code: &str) -> Option<ConceptType> {
    let code = code.trim().to_ascii_uppercase();
    if ICD10CM_ALLERGY_PREFIXES
        .iter()
        .any(|prefix| code.starts_with(prefix))
    {
        return Some(ConceptType::Allergy);
    }
    let chapter = code.chars().next()?;
    match chapter {
        'A'..='U' => Some(ConceptType::Problem),
        'Z' => {
            let category: u32 = code.get(1..3)?.parse().ok()?;
            matches!(category, 55..=65 | 72 | 73 | 77).then_some(ConceptType::Problem)
        }
        _ => None,
    }
}

/// Types of concepts found in FHIR resources, by system and code.
#[derive(Debug, Default, Clone)]
pub struct ConceptTypes {
    by_concept: HashMap<(String, String), ConceptType>,
}

impl ConceptTypes {
    pub fn new() -> Self {
        ConceptTypes::default()
    }

    /// Number of typed FHIR concepts (ICD-10-CM codes are typed by rule and
    /// not counted).
    pub fn len(&self) -> usize {
        self.by_concept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_concept.is_empty()
    }

    /// Records the types of the codings in one FHIR resource.
    pub fn add_resource(&mut self, resource: &Value) {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match resource_type {
            "Condition" => self.add_codeable(resource.get("code"), ConceptType::Problem),
            "AllergyIntolerance" => {
                self.add_codeable(resource.get("code"), ConceptType::Allergy);
                for reaction in array(resource.get("reaction")) {
                    self.add_codeable(reaction.get("substance"), ConceptType::Allergy);
                    for manifestation in array(reaction.get("manifestation")) {
                        self.add_codeable(Some(manifestation), ConceptType::Problem);
                    }
                }
            }
            "MedicationRequest"
            | "MedicationStatement"
            | "MedicationAdministration"
            | "MedicationDispense" => self.add_codeable(
                resource.get("medicationCodeableConcept"),
                ConceptType::Medication,
            ),
            "Medication" => self.add_codeable(resource.get("code"), ConceptType::Medication),
            _ => {}
        }
    }

    /// Reads every `*.ndjson` and `*.ndjson.gz` file of a folder (not its
    /// subfolders) and records the types of their codings.
    pub fn add_fhir_dir(&mut self, dir: &Path) -> Result<()> {
        let reader =
            std::fs::read_dir(dir).map_err(|source| NlpError::io("listing", dir, source))?;
        let mut paths = Vec::new();
        for item in reader {
            let item = item.map_err(|source| NlpError::io("listing", dir, source))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
                paths.push(item.path());
            }
        }
        paths.sort();
        for path in &paths {
            for (index, line) in open_text(path)?.lines().enumerate() {
                let line = line.map_err(|source| NlpError::io("reading", path, source))?;
                if line.trim().is_empty() {
                    continue;
                }
                let resource: Value =
                    serde_json::from_str(&line).map_err(|error| NlpError::InvalidTerminology {
                        path: path.clone(),
                        line: index + 1,
                        message: format!("invalid JSON: {error}"),
                    })?;
                self.add_resource(&resource);
            }
        }
        tracing::debug!(dir = %dir.display(), concepts = self.len(), "concept types read");
        Ok(())
    }

    /// Returns the type of a concept, if it has one.
    pub fn concept_type(&self, concept: &Concept) -> Option<ConceptType> {
        if concept.system == ICD10CM_SYSTEM {
            return icd10cm_concept_type(&concept.code);
        }
        self.by_concept
            .get(&(concept.system.clone(), concept.code.clone()))
            .copied()
    }

    /// Returns the type of a mention's first concept that has one.
    pub fn mention_type(&self, mention: &Mention) -> Option<ConceptType> {
        mention
            .concepts
            .iter()
            .find_map(|concept| self.concept_type(concept))
    }

    /// Records the codings of a CodeableConcept. A concept seen with two
    /// types keeps the more specific one: allergy over medication over problem.
    fn add_codeable(&mut self, codeable: Option<&Value>, concept_type: ConceptType) {
        let Some(codeable) = codeable else { return };
        for coding in array(codeable.get("coding")) {
            let field = |name: &str| coding.get(name).and_then(Value::as_str);
            let (Some(system), Some(code)) = (field("system"), field("code")) else {
                continue;
            };
            let entry = self
                .by_concept
                .entry((system.to_string(), code.to_string()))
                .or_insert(concept_type);
            *entry = (*entry).max(concept_type);
        }
    }
}

fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn icd10cm_chapters() {
        assert_eq!(icd10cm_concept_type("J20.9"), Some(ConceptType::Problem));
        assert_eq!(icd10cm_concept_type("U07.1"), Some(ConceptType::Problem));
        assert_eq!(icd10cm_concept_type("T78.40"), Some(ConceptType::Allergy));
        assert_eq!(icd10cm_concept_type("Z88.0"), Some(ConceptType::Allergy));
        assert_eq!(icd10cm_concept_type("Z91.010"), Some(ConceptType::Allergy));
        assert_eq!(icd10cm_concept_type("Z73.3"), Some(ConceptType::Problem));
        assert_eq!(icd10cm_concept_type("Z59.10"), Some(ConceptType::Problem));
        assert_eq!(icd10cm_concept_type("Z00.00"), None);
        assert_eq!(icd10cm_concept_type("Z87.891"), None);
        assert_eq!(icd10cm_concept_type("W19"), None);
    }

    #[test]
    fn fhir_elements_give_types() {
        let mut types = ConceptTypes::new();
        types.add_resource(&json!({
            "resourceType": "AllergyIntolerance",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "111088007"}]},
            "reaction": [{"manifestation": [{"coding": [
                {"system": "http://snomed.info/sct", "code": "247472004"}]}]}]
        }));
        types.add_resource(&json!({
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": {"coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313782"}]}
        }));
        types.add_resource(&json!({
            "resourceType": "Procedure",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "117015009"}]}
        }));
        // Wheal is a reaction here and a condition elsewhere: still a problem.
        types.add_resource(&json!({
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "247472004"}]}
        }));
        let concept = |system: &str, code: &str| Concept {
            system: system.to_string(),
            code: code.to_string(),
            display: String::new(),
        };
        assert_eq!(
            types.concept_type(&concept("http://snomed.info/sct", "111088007")),
            Some(ConceptType::Allergy)
        );
        assert_eq!(
            types.concept_type(&concept("http://snomed.info/sct", "247472004")),
            Some(ConceptType::Problem)
        );
        assert_eq!(
            types.concept_type(&concept(
                "http://www.nlm.nih.gov/research/umls/rxnorm",
                "313782"
            )),
            Some(ConceptType::Medication)
        );
        assert_eq!(
            types.concept_type(&concept("http://snomed.info/sct", "117015009")),
            None
        );
        assert_eq!(types.len(), 3);
    }
}
