//! ConText-style attributes: negation, uncertainty, temporality and
//! experiencer.
//!
//! As in the ConText algorithm for clinical text, trigger phrases open a
//! scope that runs forward to the end of the sentence, backward to its
//! start, or both ways. A termination phrase ("but", "however", "presents",
//! ...) or a semicolon ends a scope early, and a backward scope reaches at
//! most six words back. Pseudo-triggers such as "no change" or "gram
//! negative" contain a trigger's words but open no scope. Trigger words
//! inside a matched concept name ("without" in "diabetes mellitus without
//! complications") open no scope either. The trigger lists are this
//! crate's own, in English only.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// Kind of a trigger: the assertion it makes about the concepts in its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// The concept is absent ("denies", "no", "ruled out").
    Negation,
    /// The concept may be present ("possible", "rule out", "suspected").
    Uncertainty,
    /// The concept is spoken of as a future or conditional event ("if", "should", "return if").
    Hypothetical,
    /// The concept happened in the past ("history of", "status post").
    Historical,
    /// The concept is someone else's ("mother", "family history of").
    OtherExperiencer,
    /// Contains trigger words but asserts nothing ("no change").
    Pseudo,
    /// Ends the scope of triggers ("but", "however").
    Termination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
    Both,
}

use Direction::{Backward, Both, Forward};
use TriggerKind::{
    Historical, Hypothetical, Negation, OtherExperiencer, Pseudo, Termination, Uncertainty,
};

