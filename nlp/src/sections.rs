//! Section detection in clinical notes.
//!
//! A header is recognised at the start of a line in three forms:
//! - a Markdown heading (`# History of Present Illness`, `## Plan`);
//! - a label followed by a colon (`PAST MEDICAL HISTORY:`, `Allergies: none`),
//!   where the text after the colon belongs to the new section;
//! - a known section name alone on its line (`ASSESSMENT AND PLAN`).
//!
//! Labels are looked up in a table of common spellings and abbreviations
//! (`HPI`, `PMH`, `A/P`, ...). A label that is not in the table starts a
//! section of kind [`SectionKind::Other`] only when it is written in capitals
//! and is not the name of a body system. Mixed-case labels such as `Eyes:`
//! or `Neck:` usually name parts of a physical exam, so they start no
//! section.

use serde::{Deserialize, Serialize};

use crate::text::fold;

/// Kind of a note section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// Text before the first header.
    Untitled,
    ChiefComplaint,
    HistoryOfPresentIllness,
    PastMedicalHistory,
    PastSurgicalHistory,
    Medications,
    Allergies,
    FamilyHistory,
    SocialHistory,
    ReviewOfSystems,
    PhysicalExam,
    VitalSigns,
    Results,
    Assessment,
    Plan,
    AssessmentAndPlan,
    Diagnoses,
    Procedures,
    HospitalCourse,
    Immunizations,
    ProblemList,
    Findings,
    Impression,
    /// A capitalised header that is not in the table.
    Other,
}

/// A section: its header and the body text that follows it, as byte offsets
/// into the note. Bodies and headers of consecutive sections tile the note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub kind: SectionKind,
    /// Header label as written, without `#` or the colon; `None` for
    /// [`SectionKind::Untitled`].
    pub title: Option<String>,
    pub header_start: usize,
    pub header_end: usize,
    pub body_start: usize,
    pub body_end: usize,
}

