//! Gold labels: mentions written by hand for notes of the shared data folder.
//!
//! A label file is JSON Lines, one note per line:
//!
//! ```json
//! {"corpus":"clinical-notes-ctakes-examples","note":"uri-soap","sha256":"…","part":"test",
//!  "mentions":[{"start":52,"end":63,"text":"sore throat","type":"problem",
//!               "assertion":"present","codes":["http://hl7.org/fhir/sid/icd-10-cm|J02.9"]}]}
//! ```
//!
//! `corpus` names a folder of the data folder that contains `notes.jsonl.gz`,
//! and `note` is the note's `id` (Synthea) or `name` (ctakes-examples) there.
//! Offsets are byte offsets into the note's UTF-8 text, as in
//! [`crate::Mention`]. Codes are `system|code` tokens, the FHIR search syntax.
//! The note texts are not in the label files: [`GoldSet::read_texts`] reads
//! them from the data folder and rejects a text whose sha256 differs from the
//! one the labels were written for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{NlpError, Result};
use crate::extract::{Experiencer, Mention, Temporality};
use crate::terminology::open_text;

/// Prefix hashed with a note's corpus and id to assign the note to a part.
pub const SPLIT_SALT: &str = "infoctor-nlp-evaluation";

/// Notes go to the development part when the hash, taken modulo this
/// number, is below [`DEV_BUCKETS`]: two fifths of the notes.
pub const SPLIT_BUCKETS: u32 = 5;

/// Number of the [`SPLIT_BUCKETS`] hash buckets that form the development part.
pub const DEV_BUCKETS: u32 = 2;

/// Part of the labelled notes: development (free to inspect and tune on) or
/// test (frozen, for reporting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Dev,
    Test,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Dev => "dev",
            Part::Test => "test",
        }
    }

    /// Returns the part a note belongs to: the first four bytes of
    /// sha256(`infoctor-nlp-evaluation/{corpus}/{note}`), read as a big-endian
    /// number, modulo 5, put buckets 0 and 1 in the development part.
    pub fn of_note(corpus: &str, note: &str) -> Part {
        let digest = Sha256::digest(format!("{SPLIT_SALT}/{corpus}/{note}").as_bytes());
        let bucket = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        if bucket % SPLIT_BUCKETS < DEV_BUCKETS {
            Part::Dev
        } else {
            Part::Test
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Part {
    type Err = String;

    fn from_str(value: &str) -> std::result::Result<Self, Self::Err> {
        match value {
            "dev" => Ok(Part::Dev),
            "test" => Ok(Part::Test),
            other => Err(format!("unknown part {other:?}: expected dev or test")),
        }
    }
}

/// Kind of concept a mention names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConceptType {
    /// A disease, disorder, injury, symptom, sign or abnormal finding.
    Problem,
    Medication,
    /// An allergen named as causing an allergy or intolerance, or an allergy
    /// named without its allergen ("no known allergies").
    Allergy,
}

impl ConceptType {
    pub const ALL: [ConceptType; 3] = [
        ConceptType::Problem,
        ConceptType::Medication,
        ConceptType::Allergy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConceptType::Problem => "problem",
            ConceptType::Medication => "medication",
            ConceptType::Allergy => "allergy",
        }
    }
}

/// Assertion a note makes about a mentioned concept.
///
/// A mention gets one value. When several apply, the first in this order
/// wins: negated, family, possible, hypothetical, historical, present. So
/// "no family history of colon cancer" is negated, and "mother had possible
/// lupus" is family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assertion {
    Present,
    Negated,
    /// Uncertain: possible, probable, suspected, to be ruled out.
    Possible,
    /// Conditional or future: "return if fever", risks of a procedure.
    Hypothetical,
    /// In the past: a past history, "history of", "status post", resolved.
    Historical,
    /// Experienced by a family member or another person, not the patient.
    Family,
}

