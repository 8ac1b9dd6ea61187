//! Matching of predicted mentions to gold mentions, and the scores.
//!
//! A predicted mention matches a gold mention when their byte spans overlap
//! by at least one byte and they have the same concept type; the strict
//! criterion also asks for the same assertion. Pairs are made one to one:
//! the candidate pairs are taken in order of overlap length, longest first,
//! and a pair is kept when neither side is paired yet. A kept pair is a true
//! positive, an unpaired prediction a false positive, an unpaired gold
//! mention a false negative.
//!
//! Code-level scores cover the gold mentions that have codes. Each is
//! paired with a prediction by span and type; the pair is a true positive
//! when one of the prediction's concepts has one of the gold codes, and both
//! a false positive and a false negative otherwise. An unpaired coded gold
//! mention is a false negative. Predictions paired with uncoded gold
//! mentions, and unpaired predictions, are not counted, because there is no
//! gold code to compare with. The category variant compares ICD-10-CM codes
//! by their three-character category (J45.909 and J45 agree).

use serde::Serialize;

use super::gold::{Assertion, ConceptType, GoldMention};
use crate::terminology::ICD10CM_SYSTEM;

/// A predicted mention, reduced to what is scored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prediction {
    /// Byte offsets into the note's UTF-8 text.
    pub start: usize,
    pub end: usize,
    pub concept_type: ConceptType,
    pub assertion: Assertion,
    /// `system|code` tokens of the mention's concepts.
    pub codes: Vec<String>,
}

/// True positives, false positives and false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
}

impl Counts {
    /// TP / (TP + FP), or 0 when nothing was predicted.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// TP / (TP + FN), or 0 when there is no gold mention.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Harmonic mean of precision and recall, or 0 when both are 0.
    pub fn f1(&self) -> f64 {
        let (precision, recall) = (self.precision(), self.recall());
        if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        }
    }

    fn add(&mut self, other: Counts) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
    }
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Group of a score row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowGroup {
    Overall,
    Assertion,
    Type,
    Code,
}

/// Row label of the strict overall score.
pub const ROW_STRICT: &str = "span + type + assertion";
/// Row label of the overall score that ignores assertions.
pub const ROW_SPAN: &str = "span + type";
/// Row label of the exact code score.
pub const ROW_CODE_EXACT: &str = "code, exact";
/// Row label of the code score at ICD-10-CM category level.
pub const ROW_CODE_CATEGORY: &str = "code, ICD-10-CM category";

/// One line of a system's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRow {
    pub group: RowGroup,
    pub label: String,
    /// Gold mentions the row covers.
    pub gold: usize,
    pub counts: Counts,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl ScoreRow {
    fn new(group: RowGroup, label: &str, gold: usize, counts: Counts) -> Self {
        ScoreRow {
            group,
            label: label.to_string(),
            gold,
            counts,
            precision: counts.precision(),
            recall: counts.recall(),
            f1: counts.f1(),
        }
    }
}

/// Returns the labels of the rows [`score_notes`] produces, in order.
pub fn row_labels() -> Vec<(RowGroup, String)> {
    let mut labels = vec![
        (RowGroup::Overall, ROW_STRICT.to_string()),
        (RowGroup::Overall, ROW_SPAN.to_string()),
    ];
    labels.extend(
        Assertion::ALL
            .iter()
            .map(|assertion| (RowGroup::Assertion, assertion.as_str().to_string())),
    );
    labels.extend(
        ConceptType::ALL
            .iter()
            .map(|concept_type| (RowGroup::Type, concept_type.as_str().to_string())),
    );
    labels.push((RowGroup::Code, ROW_CODE_EXACT.to_string()));
    labels.push((RowGroup::Code, ROW_CODE_CATEGORY.to_string()));
    labels
}