/// Trigger phrases. Words are compared lowercased and without accents;
/// punctuation separates words, so "r/o" is written "r o".
const RULES: &[(&str, TriggerKind, Direction)] = &[
    // Negation.
    ("no", Negation, Forward),
    ("not", Negation, Forward),
    ("nor", Negation, Forward),
    ("neither", Negation, Forward),
    ("denies", Negation, Forward),
    ("denied", Negation, Both),
    ("denying", Negation, Forward),
    ("deny", Negation, Forward),
    ("without", Negation, Forward),
    ("negative for", Negation, Forward),
    ("no evidence of", Negation, Forward),
    ("no sign of", Negation, Forward),
    ("no signs of", Negation, Forward),
    ("no history of", Negation, Forward),
    ("no family history of", Negation, Forward),
    ("no complaints of", Negation, Forward),
    ("free of", Negation, Forward),
    ("absence of", Negation, Forward),
    ("never", Negation, Forward),
    ("never had", Negation, Forward),
    ("ruled out", Negation, Both),
    ("rules out", Negation, Forward),
    ("has been ruled out", Negation, Backward),
    ("was ruled out", Negation, Backward),
    ("is ruled out", Negation, Backward),
    ("were ruled out", Negation, Backward),
    ("fails to reveal", Negation, Forward),
    ("failed to reveal", Negation, Forward),
    ("unremarkable for", Negation, Forward),
    ("is negative", Negation, Backward),
    ("was negative", Negation, Backward),
    ("are negative", Negation, Backward),
    ("were negative", Negation, Backward),
    ("negative", Negation, Backward),
    ("absent", Negation, Both),
    ("not seen", Negation, Backward),
    ("not present", Negation, Backward),
    ("free", Negation, Backward),
    ("resolved", Historical, Backward),
    // Uncertainty.
    ("rule out", Uncertainty, Forward),
    ("to rule out", Uncertainty, Forward),
    ("r o", Uncertainty, Forward),
    ("cannot rule out", Uncertainty, Forward),
    ("can not rule out", Uncertainty, Forward),
    ("not rule out", Uncertainty, Forward),
    ("cannot be ruled out", Uncertainty, Both),
    ("not ruled out", Uncertainty, Both),
    ("cannot exclude", Uncertainty, Forward),
    ("cannot be excluded", Uncertainty, Both),
    ("not excluded", Uncertainty, Backward),
    ("possible", Uncertainty, Forward),
    ("possibly", Uncertainty, Forward),
    ("is possible", Uncertainty, Backward),
    ("probable", Uncertainty, Forward),
    ("probably", Uncertainty, Forward),
    ("likely", Uncertainty, Forward),
    ("is likely", Uncertainty, Backward),
    ("unlikely", Uncertainty, Both),
    ("suspected", Uncertainty, Both),
    ("suspect", Uncertainty, Forward),
    ("suspicion of", Uncertainty, Forward),
    ("suspicious for", Uncertainty, Forward),
    ("concern for", Uncertainty, Forward),
    ("concerning for", Uncertainty, Forward),
    ("question of", Uncertainty, Forward),
    ("questionable", Uncertainty, Forward),
    ("may", Uncertainty, Forward),
    ("might", Uncertainty, Forward),
    ("could be", Uncertainty, Forward),
    ("presumed", Uncertainty, Forward),
    ("differential diagnosis", Uncertainty, Forward),
    ("differential includes", Uncertainty, Forward),
    ("ddx", Uncertainty, Forward),
    ("versus", Uncertainty, Both),
    ("vs", Uncertainty, Both),
    ("evaluate for", Uncertainty, Forward),
    ("evaluation for", Uncertainty, Forward),
    ("work up for", Uncertainty, Forward),
    ("workup for", Uncertainty, Forward),
    ("assess for", Uncertainty, Forward),
    ("uncertain", Uncertainty, Both),
    ("unclear", Uncertainty, Both),
    ("equivocal", Uncertainty, Both),
    // Hypothetical.
    ("if", Hypothetical, Forward),
    ("should", Hypothetical, Forward),
    ("in case", Hypothetical, Forward),
    ("in the event", Hypothetical, Forward),
    ("as needed for", Hypothetical, Forward),
    ("prn", Hypothetical, Forward),
    ("risk of", Hypothetical, Forward),
    ("risk for", Hypothetical, Forward),
    ("at risk for", Hypothetical, Forward),
    ("screening for", Hypothetical, Forward),
    ("screen for", Hypothetical, Forward),
    ("screening", Hypothetical, Backward),
    ("to prevent", Hypothetical, Forward),
    ("prevention of", Hypothetical, Forward),
    ("prophylaxis", Hypothetical, Backward),
    ("prophylaxis for", Hypothetical, Forward),
    ("prophylaxis against", Hypothetical, Forward),
    ("watch for", Hypothetical, Forward),
    ("monitor for", Hypothetical, Forward),
    ("precautions", Hypothetical, Backward),
    ("prevention", Hypothetical, Backward),
    // Historical.
    ("history of", Historical, Forward),
    ("hx of", Historical, Forward),
    ("h o", Historical, Forward),
    ("past history of", Historical, Forward),
    ("past medical history of", Historical, Forward),
    ("medical history of", Historical, Forward),
    ("previous", Historical, Forward),
    ("previously", Historical, Both),
    ("prior", Historical, Forward),
    ("status post", Historical, Forward),
    ("s p", Historical, Forward),
    ("remote", Historical, Forward),
    ("in the past", Historical, Both),
    ("years ago", Historical, Backward),
    ("months ago", Historical, Backward),
    ("as a child", Historical, Both),
    ("in childhood", Historical, Backward),
    ("formerly", Historical, Forward),
    // Experiencer other than the patient.
    ("family history of", OtherExperiencer, Forward),
    ("fh of", OtherExperiencer, Forward),
    ("fhx of", OtherExperiencer, Forward),
    ("family member", OtherExperiencer, Both),
    ("family members", OtherExperiencer, Both),
    ("mother", OtherExperiencer, Both),
    ("mom", OtherExperiencer, Both),
    ("father", OtherExperiencer, Both),
    ("dad", OtherExperiencer, Both),
    ("sister", OtherExperiencer, Both),
    ("sisters", OtherExperiencer, Both),
    ("brother", OtherExperiencer, Both),
    ("brothers", OtherExperiencer, Both),
    ("sibling", OtherExperiencer, Both),
    ("siblings", OtherExperiencer, Both),
    ("parent", OtherExperiencer, Both),
    ("parents", OtherExperiencer, Both),
    ("aunt", OtherExperiencer, Both),
    ("uncle", OtherExperiencer, Both),
    ("grandmother", OtherExperiencer, Both),
    ("grandfather", OtherExperiencer, Both),
    ("grandparent", OtherExperiencer, Both),
    ("grandparents", OtherExperiencer, Both),
    ("son", OtherExperiencer, Both),
    ("daughter", OtherExperiencer, Both),
    ("cousin", OtherExperiencer, Both),
    ("niece", OtherExperiencer, Both),
    ("nephew", OtherExperiencer, Both),
    ("wife", OtherExperiencer, Both),
    ("husband", OtherExperiencer, Both),
    ("spouse", OtherExperiencer, Both),
    ("relative", OtherExperiencer, Both),
    ("relatives", OtherExperiencer, Both),
    ("maternal", OtherExperiencer, Both),
    ("paternal", OtherExperiencer, Both),
    // Pseudo-triggers.
    ("no increase", Pseudo, Forward),
    ("no change", Pseudo, Forward),
    ("no significant change", Pseudo, Forward),
    ("no interval change", Pseudo, Forward),
    ("no further", Pseudo, Forward),
    ("not only", Pseudo, Forward),
    ("not necessarily", Pseudo, Forward),
    ("not certain if", Pseudo, Forward),
    ("not certain whether", Pseudo, Forward),
    ("without difficulty", Pseudo, Forward),
    ("gram negative", Pseudo, Forward),
    ("history and physical", Pseudo, Forward),
    ("history and examination", Pseudo, Forward),
    ("history of present illness", Pseudo, Forward),
    ("social history", Pseudo, Forward),
    ("sexual history", Pseudo, Forward),
    ("if needed", Pseudo, Forward),
    ("if any", Pseudo, Forward),
    ("prior to", Pseudo, Forward),
    ("may be", Pseudo, Forward),
    // Termination.
    ("but", Termination, Forward),
    ("however", Termination, Forward),
    ("although", Termination, Forward),
    ("though", Termination, Forward),
    ("yet", Termination, Forward),
    ("nevertheless", Termination, Forward),
    ("except", Termination, Forward),
    ("apart from", Termination, Forward),
    ("aside from", Termination, Forward),
    ("other than", Termination, Forward),
    ("presents", Termination, Forward),
    ("presented", Termination, Forward),
    ("presenting", Termination, Forward),
    ("complains", Termination, Forward),
    ("complained", Termination, Forward),
    ("complaining", Termination, Forward),
    ("reports", Termination, Forward),
    ("reported", Termination, Forward),
    ("endorses", Termination, Forward),
    ("admits", Termination, Forward),
    ("positive for", Termination, Forward),
    ("cause of", Termination, Forward),
    ("causes of", Termination, Forward),
    ("etiology of", Termination, Forward),
    ("source of", Termination, Forward),
    ("secondary to", Termination, Forward),
    ("reason for", Termination, Forward),
    ("which", Termination, Forward),
    ("still", Termination, Forward),
];

