//! Concept mentions with their context attributes.

use serde::{Deserialize, Serialize};

use crate::context::{TriggerKind, TriggerMatch, find_triggers, triggers_in_scope};
use crate::dictionary::{Concept, Dictionary};
use crate::sections::{Section, SectionKind, detect_sections};
use crate::sentences::split_sentences;
use crate::text::{Token, fold, normalize_word, tokenize};

/// When a mentioned concept happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    /// Current or recent: the default.
    Recent,
    /// In the past: a historical trigger, or a past history section.
    Historical,
    /// Conditional or future: a hypothetical trigger.
    Hypothetical,
}

/// Experiencer of a mentioned concept: the patient or someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Experiencer {
    Patient,
    /// A family member or another person: an experiencer trigger, or the
    /// family history section.
    Other,
}

/// A trigger phrase that set an attribute of a mention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTrigger {
    pub kind: TriggerKind,
    pub text: String,
    /// Byte offsets into the note.
    pub start: usize,
    pub end: usize,
}

/// A dictionary term found in a note.
///
/// Offsets are byte offsets into the note's UTF-8 text, so
/// `&note[mention.start..mention.end] == mention.text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mention {
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// Concepts the term names, those whose display is the term first.
    pub concepts: Vec<Concept>,
    /// Cosine similarity of the best concept, for a mention linked by
    /// embedding rather than matched in the dictionary (see
    /// [`crate::linking`]); absent for dictionary matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    pub section: SectionKind,
    /// The section header as written.
    pub section_title: Option<String>,
    /// Byte offsets of the sentence that contains the mention.
    pub sentence_start: usize,
    pub sentence_end: usize,
    pub negated: bool,
    pub uncertain: bool,
    pub temporality: Temporality,
    pub experiencer: Experiencer,
    /// Triggers whose scope covers the mention.
    pub triggers: Vec<AppliedTrigger>,
}

/// Finds the dictionary's terms in a note and sets their ConText attributes.
///
/// The note is split into sections, section bodies into sentences, and
/// sentences into words. At each word the longest dictionary term starting
/// there is taken, and matching resumes after it, so mentions never overlap
/// and never cross a sentence. Section headers are not searched.
pub fn extract(note: &str, dictionary: &Dictionary) -> Vec<Mention> {
    extract_with_candidates(note, dictionary, false).0
}

/// Runs [`extract`] and, with `collect_candidates`, also returns the
/// phrases between matches that could name a concept (see
/// [`candidate_ranges`]), as mentions with attributes but no concepts.
pub(crate) fn extract_with_candidates(
    note: &str,
    dictionary: &Dictionary,
    collect_candidates: bool,
) -> (Vec<Mention>, Vec<Mention>) {
    let normalized;
    let note = match lone_carriage_returns_as_line_feeds(note) {
        Some(text) => {
            normalized = text;
            normalized.as_str()
        }
        None => note,
    };
    let mut mentions = Vec::new();
    let mut candidates = Vec::new();
    for section in detect_sections(note) {
        for range in split_sentences(note, section.body_start..section.body_end) {
            let sentence = SentenceAnalysis::new(note, range, &section, dictionary);
            for &(first, length, node) in &sentence.matches {
                let concepts = dictionary
                    .terminal_concepts(node)
                    .into_iter()
                    .cloned()
                    .collect();
                mentions.push(sentence.mention(first, first + length, concepts));
            }
            if collect_candidates {
                for (first, end) in candidate_ranges(&sentence) {
                    candidates.push(sentence.mention(first, end, Vec::new()));
                }
            }
        }
    }
    (mentions, candidates)
}

/// Some systems end lines with a lone carriage return. Replacing each one
/// with a line feed lets sections and sentences see the lines, and keeps
/// every byte offset, since both are one byte. Returns `None` when the text
/// has no lone carriage return.
fn lone_carriage_returns_as_line_feeds(note: &str) -> Option<String> {
    let bytes = note.as_bytes();
    let lone = |at: usize| bytes[at] == b'\r' && bytes.get(at + 1) != Some(&b'\n');
    if !(0..bytes.len()).any(lone) {
        return None;
    }
    let replaced: Vec<u8> = (0..bytes.len())
        .map(|at| if lone(at) { b'\n' } else { bytes[at] })
        .collect();
    // Only ASCII bytes changed, so the text is still UTF-8.
    String::from_utf8(replaced).ok()
}

/// A sentence split into words, with its dictionary matches and the
/// triggers that may set attributes.
struct SentenceAnalysis<'a> {
    note: &'a str,
    range: std::ops::Range<usize>,
    section: &'a Section,
    tokens: Vec<Token>,
    folded: Vec<String>,
    boundaries: Vec<bool>,
    /// (first word, length in words, trie node) of each dictionary match.
    matches: Vec<(usize, usize, u32)>,
    triggers: Vec<TriggerMatch>,
}

impl<'a> SentenceAnalysis<'a> {
    fn new(
        note: &'a str,
        range: std::ops::Range<usize>,
        section: &'a Section,
        dictionary: &Dictionary,
    ) -> Self {
        let tokens = tokenize(&note[range.clone()], range.start);
        let folded: Vec<String> = tokens
            .iter()
            .map(|token| fold(&note[token.start..token.end]))
            .collect();
        let word_ids: Vec<Option<u32>> = tokens
            .iter()
            .map(|token| dictionary.word_id(&normalize_word(&note[token.start..token.end])))
            .collect();
        let boundaries: Vec<bool> = (0..tokens.len())
            .map(|index| {
                index > 0 && note[tokens[index - 1].end..tokens[index].start].contains(';')
            })
            .collect();

        let mut matches = Vec::new();
        let mut position = 0;
        while position < tokens.len() {
            match dictionary.longest_match(&word_ids, position) {
                Some((length, node)) => {
                    matches.push((position, length, node));
                    position += length;
                }
                None => position += 1,
            }
        }

        // Trigger words inside a matched term are part of a concept's name
        // ("without" in "diabetes mellitus without complications", "not" in
        // "not in labor force"), so they open no scope.
        let mut triggers = find_triggers(&folded);
        triggers.retain(|trigger| {
            !matches.iter().any(|&(first, length, _)| {
                trigger.first_word < first + length && first < trigger.end_word
            })
        });

        SentenceAnalysis {
            note,
            range,
            section,
            tokens,
            folded,
            boundaries,
            matches,
            triggers,
        }
    }