impl Assertion {
    pub const ALL: [Assertion; 6] = [
        Assertion::Present,
        Assertion::Negated,
        Assertion::Possible,
        Assertion::Hypothetical,
        Assertion::Historical,
        Assertion::Family,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Assertion::Present => "present",
            Assertion::Negated => "negated",
            Assertion::Possible => "possible",
            Assertion::Hypothetical => "hypothetical",
            Assertion::Historical => "historical",
            Assertion::Family => "family",
        }
    }

    /// Maps an extracted mention's ConText attributes to one assertion, with
    /// the precedence the gold labels use.
    pub fn of_mention(mention: &Mention) -> Assertion {
        if mention.negated {
            Assertion::Negated
        } else if mention.experiencer == Experiencer::Other {
            Assertion::Family
        } else if mention.uncertain {
            Assertion::Possible
        } else if mention.temporality == Temporality::Hypothetical {
            Assertion::Hypothetical
        } else if mention.temporality == Temporality::Historical {
            Assertion::Historical
        } else {
            Assertion::Present
        }
    }
}

/// A labelled mention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldMention {
    /// Byte offsets into the note's UTF-8 text.
    pub start: usize,
    pub end: usize,
    /// The note text at `start..end`, kept to check the offsets.
    pub text: String,
    #[serde(rename = "type")]
    pub concept_type: ConceptType,
    pub assertion: Assertion,
    /// `system|code` tokens of the concept; empty where no code was assigned.
    #[serde(default)]
    pub codes: Vec<String>,
}

/// A labelled note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldNote {
    pub corpus: String,
    pub note: String,
    /// sha256 of the note text the labels were written for, lowercase hex.
    pub sha256: String,
    pub part: Part,
    pub mentions: Vec<GoldMention>,
}

/// The labelled notes of one part, as read from its label file.
#[derive(Debug, Clone)]
pub struct GoldSet {
    pub path: PathBuf,
    pub part: Part,
    pub notes: Vec<GoldNote>,
}

/// Returns `labels_dir/gold/{part}.jsonl`.
pub fn gold_file(labels_dir: &Path, part: Part) -> PathBuf {
    labels_dir.join("gold").join(format!("{part}.jsonl"))
}

impl GoldSet {
    /// Reads and checks a label file: every note must belong to `part` by
    /// the split rule ([`Part::of_note`]), appear once, and have mentions in
    /// order that do not overlap.
    pub fn load(path: &Path, part: Part) -> Result<GoldSet> {
        let reader = open_text(path)?;
        let mut notes = Vec::new();
        let mut seen = HashSet::new();
        for (index, line) in reader.lines().enumerate() {
            let line_number = index + 1;
            let line = line.map_err(|source| NlpError::io("reading", path, source))?;
            if line.trim().is_empty() {
                continue;
            }
            let invalid = |message: String| NlpError::InvalidGold {
                path: path.to_path_buf(),
                line: line_number,
                message,
            };
            let note: GoldNote = serde_json::from_str(&line)
                .map_err(|error| invalid(format!("invalid JSON: {error}")))?;
            check_note(&note, part).map_err(invalid)?;
            if !seen.insert((note.corpus.clone(), note.note.clone())) {
                return Err(invalid(format!(
                    "note {:?} of {} appears twice",
                    note.note, note.corpus
                )));
            }
            notes.push(note);
        }
        tracing::debug!(path = %path.display(), notes = notes.len(), "gold labels read");
        Ok(GoldSet {
            path: path.to_path_buf(),
            part,
            notes,
        })
    }

    /// Number of labelled mentions.
    pub fn mention_count(&self) -> usize {
        self.notes.iter().map(|note| note.mentions.len()).sum()
    }