/// Normalised header labels and their kinds.
const HEADER_TABLE: &[(&str, SectionKind)] = &[
    ("chief complaint", SectionKind::ChiefComplaint),
    ("chief complaints", SectionKind::ChiefComplaint),
    ("cc", SectionKind::ChiefComplaint),
    ("reason for visit", SectionKind::ChiefComplaint),
    ("reason for consultation", SectionKind::ChiefComplaint),
    ("reason for consult", SectionKind::ChiefComplaint),
    ("reason for referral", SectionKind::ChiefComplaint),
    ("reason for admission", SectionKind::ChiefComplaint),
    ("presenting complaint", SectionKind::ChiefComplaint),
    (
        "history of present illness",
        SectionKind::HistoryOfPresentIllness,
    ),
    (
        "history of the present illness",
        SectionKind::HistoryOfPresentIllness,
    ),
    (
        "history of presenting illness",
        SectionKind::HistoryOfPresentIllness,
    ),
    ("present illness", SectionKind::HistoryOfPresentIllness),
    ("hpi", SectionKind::HistoryOfPresentIllness),
    ("history", SectionKind::HistoryOfPresentIllness),
    ("subjective", SectionKind::HistoryOfPresentIllness),
    ("interval history", SectionKind::HistoryOfPresentIllness),
    ("past medical history", SectionKind::PastMedicalHistory),
    ("past medical hx", SectionKind::PastMedicalHistory),
    ("past history", SectionKind::PastMedicalHistory),
    ("medical history", SectionKind::PastMedicalHistory),
    ("pmh", SectionKind::PastMedicalHistory),
    ("pmhx", SectionKind::PastMedicalHistory),
    (
        "past medical and surgical history",
        SectionKind::PastMedicalHistory,
    ),
    (
        "past medical surgical history",
        SectionKind::PastMedicalHistory,
    ),
    ("past surgical history", SectionKind::PastSurgicalHistory),
    ("surgical history", SectionKind::PastSurgicalHistory),
    ("past surgical hx", SectionKind::PastSurgicalHistory),
    ("psh", SectionKind::PastSurgicalHistory),
    ("previous surgeries", SectionKind::PastSurgicalHistory),
    ("past surgeries", SectionKind::PastSurgicalHistory),
    ("medications", SectionKind::Medications),
    ("medication", SectionKind::Medications),
    ("meds", SectionKind::Medications),
    ("current medications", SectionKind::Medications),
    ("current meds", SectionKind::Medications),
    ("home medications", SectionKind::Medications),
    ("outpatient medications", SectionKind::Medications),
    ("admission medications", SectionKind::Medications),
    ("medications on admission", SectionKind::Medications),
    ("discharge medications", SectionKind::Medications),
    ("medications at discharge", SectionKind::Medications),
    ("allergies", SectionKind::Allergies),
    ("allergy", SectionKind::Allergies),
    ("drug allergies", SectionKind::Allergies),
    ("medication allergies", SectionKind::Allergies),
    ("allergies and adverse reactions", SectionKind::Allergies),
    ("family history", SectionKind::FamilyHistory),
    ("family hx", SectionKind::FamilyHistory),
    ("family medical history", SectionKind::FamilyHistory),
    ("fh", SectionKind::FamilyHistory),
    ("fhx", SectionKind::FamilyHistory),
    ("social history", SectionKind::SocialHistory),
    ("social hx", SectionKind::SocialHistory),
    ("sh", SectionKind::SocialHistory),
    ("shx", SectionKind::SocialHistory),
    ("habits", SectionKind::SocialHistory),
    ("review of systems", SectionKind::ReviewOfSystems),
    ("review of system", SectionKind::ReviewOfSystems),
    ("systems review", SectionKind::ReviewOfSystems),
    ("ros", SectionKind::ReviewOfSystems),
    ("physical exam", SectionKind::PhysicalExam),
    ("physical examination", SectionKind::PhysicalExam),
    (
        "physical examination on admission",
        SectionKind::PhysicalExam,
    ),
    ("exam", SectionKind::PhysicalExam),
    ("examination", SectionKind::PhysicalExam),
    ("pe", SectionKind::PhysicalExam),
    ("objective", SectionKind::PhysicalExam),
    ("vital signs", SectionKind::VitalSigns),
    ("vitals", SectionKind::VitalSigns),
    ("laboratory data", SectionKind::Results),
    ("laboratory", SectionKind::Results),
    ("laboratory studies", SectionKind::Results),
    ("laboratory results", SectionKind::Results),
    ("laboratory findings", SectionKind::Results),
    ("lab results", SectionKind::Results),
    ("labs", SectionKind::Results),
    ("results", SectionKind::Results),
    ("diagnostic studies", SectionKind::Results),
    ("diagnostic data", SectionKind::Results),
    ("imaging", SectionKind::Results),
    ("radiology", SectionKind::Results),
    ("studies", SectionKind::Results),
    ("assessment", SectionKind::Assessment),
    ("clinical assessment", SectionKind::Assessment),
    ("plan", SectionKind::Plan),
    ("recommendations", SectionKind::Plan),
    ("recommendation", SectionKind::Plan),
    ("disposition", SectionKind::Plan),
    ("treatment plan", SectionKind::Plan),
    ("plan of care", SectionKind::Plan),
    ("assessment and plan", SectionKind::AssessmentAndPlan),
    ("assessment plan", SectionKind::AssessmentAndPlan),
    ("a p", SectionKind::AssessmentAndPlan),
    ("a and p", SectionKind::AssessmentAndPlan),
    ("impression and plan", SectionKind::AssessmentAndPlan),
    ("impression plan", SectionKind::AssessmentAndPlan),
    ("diagnosis", SectionKind::Diagnoses),
    ("diagnoses", SectionKind::Diagnoses),
    ("preoperative diagnosis", SectionKind::Diagnoses),
    ("postoperative diagnosis", SectionKind::Diagnoses),
    ("pre operative diagnosis", SectionKind::Diagnoses),
    ("post operative diagnosis", SectionKind::Diagnoses),
    ("admitting diagnosis", SectionKind::Diagnoses),
    ("admission diagnosis", SectionKind::Diagnoses),
    ("discharge diagnosis", SectionKind::Diagnoses),
    ("discharge diagnoses", SectionKind::Diagnoses),
    ("final diagnosis", SectionKind::Diagnoses),
    ("final diagnoses", SectionKind::Diagnoses),
    ("principal diagnosis", SectionKind::Diagnoses),
    ("secondary diagnoses", SectionKind::Diagnoses),
    ("procedure", SectionKind::Procedures),
    ("procedures", SectionKind::Procedures),
    ("procedure performed", SectionKind::Procedures),
    ("procedures performed", SectionKind::Procedures),
    ("operation", SectionKind::Procedures),
    ("operations", SectionKind::Procedures),
    ("operation performed", SectionKind::Procedures),
    ("description of procedure", SectionKind::Procedures),
    ("procedure in detail", SectionKind::Procedures),
    ("operative procedure", SectionKind::Procedures),
    ("hospital course", SectionKind::HospitalCourse),
    ("course", SectionKind::HospitalCourse),
    ("ed course", SectionKind::HospitalCourse),
    ("emergency department course", SectionKind::HospitalCourse),
    ("clinical course", SectionKind::HospitalCourse),
    ("immunizations", SectionKind::Immunizations),
    ("immunization", SectionKind::Immunizations),
    ("immunization history", SectionKind::Immunizations),
    ("vaccinations", SectionKind::Immunizations),
    ("problem list", SectionKind::ProblemList),
    ("active problems", SectionKind::ProblemList),
    ("problems", SectionKind::ProblemList),
    ("findings", SectionKind::Findings),
    ("impression", SectionKind::Impression),
    ("impressions", SectionKind::Impression),
    ("clinical impression", SectionKind::Impression),
    ("conclusion", SectionKind::Impression),
    ("conclusions", SectionKind::Impression),
];