/// Words that end an other-experiencer scope only: the text turns back to
/// the patient ("Mother is concerned about the child's rash").
const EXPERIENCER_TERMINATIONS: &[&str] = &[
    "patient",
    "pt",
    "child",
    "infant",
    "baby",
    "concerned",
    "worried",
    "states",
    "notes",
    "says",
];

/// Maximum number of words between a concept and a trigger that follows it.
/// Backward triggers qualify the phrase just before them ("pneumonia was
/// ruled out", "pain free"). Without a limit, "free" at the end of a long
/// sentence would negate every concept in it.
const BACKWARD_WINDOW: usize = 6;

/// A trigger found in a sentence, as word indices within the sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TriggerMatch {
    pub kind: TriggerKind,
    direction: Direction,
    pub first_word: usize,
    pub end_word: usize,
}

struct Rule {
    words: Vec<&'static str>,
    kind: TriggerKind,
    direction: Direction,
}

struct RuleIndex {
    /// Rules by their first word, longest rules first.
    by_first_word: HashMap<&'static str, Vec<Rule>>,
}

static RULE_INDEX: LazyLock<RuleIndex> = LazyLock::new(|| {
    let mut by_first_word: HashMap<&'static str, Vec<Rule>> = HashMap::new();
    for &(phrase, kind, direction) in RULES {
        let words: Vec<&'static str> = phrase.split(' ').collect();
        by_first_word.entry(words[0]).or_default().push(Rule {
            words,
            kind,
            direction,
        });
    }
    for rules in by_first_word.values_mut() {
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.words.len()));
    }
    RuleIndex { by_first_word }
});