    /// Reads the text of every note from `data_dir/{corpus}/notes.jsonl.gz`,
    /// in the order of [`GoldSet::notes`]. Fails when a note is missing, when
    /// its text's sha256 differs from the labelled one, or when a mention's
    /// offsets do not select its `text`.
    pub fn read_texts(&self, data_dir: &Path) -> Result<Vec<String>> {
        let mut wanted: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for note in &self.notes {
            wanted
                .entry(note.corpus.as_str())
                .or_default()
                .insert(note.note.as_str());
        }
        let mut found: HashMap<(String, String), String> = HashMap::new();
        for (corpus, ids) in &wanted {
            let path = notes_file(data_dir, corpus);
            for (id, text) in read_corpus_notes(&path, ids)? {
                found.insert((corpus.to_string(), id), text);
            }
        }

        let mut texts = Vec::with_capacity(self.notes.len());
        for note in &self.notes {
            let path = notes_file(data_dir, &note.corpus);
            let text = found
                .remove(&(note.corpus.clone(), note.note.clone()))
                .ok_or_else(|| NlpError::NoteNotFound {
                    corpus: note.corpus.clone(),
                    note: note.note.clone(),
                    path: path.clone(),
                })?;
            let actual = hex::encode(Sha256::digest(text.as_bytes()));
            if actual != note.sha256 {
                return Err(NlpError::NoteChanged {
                    corpus: note.corpus.clone(),
                    note: note.note.clone(),
                    path,
                    expected: note.sha256.clone(),
                    actual,
                });
            }
            for mention in &note.mentions {
                if text.get(mention.start..mention.end) != Some(mention.text.as_str()) {
                    return Err(NlpError::InvalidGold {
                        path: self.path.clone(),
                        line: 0,
                        message: format!(
                            "note {:?}: bytes {}..{} are not {:?}",
                            note.note, mention.start, mention.end, mention.text
                        ),
                    });
                }
            }
            texts.push(text);
        }
        Ok(texts)
    }
}

/// Returns `data_dir/{corpus}/notes.jsonl.gz`.
pub fn notes_file(data_dir: &Path, corpus: &str) -> PathBuf {
    data_dir.join(corpus).join("notes.jsonl.gz")
}

fn check_note(note: &GoldNote, part: Part) -> std::result::Result<(), String> {
    let plain_name = !note.corpus.is_empty()
        && note
            .corpus
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_.".contains(character))
        && !note.corpus.starts_with('.');
    if !plain_name {
        return Err(format!(
            "corpus {:?} is not a plain folder name",
            note.corpus
        ));
    }
    if note.part != part {
        return Err(format!(
            "note {:?} is marked {} in the {part} file",
            note.note, note.part
        ));
    }
    let by_rule = Part::of_note(&note.corpus, &note.note);
    if note.part != by_rule {
        return Err(format!(
            "note {:?} is marked {} but the split rule puts it in {by_rule}",
            note.note, note.part
        ));
    }
    if note.sha256.len() != 64 || !note.sha256.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "note {:?}: sha256 {:?} is not 64 hex digits",
            note.note, note.sha256
        ));
    }
    let mut previous_end = 0;
    for mention in &note.mentions {
        if mention.start >= mention.end {
            return Err(format!(
                "note {:?}: mention {:?} has an empty or reversed span {}..{}",
                note.note, mention.text, mention.start, mention.end
            ));
        }
        if mention.start < previous_end {
            return Err(format!(
                "note {:?}: mention {:?} at {} overlaps or precedes the mention before it",
                note.note, mention.text, mention.start
            ));
        }
        previous_end = mention.end;
        if let Some(code) = mention.codes.iter().find(|code| !code.contains('|')) {
            return Err(format!(
                "note {:?}: code {code:?} is not a system|code token",
                note.note
            ));
        }
    }
    Ok(())
}