/// Capitalised labels that name a body system or an exam item. They appear
/// inside physical exam and review of systems sections and start no section.
const SUBHEADINGS: &[&str] = &[
    "general",
    "constitutional",
    "heent",
    "head",
    "eyes",
    "eye",
    "ears",
    "ent",
    "nose",
    "throat",
    "mouth",
    "neck",
    "lungs",
    "chest",
    "respiratory",
    "heart",
    "cardiac",
    "cardiovascular",
    "cv",
    "abdomen",
    "abdominal",
    "gi",
    "gastrointestinal",
    "gu",
    "genitourinary",
    "back",
    "spine",
    "extremities",
    "ext",
    "musculoskeletal",
    "msk",
    "skin",
    "integumentary",
    "neurologic",
    "neurological",
    "neuro",
    "psychiatric",
    "psych",
    "lymphatic",
    "lymph nodes",
    "heme",
    "hematologic",
    "endocrine",
    "rectal",
    "pelvic",
    "breasts",
    "breast",
    "pulses",
    "vascular",
    "mental status",
    "allergic immunologic",
    "bp",
    "hr",
    "rr",
    "temp",
    "pulse",
    "weight",
    "height",
    "spo2",
    "o2 sat",
    "note",
    "notes",
];

/// Splits a note into sections that tile it in order.
pub fn detect_sections(text: &str) -> Vec<Section> {
    let mut sections = vec![Section {
        kind: SectionKind::Untitled,
        title: None,
        header_start: 0,
        header_end: 0,
        body_start: 0,
        body_end: text.len(),
    }];

    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |position| line_start + position);
        if let Some(header) = parse_header(text, line_start, line_end) {
            if let Some(previous) = sections.last_mut() {
                previous.body_end = header.header_start;
            }
            sections.push(header);
        }
        line_start = line_end + 1;
    }
    if let Some(last) = sections.last_mut() {
        last.body_end = text.len();
    }
    // A header at the very start leaves an empty untitled part, which is dropped.
    if sections.len() > 1 && sections[0].body_start == sections[0].body_end {
        sections.remove(0);
    }
    sections
}

/// Returns the section whose header or body contains `offset`.
pub fn section_at(sections: &[Section], offset: usize) -> Option<&Section> {
    let index = sections.partition_point(|section| section.header_start <= offset);
    index.checked_sub(1).map(|index| &sections[index])
}

fn parse_header(text: &str, line_start: usize, line_end: usize) -> Option<Section> {
    let line = &text[line_start..line_end];
    let indent = line.len() - line.trim_start().len();
    let content = line.trim();
    if content.is_empty() {
        return None;
    }
    let content_start = line_start + indent;

    if let Some(title) = content.strip_prefix('#') {
        let title = title.trim_start_matches('#').trim();
        if title.is_empty() || title.len() > 80 {
            return None;
        }
        let kind = lookup_label(title).unwrap_or(SectionKind::Other);
        return Some(header_section(
            kind,
            title,
            content_start,
            line_start + indent + content.len(),
            line_end,
        ));
    }

    if let Some(colon) = content.find(':').filter(|&colon| colon > 0 && colon <= 60) {
        let label = content[..colon].trim();
        if !is_label_shaped(label) {
            return None;
        }
        let kind = match lookup_label(label) {
            Some(kind) => kind,
            None if is_capitalised(label) && !is_subheading(label) => SectionKind::Other,
            None => return None,
        };
        let header_end = content_start + colon + 1;
        return Some(header_section(
            kind,
            label,
            content_start,
            header_end,
            header_end,
        ));
    }

    let label = content.trim_end_matches(['.', ' ']);
    if is_label_shaped(label) && (is_capitalised(label) || label.split_whitespace().count() >= 2) {
        let kind = lookup_label(label)?;
        return Some(header_section(
            kind,
            label,
            content_start,
            content_start + content.len(),
            line_end,
        ));
    }
    None
}