    /// Builds the mention of words `first..end` with its attributes.
    fn mention(&self, first: usize, end: usize, concepts: Vec<Concept>) -> Mention {
        let note = self.note;
        let start = self.tokens[first].start;
        let stop = self.tokens[end - 1].end;
        let in_scope =
            triggers_in_scope(&self.triggers, &self.folded, &self.boundaries, first, end);
        let mut mention = Mention {
            start,
            end: stop,
            text: note[start..stop].to_string(),
            concepts,
            similarity: None,
            section: self.section.kind,
            section_title: self.section.title.clone(),
            sentence_start: self.range.start,
            sentence_end: self.range.end,
            negated: false,
            uncertain: false,
            temporality: Temporality::Recent,
            experiencer: Experiencer::Patient,
            triggers: Vec::with_capacity(in_scope.len()),
        };
        apply_section_defaults(&mut mention);
        for trigger in in_scope {
            match trigger.kind {
                TriggerKind::Negation => mention.negated = true,
                TriggerKind::Uncertainty => mention.uncertain = true,
                TriggerKind::Hypothetical => mention.temporality = Temporality::Hypothetical,
                TriggerKind::Historical => {
                    if mention.temporality != Temporality::Hypothetical {
                        mention.temporality = Temporality::Historical;
                    }
                }
                TriggerKind::OtherExperiencer => mention.experiencer = Experiencer::Other,
                TriggerKind::Pseudo | TriggerKind::Termination => continue,
            }
            let trigger_start = self.tokens[trigger.first_word].start;
            let trigger_end = self.tokens[trigger.end_word - 1].end;
            mention.triggers.push(AppliedTrigger {
                kind: trigger.kind,
                text: note[trigger_start..trigger_end].to_string(),
                start: trigger_start,
                end: trigger_end,
            });
        }
        mention
    }
}

/// Words that split candidate phrases: function words and pronouns.
const CANDIDATE_STOP_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "with",
    "to",
    "for",
    "from",
    "by",
    "as",
    "at",
    "on",
    "in",
    "into",
    "this",
    "that",
    "these",
    "those",
    "he",
    "she",
    "it",
    "they",
    "his",
    "her",
    "their",
    "its",
    "we",
    "patient",
    "pt",
    "also",
    "then",
    "there",
    "who",
    "will",
    "would",
    "can",
    "could",
    "after",
    "before",
    "during",
    "while",
    "per",
    "each",
    "any",
    "some",
    "all",
    "very",
    "well",
    "today",
    "yesterday",
    "given",
    "noted",
    "seen",
    "did",
    "does",
    "do",
];

/// Maximum number of words in a candidate phrase.
const MAX_CANDIDATE_WORDS: usize = 6;

/// Returns word ranges of a sentence that could name a concept but matched
/// no dictionary term. A range is a run of words outside matches and
/// triggers, split at stop words and at `,;:()[]/`. It has one to six words,
/// at least one of them with four or more letters.
fn candidate_ranges(sentence: &SentenceAnalysis<'_>) -> Vec<(usize, usize)> {
    let count = sentence.tokens.len();
    let mut blocked = vec![false; count];
    for &(first, length, _) in &sentence.matches {
        blocked[first..first + length]
            .iter_mut()
            .for_each(|word| *word = true);
    }
    for trigger in find_triggers(&sentence.folded) {
        blocked[trigger.first_word..trigger.end_word]
            .iter_mut()
            .for_each(|word| *word = true);
    }
    for (index, word) in sentence.folded.iter().enumerate() {
        if CANDIDATE_STOP_WORDS.contains(&word.as_str()) {
            blocked[index] = true;
        }
    }

    let mut ranges = Vec::new();
    let mut run_start: Option<usize> = None;
    for (index, &is_blocked) in blocked.iter().enumerate() {
        let separated = index > 0
            && sentence.note[sentence.tokens[index - 1].end..sentence.tokens[index].start]
                .contains([',', ';', ':', '(', ')', '[', ']', '/']);
        if (is_blocked || separated)
            && let Some(first) = run_start.take()
        {
            ranges.push((first, index));
        }
        if !is_blocked && run_start.is_none() {
            run_start = Some(index);
        }
    }
    if let Some(first) = run_start {
        ranges.push((first, count));
    }
    ranges.retain(|&(first, end)| {
        end - first <= MAX_CANDIDATE_WORDS
            && sentence.folded[first..end]
                .iter()
                .any(|word| word.chars().filter(|c| c.is_alphabetic()).count() >= 4)
    });
    ranges
}

/// Sets what a section implies: concepts under family history are a
/// relative's, and those under past medical or surgical history are past.
fn apply_section_defaults(mention: &mut Mention) {
    match mention.section {
        SectionKind::FamilyHistory => mention.experiencer = Experiencer::Other,
        SectionKind::PastMedicalHistory | SectionKind::PastSurgicalHistory => {
            mention.temporality = Temporality::Historical;
        }
        _ => {}
    }
}
