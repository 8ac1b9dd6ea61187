//! A terminology dictionary for token-based longest matching.
//!
//! Terms are stored as sequences of normalised words. Case, accents,
//! punctuation and regular plural endings do not matter, so "Allergies"
//! matches the term "allergy" and "non-small-cell" matches "non small cell".
//! Endings in -ss, -us and -is are kept ("abscess", "virus", "pelvis").
//!
//! Each display and synonym is also added in shortened forms that clinicians
//! write more often. One form drops parenthesised parts, so "Essential
//! (primary) hypertension" gives "essential hypertension" and "Acute
//! bronchitis (disorder)" gives "acute bronchitis". Another drops
//! ICD-10-CM's "unspecified", "NOS" and "not elsewhere classified"
//! qualifiers, so "Pneumonia, unspecified organism" gives "pneumonia".

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

use crate::text::normalized_words;

/// A coded concept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Concept {
    /// Code system URI, such as `http://snomed.info/sct`.
    pub system: String,
    pub code: String,
    pub display: String,
}

/// Input to [`Dictionary::add`]: a concept with the terms that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictionaryEntry {
    pub system: String,
    pub code: String,
    pub display: String,
    pub synonyms: Vec<String>,
}

impl DictionaryEntry {
    pub fn new(system: &str, code: &str, display: &str) -> Self {
        DictionaryEntry {
            system: system.to_string(),
            code: code.to_string(),
            display: display.to_string(),
            synonyms: Vec::new(),
        }
    }

    pub fn with_synonyms<I, S>(mut self, synonyms: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.synonyms.extend(synonyms.into_iter().map(Into::into));
        self
    }
}

/// Words that are not matched as a concept when they make up a whole term:
/// function words, laterality and words that ConText uses as triggers.
const SINGLE_WORD_STOPLIST: &[&str] = &[
    "the",
    "and",
    "or",
    "of",
    "with",
    "without",
    "in",
    "on",
    "at",
    "to",
    "for",
    "by",
    "from",
    "as",
    "other",
    "unknown",
    "none",
    "not",
    "no",
    "yes",
    "see",
    "also",
    "unspecified",
    "nos",
    "type",
    "total",
    "left",
    "right",
    "both",
    "bilateral",
    "high",
    "low",
    "day",
    "patient",
    "history",
    "family",
    "mother",
    "father",
    "test",
    "result",
    "finding",
    "disorder",
    "procedure",
    "situation",
    "possible",
    "probable",
    "negative",
    "positive",
    "normal",
    "abnormal",
    "free",
    "denies",
    "denied",
    "prior",
    "previous",
    "risk",
    "if",
    "may",
    "well",
    "good",
    "care",
    "plan",
    "follow",
    "new",
    "old",
    "acute",
    "chronic",
    "mild",
    "severe",
    "moderate",
];

/// Maximum number of words in a term. Longer terms are skipped because note
/// text almost never repeats them word for word.
const MAX_TERM_WORDS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TerminalConcept {
    concept: u32,
    /// The term is the concept's display itself, not a synonym or a variant.
    preferred: bool,
}

/// Concepts and their terms, indexed as a word trie.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    concepts: Vec<Concept>,
    concept_ids: HashMap<(String, String), u32>,
    words: HashMap<String, u32>,
    /// Trie edges: (node, word) to child node. Node 0 is the root.
    edges: HashMap<(u32, u32), u32>,
    terminals: HashMap<u32, Vec<TerminalConcept>>,
    node_count: u32,
    term_count: usize,
}

impl Dictionary {
    pub fn new() -> Self {
        Dictionary {
            node_count: 1,
            ..Dictionary::default()
        }
    }

    /// Builds a dictionary from entries.
    pub fn from_entries(entries: impl IntoIterator<Item = DictionaryEntry>) -> Self {
        let mut dictionary = Dictionary::new();
        dictionary.extend(entries);
        dictionary
    }

    /// Adds entries; see [`Dictionary::add`].
    pub fn extend(&mut self, entries: impl IntoIterator<Item = DictionaryEntry>) {
        for entry in entries {
            self.add(&entry);
        }
    }