fn header_section(
    kind: SectionKind,
    title: &str,
    header_start: usize,
    header_end: usize,
    body_start: usize,
) -> Section {
    Section {
        kind,
        title: Some(title.to_string()),
        header_start,
        header_end,
        body_start,
        body_end: body_start,
    }
}

/// Checks that a label is one to six words of letters, with `&`, `/`, `-`,
/// `'` and parentheses, and no digits or sentence punctuation.
fn is_label_shaped(label: &str) -> bool {
    let words = label.split_whitespace().count();
    (1..=6).contains(&words)
        && label.chars().any(char::is_alphabetic)
        && label
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || "&/-'()".contains(c))
}

/// Checks that all letters are capitals and there are at least three of them.
fn is_capitalised(label: &str) -> bool {
    let letters: Vec<char> = label.chars().filter(|c| c.is_alphabetic()).collect();
    letters.len() >= 3 && letters.iter().all(|c| c.is_uppercase())
}

fn is_subheading(label: &str) -> bool {
    let normalized = normalize_label(label);
    SUBHEADINGS.contains(&normalized.as_str())
}

/// Lowercases a label, drops parenthesised parts, spells `&` as "and" and
/// turns other punctuation into single spaces ("A/P" becomes "a p").
fn normalize_label(label: &str) -> String {
    let mut without_parentheses = String::with_capacity(label.len());
    let mut depth = 0usize;
    for character in label.chars() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => without_parentheses.push(character),
            _ => {}
        }
    }
    let spaced = fold(&without_parentheses).replace('&', " and ");
    spaced
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn lookup_label(label: &str) -> Option<SectionKind> {
    let normalized = normalize_label(label);
    HEADER_TABLE
        .iter()
        .find(|(name, _)| *name == normalized)
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(SectionKind, String)> {
        detect_sections(text)
            .into_iter()
            .map(|section| {
                (
                    section.kind,
                    text[section.body_start..section.body_end]
                        .trim()
                        .to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn colon_headers_with_inline_bodies() {
        let text = "CHIEF COMPLAINT: cough.\nPMH: asthma.\nFamily History: mother with diabetes.\nA/P: bronchitis.";
        assert_eq!(
            kinds(text),
            [
                (SectionKind::ChiefComplaint, "cough.".to_string()),
                (SectionKind::PastMedicalHistory, "asthma.".to_string()),
                (
                    SectionKind::FamilyHistory,
                    "mother with diabetes.".to_string()
                ),
                (SectionKind::AssessmentAndPlan, "bronchitis.".to_string()),
            ]
        );
    }

    #[test]
    fn markdown_headers() {
        let text = "\n2020-01-01\n\n# History of Present Illness\nFever.\n\n## Plan\nRest.\n";
        let found = kinds(text);
        assert_eq!(found[0], (SectionKind::Untitled, "2020-01-01".to_string()));
        assert_eq!(
            found[1],
            (SectionKind::HistoryOfPresentIllness, "Fever.".to_string())
        );
        assert_eq!(found[2], (SectionKind::Plan, "Rest.".to_string()));
    }

    #[test]
    fn exam_subheadings_stay_in_section() {
        let text = "PHYSICAL EXAM:\nHEENT: normal.\nEyes: clear.\nNECK: supple.\nSOCIAL HISTORY: no tobacco.";
        let found = kinds(text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, SectionKind::PhysicalExam);
        assert_eq!(
            found[1],
            (SectionKind::SocialHistory, "no tobacco.".to_string())
        );
    }

    #[test]
    fn unknown_capitalised_label_is_other() {
        let text = "FAMILY HISTORY: asthma in father.\nDEVELOPMENTAL MILESTONES: walks.";
        let sections = detect_sections(text);
        assert_eq!(sections[1].kind, SectionKind::Other);
        assert_eq!(
            sections[1].title.as_deref(),
            Some("DEVELOPMENTAL MILESTONES")
        );
    }

    #[test]
    fn standalone_header_line() {
        let text = "ASSESSMENT AND PLAN\nPneumonia.\nTime: 10:30";
        let sections = detect_sections(text);
        assert_eq!(sections[0].kind, SectionKind::AssessmentAndPlan);
        assert_eq!(sections.len(), 1);
    }

    #[test]
    fn section_at_finds_offsets() {
        let text = "HPI: fever.\nPMH: asthma.";
        let sections = detect_sections(text);
        let offset = text.find("asthma").unwrap();
        assert_eq!(
            section_at(&sections, offset).unwrap().kind,
            SectionKind::PastMedicalHistory
        );
        assert_eq!(
            section_at(&sections, 0).unwrap().kind,
            SectionKind::HistoryOfPresentIllness
        );
    }
}