/// Scores the predictions of one system over notes, given as (gold,
/// predicted) mention lists per note. Returns the rows of [`row_labels`].
pub fn score_notes(notes: &[(&[GoldMention], &[Prediction])]) -> Vec<ScoreRow> {
    let mut strict = (0, Counts::default());
    let mut span = (0, Counts::default());
    let mut by_assertion = [(0, Counts::default()); Assertion::ALL.len()];
    let mut by_type = [(0, Counts::default()); ConceptType::ALL.len()];
    let mut code_exact = (0, Counts::default());
    let mut code_category = (0, Counts::default());

    for &(gold, predicted) in notes {
        let all_gold: Vec<&GoldMention> = gold.iter().collect();
        let all_predicted: Vec<&Prediction> = predicted.iter().collect();
        accumulate(&mut strict, &all_gold, &all_predicted, true);
        let span_pairs = accumulate(&mut span, &all_gold, &all_predicted, false);

        for (index, assertion) in Assertion::ALL.iter().enumerate() {
            let gold_part: Vec<&GoldMention> = gold
                .iter()
                .filter(|mention| mention.assertion == *assertion)
                .collect();
            let predicted_part: Vec<&Prediction> = predicted
                .iter()
                .filter(|mention| mention.assertion == *assertion)
                .collect();
            accumulate(&mut by_assertion[index], &gold_part, &predicted_part, true);
        }
        for (index, concept_type) in ConceptType::ALL.iter().enumerate() {
            let gold_part: Vec<&GoldMention> = gold
                .iter()
                .filter(|mention| mention.concept_type == *concept_type)
                .collect();
            let predicted_part: Vec<&Prediction> = predicted
                .iter()
                .filter(|mention| mention.concept_type == *concept_type)
                .collect();
            accumulate(&mut by_type[index], &gold_part, &predicted_part, true);
        }

        let (exact, category) = score_codes(&all_gold, &all_predicted, &span_pairs);
        code_exact.0 += exact.0;
        code_exact.1.add(exact.1);
        code_category.0 += category.0;
        code_category.1.add(category.1);
    }

    let mut rows = vec![
        ScoreRow::new(RowGroup::Overall, ROW_STRICT, strict.0, strict.1),
        ScoreRow::new(RowGroup::Overall, ROW_SPAN, span.0, span.1),
    ];
    for (assertion, (gold, counts)) in Assertion::ALL.iter().zip(by_assertion) {
        rows.push(ScoreRow::new(
            RowGroup::Assertion,
            assertion.as_str(),
            gold,
            counts,
        ));
    }
    for (concept_type, (gold, counts)) in ConceptType::ALL.iter().zip(by_type) {
        rows.push(ScoreRow::new(
            RowGroup::Type,
            concept_type.as_str(),
            gold,
            counts,
        ));
    }
    rows.push(ScoreRow::new(
        RowGroup::Code,
        ROW_CODE_EXACT,
        code_exact.0,
        code_exact.1,
    ));
    rows.push(ScoreRow::new(
        RowGroup::Code,
        ROW_CODE_CATEGORY,
        code_category.0,
        code_category.1,
    ));
    rows
}

/// Matches one note's mentions and adds the counts; returns the pairs.
fn accumulate(
    total: &mut (usize, Counts),
    gold: &[&GoldMention],
    predicted: &[&Prediction],
    same_assertion: bool,
) -> Vec<(usize, usize)> {
    let pairs = match_pairs(gold, predicted, same_assertion);
    total.0 += gold.len();
    total.1.add(Counts {
        true_positives: pairs.len(),
        false_positives: predicted.len() - pairs.len(),
        false_negatives: gold.len() - pairs.len(),
    });
    pairs
}

/// Pairs gold and predicted mentions one to one, longest overlap first.
/// Returns (gold index, prediction index) pairs.
pub fn match_pairs(
    gold: &[&GoldMention],
    predicted: &[&Prediction],
    same_assertion: bool,
) -> Vec<(usize, usize)> {
    let mut candidates = Vec::new();
    for (gold_index, gold_mention) in gold.iter().enumerate() {
        for (predicted_index, prediction) in predicted.iter().enumerate() {
            let overlap = gold_mention.end.min(prediction.end) as isize
                - gold_mention.start.max(prediction.start) as isize;
            if overlap <= 0 || gold_mention.concept_type != prediction.concept_type {
                continue;
            }
            if same_assertion && gold_mention.assertion != prediction.assertion {
                continue;
            }
            candidates.push((overlap, gold_index, predicted_index));
        }
    }
    // Longest overlap first; ties in text order, so the result is deterministic.
    candidates.sort_by(|left, right| {
        right
            .0
            .cmp(&left.0)
            .then(left.1.cmp(&right.1))
            .then(left.2.cmp(&right.2))
    });
    let mut gold_used = vec![false; gold.len()];
    let mut predicted_used = vec![false; predicted.len()];
    let mut pairs = Vec::new();
    for (_, gold_index, predicted_index) in candidates {
        if gold_used[gold_index] || predicted_used[predicted_index] {
            continue;
        }
        gold_used[gold_index] = true;
        predicted_used[predicted_index] = true;
        pairs.push((gold_index, predicted_index));
    }
    pairs.sort_unstable();
    pairs
}