    /// Adds a concept with its display, synonyms and their shortened forms.
    /// A concept added twice (same system and code) keeps its first display
    /// and gains the new terms.
    pub fn add(&mut self, entry: &DictionaryEntry) {
        let concept = self.concept_id(entry);
        for variant in term_variants(&entry.display) {
            let preferred = variant == entry.display;
            self.add_term(concept, &variant, preferred);
        }
        for synonym in &entry.synonyms {
            for variant in term_variants(synonym) {
                self.add_term(concept, &variant, false);
            }
        }
    }

    /// Number of concepts.
    pub fn len(&self) -> usize {
        self.concepts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concepts.is_empty()
    }

    /// Number of distinct (term, concept) pairs indexed.
    pub fn term_count(&self) -> usize {
        self.term_count
    }

    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// Returns the concept with this system and code.
    pub fn concept(&self, system: &str, code: &str) -> Option<&Concept> {
        self.concept_ids
            .get(&(system.to_string(), code.to_string()))
            .map(|&id| &self.concepts[id as usize])
    }

    /// Returns the concepts whose terms equal the whole phrase after
    /// normalisation, the concepts whose display is the term first.
    pub fn lookup(&self, phrase: &str) -> Vec<&Concept> {
        let words = normalized_words(phrase);
        let ids: Vec<Option<u32>> = words.iter().map(|word| self.word_id(word)).collect();
        match self.longest_match(&ids, 0) {
            Some((length, node)) if length == ids.len() => self.terminal_concepts(node),
            _ => Vec::new(),
        }
    }

    /// Returns the id of a normalised word, if any term contains it.
    pub(crate) fn word_id(&self, normalized_word: &str) -> Option<u32> {
        self.words.get(normalized_word).copied()
    }

    /// Finds the longest term starting at `words[start]`, returning its length
    /// in words and its trie node.
    pub(crate) fn longest_match(
        &self,
        words: &[Option<u32>],
        start: usize,
    ) -> Option<(usize, u32)> {
        let mut node = 0u32;
        let mut best = None;
        for (offset, word) in words[start..].iter().enumerate() {
            let Some(word) = word else { break };
            let Some(&child) = self.edges.get(&(node, *word)) else {
                break;
            };
            node = child;
            if self.terminals.contains_key(&node) {
                best = Some((offset + 1, node));
            }
        }
        best
    }

    /// Returns the concepts of a terminal node, those named by their display first.
    pub(crate) fn terminal_concepts(&self, node: u32) -> Vec<&Concept> {
        let Some(terminals) = self.terminals.get(&node) else {
            return Vec::new();
        };
        let preferred = terminals.iter().filter(|terminal| terminal.preferred);
        let others = terminals.iter().filter(|terminal| !terminal.preferred);
        preferred
            .chain(others)
            .map(|terminal| &self.concepts[terminal.concept as usize])
            .collect()
    }

    fn concept_id(&mut self, entry: &DictionaryEntry) -> u32 {
        let key = (entry.system.clone(), entry.code.clone());
        match self.concept_ids.entry(key) {
            Entry::Occupied(occupied) => *occupied.get(),
            Entry::Vacant(vacant) => {
                let id = self.concepts.len() as u32;
                self.concepts.push(Concept {
                    system: entry.system.clone(),
                    code: entry.code.clone(),
                    display: entry.display.clone(),
                });
                vacant.insert(id);
                id
            }
        }
    }

    fn add_term(&mut self, concept: u32, term: &str, preferred: bool) {
        let words = normalized_words(term);
        if words.is_empty() || words.len() > MAX_TERM_WORDS {
            return;
        }
        if let [word] = words.as_slice()
            && (word.chars().count() < 3 || SINGLE_WORD_STOPLIST.contains(&word.as_str()))
        {
            return;
        }

        let mut node = 0u32;
        for word in words {
            let next_word_id = self.words.len() as u32;
            let word_id = *self.words.entry(word).or_insert(next_word_id);
            node = match self.edges.entry((node, word_id)) {
                Entry::Occupied(occupied) => *occupied.get(),
                Entry::Vacant(vacant) => {
                    let child = self.node_count;
                    self.node_count += 1;
                    *vacant.insert(child)
                }
            };
        }

        let terminals = self.terminals.entry(node).or_default();
        match terminals
            .iter_mut()
            .find(|terminal| terminal.concept == concept)
        {
            Some(existing) => existing.preferred |= preferred,
            None => {
                terminals.push(TerminalConcept { concept, preferred });
                self.term_count += 1;
            }
        }
    }
}