/// Finds triggers in a sentence's folded words, taking the longest phrase at
/// each position and skipping the words it covers.
pub(crate) fn find_triggers(words: &[String]) -> Vec<TriggerMatch> {
    let index = &*RULE_INDEX;
    let mut matches = Vec::new();
    let mut position = 0;
    while position < words.len() {
        let remaining = &words[position..];
        let found = index
            .by_first_word
            .get(words[position].as_str())
            .and_then(|rules| {
                rules.iter().find(|rule| {
                    remaining.len() >= rule.words.len()
                        && rule
                            .words
                            .iter()
                            .zip(remaining)
                            .all(|(rule_word, word)| rule_word == word)
                })
            });
        match found {
            Some(rule) => {
                matches.push(TriggerMatch {
                    kind: rule.kind,
                    direction: rule.direction,
                    first_word: position,
                    end_word: position + rule.words.len(),
                });
                position += rule.words.len();
            }
            None => position += 1,
        }
    }
    matches
}

/// Returns the triggers whose scope covers the words `first..end` of the
/// sentence. `boundaries[i]` is true when a scope may not cross from word
/// `i - 1` to word `i` (a semicolon lies between them).
pub(crate) fn triggers_in_scope<'a>(
    triggers: &'a [TriggerMatch],
    words: &[String],
    boundaries: &[bool],
    first: usize,
    end: usize,
) -> Vec<&'a TriggerMatch> {
    let terminated = |kind: TriggerKind, from: usize, to: usize| -> bool {
        // Going from word `from - 1` to word `to` crosses boundaries[from..=to].
        let crosses_boundary = boundaries[from..=to].iter().any(|&boundary| boundary);
        let by_termination = triggers.iter().any(|trigger| {
            trigger.kind == Termination && trigger.first_word >= from && trigger.end_word <= to
        });
        let by_experiencer_word = kind == OtherExperiencer
            && words[from..to]
                .iter()
                .any(|word| EXPERIENCER_TERMINATIONS.contains(&word.as_str()));
        crosses_boundary || by_termination || by_experiencer_word
    };

    triggers
        .iter()
        .filter(|trigger| !matches!(trigger.kind, Pseudo | Termination))
        .filter(|trigger| {
            let forward = matches!(trigger.direction, Forward | Both)
                && trigger.end_word <= first
                && !terminated(trigger.kind, trigger.end_word, first);
            let backward = matches!(trigger.direction, Backward | Both)
                && trigger.first_word >= end
                && trigger.first_word - end <= BACKWARD_WINDOW
                && !terminated(trigger.kind, end, trigger.first_word);
            forward || backward
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sentence: &str) -> Vec<String> {
        crate::text::tokenize(sentence, 0)
            .iter()
            .map(|token| crate::text::fold(&sentence[token.start..token.end]))
            .collect()
    }

    fn kinds_covering(sentence: &str, target: &str) -> Vec<TriggerKind> {
        let words = words(sentence);
        let target_words = self::words(target);
        let first = words
            .windows(target_words.len())
            .position(|window| window == target_words.as_slice())
            .expect("target in sentence");
        let boundaries = vec![false; words.len()];
        let triggers = find_triggers(&words);
        triggers_in_scope(
            &triggers,
            &words,
            &boundaries,
            first,
            first + target_words.len(),
        )
        .iter()
        .map(|trigger| trigger.kind)
        .collect()
    }

    #[test]
    fn longest_trigger_wins() {
        assert_eq!(kinds_covering("no history of asthma", "asthma"), [Negation]);
        assert_eq!(
            kinds_covering("cannot be ruled out: sepsis", "sepsis"),
            [Uncertainty]
        );
    }

    #[test]
    fn pseudo_trigger_opens_no_scope() {
        assert!(kinds_covering("no change in the effusion", "effusion").is_empty());
    }

    #[test]
    fn backward_scope() {
        assert_eq!(
            kinds_covering("pneumonia was ruled out", "pneumonia"),
            [Negation]
        );
        assert_eq!(
            kinds_covering("breast cancer in her mother", "breast cancer"),
            [OtherExperiencer]
        );
    }

    #[test]
    fn termination_ends_scope() {
        assert!(kinds_covering("denies fever but reports cough", "cough").is_empty());
        assert_eq!(
            kinds_covering("denies fever but reports cough", "fever"),
            [Negation]
        );
    }

    #[test]
    fn experiencer_scope_ends_at_patient() {
        assert!(
            kinds_covering("mother had asthma and the patient has eczema", "eczema").is_empty()
        );
    }
}