/// Reads the notes whose `id` or `name` is in `ids` from a notes file.
fn read_corpus_notes(path: &Path, ids: &HashSet<&str>) -> Result<Vec<(String, String)>> {
    #[derive(Deserialize)]
    struct NoteRecord {
        id: Option<String>,
        name: Option<String>,
        text: String,
    }

    let reader = open_text(path)?;
    let mut notes = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| NlpError::io("reading", path, source))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: NoteRecord =
            serde_json::from_str(&line).map_err(|error| NlpError::InvalidGold {
                path: path.to_path_buf(),
                line: index + 1,
                message: format!("invalid note record: {error}"),
            })?;
        let Some(id) = record.id.or(record.name) else {
            continue;
        };
        if ids.contains(id.as_str()) {
            notes.push((id, record.text));
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(part: Part, mentions: Vec<GoldMention>) -> GoldNote {
        GoldNote {
            corpus: "clinical-notes-ctakes-examples".to_string(),
            note: "uri-soap".to_string(),
            sha256: "0".repeat(64),
            part,
            mentions,
        }
    }

    fn mention(start: usize, end: usize) -> GoldMention {
        GoldMention {
            start,
            end,
            text: "x".repeat(end.saturating_sub(start)),
            concept_type: ConceptType::Problem,
            assertion: Assertion::Present,
            codes: Vec::new(),
        }
    }

    #[test]
    fn split_rule_is_stable() {
        // Values fixed when the labels were split; a change here moves notes
        // between the frozen test part and the development part.
        assert_eq!(
            Part::of_note("clinical-notes-ctakes-examples", "uri-soap"),
            Part::Test
        );
        assert_eq!(
            Part::of_note("clinical-notes-ctakes-examples", "gen-med-progress-note-6"),
            Part::Dev
        );
    }

    #[test]
    fn note_in_wrong_part_is_rejected() {
        let error = check_note(&note(Part::Dev, Vec::new()), Part::Dev).unwrap_err();
        assert!(error.contains("split rule"), "{error}");
        let error = check_note(&note(Part::Test, Vec::new()), Part::Dev).unwrap_err();
        assert!(error.contains("marked test in the dev file"), "{error}");
    }

    #[test]
    fn overlapping_mentions_are_rejected() {
        let error = check_note(
            &note(Part::Test, vec![mention(0, 5), mention(3, 8)]),
            Part::Test,
        )
        .unwrap_err();
        assert!(error.contains("overlaps"), "{error}");
        assert!(
            check_note(
                &note(Part::Test, vec![mention(0, 5), mention(5, 8)]),
                Part::Test
            )
            .is_ok()
        );
    }

    #[test]
    fn corpus_must_be_a_folder_name() {
        let mut bad = note(Part::Test, Vec::new());
        bad.corpus = "../secrets".to_string();
        assert!(check_note(&bad, Part::Test).is_err());
    }

    #[test]
    fn assertion_precedence() {
        let base = Mention {
            start: 0,
            end: 1,
            text: String::new(),
            concepts: Vec::new(),
            similarity: None,
            section: crate::SectionKind::Untitled,
            section_title: None,
            sentence_start: 0,
            sentence_end: 1,
            negated: true,
            uncertain: true,
            temporality: Temporality::Historical,
            experiencer: Experiencer::Other,
            triggers: Vec::new(),
        };
        assert_eq!(Assertion::of_mention(&base), Assertion::Negated);
        let family = Mention {
            negated: false,
            ..base.clone()
        };
        assert_eq!(Assertion::of_mention(&family), Assertion::Family);
        let possible = Mention {
            experiencer: Experiencer::Patient,
            ..family.clone()
        };
        assert_eq!(Assertion::of_mention(&possible), Assertion::Possible);
        let historical = Mention {
            uncertain: false,
            ..possible.clone()
        };
        assert_eq!(Assertion::of_mention(&historical), Assertion::Historical);
        let hypothetical = Mention {
            temporality: Temporality::Hypothetical,
            ..historical.clone()
        };
        assert_eq!(
            Assertion::of_mention(&hypothetical),
            Assertion::Hypothetical
        );
        let present = Mention {
            temporality: Temporality::Recent,
            ..historical
        };
        assert_eq!(Assertion::of_mention(&present), Assertion::Present);
    }
}