/// Returns a term and its shortened forms, the term itself first.
fn term_variants(term: &str) -> Vec<String> {
    let term = term.trim();
    let mut variants = vec![term.to_string()];
    let without_parentheses = remove_parenthesised(term);
    for base in [term, without_parentheses.as_str()] {
        let stripped = strip_qualifiers(base);
        for candidate in [base.to_string(), stripped] {
            let candidate = candidate
                .trim()
                .trim_end_matches([',', ';', ' '])
                .to_string();
            if !candidate.is_empty() && !variants.contains(&candidate) {
                variants.push(candidate);
            }
        }
    }
    variants
}

/// Removes text in parentheses and square brackets.
pub(crate) fn remove_parenthesised(term: &str) -> String {
    let mut result = String::with_capacity(term.len());
    let mut depth = 0usize;
    for character in term.chars() {
        match character {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => result.push(character),
            _ => {}
        }
    }
    result.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes ICD-10-CM's catch-all qualifiers: everything from ", unspecified"
/// or ", not elsewhere classified" on, a leading "Unspecified" and a trailing
/// "NOS" or "NEC".
fn strip_qualifiers(term: &str) -> String {
    // ASCII lowercasing keeps byte positions, so they index `term` too.
    let lower = term.to_ascii_lowercase();
    let mut end = term.len();
    for marker in [", unspecified", ", not elsewhere classified"] {
        if let Some(position) = lower.find(marker) {
            end = end.min(position);
        }
    }
    let mut result = term[..end].trim();
    if lower.starts_with("unspecified ") {
        result = result.get("unspecified ".len()..).unwrap_or(result);
    }
    for suffix in [", NOS", " NOS", ", NEC", " NEC"] {
        if let Some(stripped) = result.strip_suffix(suffix) {
            result = stripped;
        }
    }
    result.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNOMED: &str = "http://snomed.info/sct";
    const ICD: &str = "http://hl7.org/fhir/sid/icd-10-cm";

    #[test]
    fn variants_drop_parentheses_and_qualifiers() {
        assert_eq!(
            term_variants("Essential (primary) hypertension"),
            ["Essential (primary) hypertension", "Essential hypertension"]
        );
        assert_eq!(
            term_variants("Pneumonia, unspecified organism"),
            ["Pneumonia, unspecified organism", "Pneumonia"]
        );
        assert_eq!(
            term_variants("Unspecified asthma, uncomplicated"),
            ["Unspecified asthma, uncomplicated", "asthma, uncomplicated"]
        );
        assert_eq!(
            term_variants("Acute bronchitis (disorder)"),
            ["Acute bronchitis (disorder)", "Acute bronchitis"]
        );
    }

    #[test]
    fn lookup_is_case_plural_and_punctuation_insensitive() {
        let dictionary = Dictionary::from_entries([
            DictionaryEntry::new(SNOMED, "300916003", "Latex allergy (finding)"),
            DictionaryEntry::new(
                ICD,
                "C34.90",
                "Malignant neoplasm of unspecified part of unspecified bronchus or lung",
            )
            .with_synonyms(["non-small cell lung cancer"]),
        ]);
        assert_eq!(dictionary.lookup("LATEX ALLERGIES")[0].code, "300916003");
        assert_eq!(
            dictionary.lookup("Non small-cell lung cancers")[0].code,
            "C34.90"
        );
        assert!(dictionary.lookup("latex").is_empty());
    }

    #[test]
    fn preferred_display_comes_first() {
        let dictionary = Dictionary::from_entries([
            DictionaryEntry::new(ICD, "I10", "Essential (primary) hypertension")
                .with_synonyms(["hypertension"]),
            DictionaryEntry::new(SNOMED, "38341003", "Hypertension"),
        ]);
        let found: Vec<&str> = dictionary
            .lookup("hypertension")
            .iter()
            .map(|concept| concept.code.as_str())
            .collect();
        assert_eq!(found, ["38341003", "I10"]);
    }

    #[test]
    fn stoplisted_single_words_are_skipped() {
        let dictionary = Dictionary::from_entries([DictionaryEntry::new(SNOMED, "1", "Other")]);
        assert!(dictionary.lookup("other").is_empty());
        assert_eq!(dictionary.term_count(), 0);
        assert_eq!(dictionary.len(), 1);
    }
}