/// Returns the exact and category code scores of one note as (coded gold
/// mentions, counts).
fn score_codes(
    gold: &[&GoldMention],
    predicted: &[&Prediction],
    span_pairs: &[(usize, usize)],
) -> ((usize, Counts), (usize, Counts)) {
    let mut exact = (0, Counts::default());
    let mut category = (0, Counts::default());
    for (gold_index, gold_mention) in gold.iter().enumerate() {
        if gold_mention.codes.is_empty() {
            continue;
        }
        exact.0 += 1;
        category.0 += 1;
        let paired = span_pairs
            .iter()
            .find(|(paired_gold, _)| *paired_gold == gold_index)
            .map(|&(_, predicted_index)| predicted[predicted_index]);
        for (total, by_category) in [(&mut exact, false), (&mut category, true)] {
            match paired {
                Some(prediction)
                    if codes_agree(&gold_mention.codes, &prediction.codes, by_category) =>
                {
                    total.1.true_positives += 1;
                }
                Some(_) => {
                    total.1.false_positives += 1;
                    total.1.false_negatives += 1;
                }
                None => total.1.false_negatives += 1,
            }
        }
    }
    (exact, category)
}

/// Returns whether a predicted code equals a gold code; with `by_category`,
/// ICD-10-CM codes compare by their first three characters.
pub fn codes_agree(gold: &[String], predicted: &[String], by_category: bool) -> bool {
    let key = |token: &str| -> String {
        match token.split_once('|') {
            Some((system, code)) if by_category && system == ICD10CM_SYSTEM => {
                format!("{system}|{}", code.chars().take(3).collect::<String>())
            }
            _ => token.to_string(),
        }
    };
    predicted.iter().any(|predicted_code| {
        gold.iter()
            .any(|gold_code| key(gold_code) == key(predicted_code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ICD: &str = "http://hl7.org/fhir/sid/icd-10-cm";

    fn gold(start: usize, end: usize, assertion: Assertion, codes: &[&str]) -> GoldMention {
        GoldMention {
            start,
            end,
            text: String::new(),
            concept_type: ConceptType::Problem,
            assertion,
            codes: codes.iter().map(|code| format!("{ICD}|{code}")).collect(),
        }
    }

    fn predicted(start: usize, end: usize, assertion: Assertion, codes: &[&str]) -> Prediction {
        Prediction {
            start,
            end,
            concept_type: ConceptType::Problem,
            assertion,
            codes: codes.iter().map(|code| format!("{ICD}|{code}")).collect(),
        }
    }

    fn row<'a>(rows: &'a [ScoreRow], label: &str) -> &'a ScoreRow {
        rows.iter()
            .find(|row| row.label == label)
            .unwrap_or_else(|| panic!("no row {label:?}"))
    }

    #[test]
    fn counts_handle_empty_sides() {
        let none = Counts::default();
        assert_eq!(none.precision(), 0.0);
        assert_eq!(none.recall(), 0.0);
        assert_eq!(none.f1(), 0.0);
        let half = Counts {
            true_positives: 1,
            false_positives: 1,
            false_negatives: 0,
        };
        assert_eq!(half.precision(), 0.5);
        assert_eq!(half.recall(), 1.0);
        assert!((half.f1() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn overlap_pairs_one_to_one() {
        let gold_mentions = [
            gold(0, 10, Assertion::Present, &[]),
            gold(20, 30, Assertion::Present, &[]),
        ];
        // Two predictions overlap the first gold mention; the longer overlap wins.
        let predictions = [
            predicted(0, 4, Assertion::Present, &[]),
            predicted(2, 12, Assertion::Present, &[]),
            predicted(40, 45, Assertion::Present, &[]),
        ];
        let gold_refs: Vec<&GoldMention> = gold_mentions.iter().collect();
        let predicted_refs: Vec<&Prediction> = predictions.iter().collect();
        assert_eq!(match_pairs(&gold_refs, &predicted_refs, true), [(0, 1)]);
    }

    #[test]
    fn touching_spans_do_not_overlap() {
        let gold_mentions = [gold(0, 10, Assertion::Present, &[])];
        let predictions = [predicted(10, 15, Assertion::Present, &[])];
        let gold_refs: Vec<&GoldMention> = gold_mentions.iter().collect();
        let predicted_refs: Vec<&Prediction> = predictions.iter().collect();
        assert!(match_pairs(&gold_refs, &predicted_refs, true).is_empty());
    }

    #[test]
    fn assertion_mismatch_counts_only_in_strict_rows() {
        let gold_mentions = [gold(0, 10, Assertion::Negated, &[])];
        let predictions = [predicted(0, 10, Assertion::Present, &[])];
        let rows = score_notes(&[(&gold_mentions, &predictions)]);
        let strict = row(&rows, ROW_STRICT);
        assert_eq!(strict.counts.true_positives, 0);
        assert_eq!(strict.counts.false_positives, 1);
        assert_eq!(strict.counts.false_negatives, 1);
        assert_eq!(row(&rows, ROW_SPAN).counts.true_positives, 1);
        let negated = row(&rows, "negated");
        assert_eq!(negated.gold, 1);
        assert_eq!(negated.counts.false_negatives, 1);
        assert_eq!(negated.counts.false_positives, 0);
        let present = row(&rows, "present");
        assert_eq!(present.gold, 0);
        assert_eq!(present.counts.false_positives, 1);
    }

    #[test]
    fn type_mismatch_never_matches() {
        let gold_mentions = [gold(0, 10, Assertion::Present, &[])];
        let mut prediction = predicted(0, 10, Assertion::Present, &[]);
        prediction.concept_type = ConceptType::Medication;
        let rows = score_notes(&[(&gold_mentions, &[prediction])]);
        assert_eq!(row(&rows, ROW_SPAN).counts.true_positives, 0);
        assert_eq!(row(&rows, "medication").counts.false_positives, 1);
        assert_eq!(row(&rows, "problem").counts.false_negatives, 1);
    }

    #[test]
    fn code_scores() {
        let gold_mentions = [
            gold(0, 10, Assertion::Present, &["J45.909"]),
            gold(20, 30, Assertion::Present, &["I10"]),
            gold(40, 50, Assertion::Present, &["R05.9"]),
            gold(60, 70, Assertion::Present, &[]),
        ];
        let predictions = [
            predicted(0, 10, Assertion::Negated, &["J45"]),
            predicted(20, 30, Assertion::Present, &["I10", "I15.9"]),
            predicted(60, 70, Assertion::Present, &["R52"]),
            predicted(80, 90, Assertion::Present, &["R52"]),
        ];
        let rows = score_notes(&[(&gold_mentions, &predictions)]);
        let exact = row(&rows, ROW_CODE_EXACT);
        assert_eq!(exact.gold, 3);
        // I10 agrees; J45 is wrong at code level; R05.9 was not found.
        assert_eq!(
            exact.counts,
            Counts {
                true_positives: 1,
                false_positives: 1,
                false_negatives: 2
            }
        );
        let category = row(&rows, ROW_CODE_CATEGORY);
        assert_eq!(
            category.counts,
            Counts {
                true_positives: 2,
                false_positives: 0,
                false_negatives: 1
            }
        );
    }

    #[test]
    fn rows_follow_labels() {
        let rows = score_notes(&[]);
        let labels: Vec<(RowGroup, String)> = rows
            .iter()
            .map(|row| (row.group, row.label.clone()))
            .collect();
        assert_eq!(labels, row_labels());
        assert_eq!(rows.len(), 13);
    }
}
