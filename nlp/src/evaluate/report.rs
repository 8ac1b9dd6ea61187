//! Text renderings of an [`EvaluationReport`]: a terminal table and a
//! Markdown report. JSON is the report's serde serialisation.

use std::fmt::Write;

use super::score::{ROW_CODE_CATEGORY, ROW_CODE_EXACT, ROW_SPAN, ROW_STRICT};
use super::{EvaluationReport, SystemReport};

/// Matching rules, as the reports state them.
pub const MATCHING_DESCRIPTION: &str = "\
A predicted mention matches a gold mention when their byte spans overlap and \
their concept types agree; the strict rows also require the same assertion. \
Pairs are one to one, longest overlap first. Unpaired predictions are false \
positives and unpaired gold mentions false negatives. The assertion and type \
rows restrict both gold and predictions to that assertion or type. The code \
rows cover the gold mentions that have codes: a span-and-type pair is right \
when one of the prediction's concepts has one of the gold codes (exactly, or \
by three-character ICD-10-CM category), and counts as a false positive and a \
false negative otherwise; predictions paired with uncoded gold mentions are \
not counted.";

/// Renders the report as a fixed-width table for a terminal.
pub fn render_table(report: &EvaluationReport) -> String {
    let mut out = String::new();
    let gold = &report.gold;
    let _ = writeln!(
        out,
        "NLP evaluation, {} part: {} notes ({}), {} gold mentions",
        report.part,
        gold.notes,
        corpus_list(report),
        gold.mentions
    );
    for (index, system) in report.systems.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {} = {}{} ({} predictions)",
            system_letter(index),
            system.description,
            threshold_note(system),
            system.predictions
        );
    }
    out.push('\n');

    let _ = write!(out, "{:<10} {:<26} {:>5}", "group", "row", "gold");
    for index in 0..report.systems.len() {
        let _ = write!(
            out,
            " | {:>5} {:>5} {:>5}",
            format!("{}:P", system_letter(index)),
            "R",
            "F1"
        );
    }
    out.push('\n');
    let width = 43 + report.systems.len() * 20;
    out.push_str(&"-".repeat(width));
    out.push('\n');

    let Some(first) = report.systems.first() else {
        return out;
    };
    for (row_index, row) in first.rows.iter().enumerate() {
        let group = serde_json::to_value(row.group)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(out, "{group:<10} {:<26} {:>5}", row.label, row.gold);
        for system in &report.systems {
            let row = &system.rows[row_index];
            let _ = write!(
                out,
                " | {:>5.3} {:>5.3} {:>5.3}",
                row.precision, row.recall, row.f1
            );
        }
        out.push('\n');
    }
    out
}

/// Renders the report as Markdown. `command` is the command line that
/// produced it, shown so that the report can be reproduced.
pub fn render_markdown(report: &EvaluationReport, command: &str) -> String {
    let mut out = String::new();
    let gold = &report.gold;
    let _ = writeln!(out, "# NLP evaluation: {} part\n", report.part);
    let _ = writeln!(out, "Produced by:\n\n```sh\n{command}\n```\n");
    let _ = writeln!(
        out,
        "Notes: {} ({}). Gold mentions: {} ({}), by assertion {}; {} have codes.\n",
        gold.notes,
        corpus_list(report),
        gold.mentions,
        join_counts(&gold.mentions_by_type),
        join_counts(&gold.mentions_by_assertion),
        gold.mentions_with_codes
    );

    out.push_str(
        "## Systems\n\n| | system | predictions | untyped mentions left out |\n|---|---|---|---|\n",
    );
    for (index, system) in report.systems.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {} |",
            system_letter(index),
            system.description,
            threshold_note(system),
            system.predictions,
            system.untyped_mentions
        );
    }
    let _ = writeln!(out, "\n## Matching\n\n{MATCHING_DESCRIPTION}\n");

    out.push_str("## Precision, recall and F1\n\n| group | row | gold |");
    for index in 0..report.systems.len() {
        let letter = system_letter(index);
        let _ = write!(out, " {letter} P | {letter} R | {letter} F1 |");
    }
    out.push_str("\n|---|---|---:|");
    for _ in &report.systems {
        out.push_str("---:|---:|---:|");
    }
    out.push('\n');
    if let Some(first) = report.systems.first() {
        for (row_index, row) in first.rows.iter().enumerate() {
            let _ = write!(
                out,
                "| {} | {} | {} |",
                group_name(row),
                row.label,
                row.gold
            );
            for system in &report.systems {
                let row = &system.rows[row_index];
                let _ = write!(
                    out,
                    " {:.3} | {:.3} | {:.3} |",
                    row.precision, row.recall, row.f1
                );
            }
            out.push('\n');
        }
    }

    out.push_str(
        "\n## Counts (true positives / false positives / false negatives)\n\n| group | row |",
    );
    for index in 0..report.systems.len() {
        let _ = write!(out, " {} |", system_letter(index));
    }
    out.push_str("\n|---|---|");
    for _ in &report.systems {
        out.push_str("---|");
    }
    out.push('\n');
    if let Some(first) = report.systems.first() {
        for (row_index, row) in first.rows.iter().enumerate() {
            let _ = write!(out, "| {} | {} |", group_name(row), row.label);
            for system in &report.systems {
                let counts = system.rows[row_index].counts;
                let _ = write!(
                    out,
                    " {} / {} / {} |",
                    counts.true_positives, counts.false_positives, counts.false_negatives
                );
            }
            out.push('\n');
        }
    }
    out
}

/// Renders threshold sweep results: one line per threshold with the
/// overall and code scores of the linking system.
pub fn render_sweep(reports: &[SystemReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>9} {:>11} | {:>5} {:>5} {:>5} | {:>5} {:>5} {:>5} | {:>5} {:>5}",
        "threshold", "predictions", "P", "R", "F1", "span P", "R", "F1", "code R", "cat R"
    );
    for report in reports {
        let row = |label: &str| {
            report
                .rows
                .iter()
                .find(|row| row.label == label)
                .expect("every report has the fixed rows")
        };
        let (strict, span) = (row(ROW_STRICT), row(ROW_SPAN));
        let (exact, category) = (row(ROW_CODE_EXACT), row(ROW_CODE_CATEGORY));
        let _ = writeln!(
            out,
            "{:>9.2} {:>11} | {:>5.3} {:>5.3} {:>5.3} | {:>6.3} {:>5.3} {:>5.3} | {:>6.3} {:>5.3}",
            report.link_threshold.unwrap_or_default(),
            report.predictions,
            strict.precision,
            strict.recall,
            strict.f1,
            span.precision,
            span.recall,
            span.f1,
            exact.recall,
            category.recall
        );
    }
    out
}

fn system_letter(index: usize) -> char {
    char::from(b'A' + (index % 26) as u8)
}

fn threshold_note(system: &SystemReport) -> String {
    system
        .link_threshold
        .map(|threshold| format!(", similarity threshold {threshold:.2}"))
        .unwrap_or_default()
}

fn group_name(row: &super::ScoreRow) -> &'static str {
    match row.group {
        super::RowGroup::Overall => "overall",
        super::RowGroup::Assertion => "assertion",
        super::RowGroup::Type => "type",
        super::RowGroup::Code => "code",
    }
}

fn corpus_list(report: &EvaluationReport) -> String {
    report
        .gold
        .notes_by_corpus
        .iter()
        .map(|(corpus, count)| format!("{count} {corpus}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_counts(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::gold::{Assertion, ConceptType, GoldMention, GoldNote, GoldSet, Part};
    use crate::evaluate::score::{Prediction, score_notes};
    use crate::evaluate::{GoldSummary, System};

    fn report() -> EvaluationReport {
        let gold_mentions = vec![GoldMention {
            start: 0,
            end: 5,
            text: "cough".to_string(),
            concept_type: ConceptType::Problem,
            assertion: Assertion::Present,
            codes: vec!["http://hl7.org/fhir/sid/icd-10-cm|R05.9".to_string()],
        }];
        let predictions = vec![Prediction {
            start: 0,
            end: 5,
            concept_type: ConceptType::Problem,
            assertion: Assertion::Present,
            codes: vec!["http://hl7.org/fhir/sid/icd-10-cm|R05.9".to_string()],
        }];
        let gold = GoldSet {
            path: "gold/test.jsonl".into(),
            part: Part::Test,
            notes: vec![GoldNote {
                corpus: "corpus".to_string(),
                note: "note".to_string(),
                sha256: "0".repeat(64),
                part: Part::Test,
                mentions: gold_mentions.clone(),
            }],
        };
        let rows = score_notes(&[(&gold_mentions, &predictions)]);
        EvaluationReport {
            part: Part::Test,
            gold: GoldSummary::of(&gold),
            systems: vec![SystemReport {
                system: System::Context,
                description: System::Context.description().to_string(),
                link_threshold: None,
                predictions: 1,
                untyped_mentions: 0,
                rows,
            }],
        }
    }

    #[test]
    fn table_has_every_row() {
        let table = render_table(&report());
        for (_, label) in crate::evaluate::row_labels() {
            assert!(table.contains(&label), "{label} missing from\n{table}");
        }
        assert!(table.contains("1.000 1.000 1.000"), "{table}");
    }

    #[test]
    fn markdown_names_command_and_matching() {
        let markdown = render_markdown(&report(), "infoctor evaluate nlp --part test");
        assert!(markdown.contains("infoctor evaluate nlp --part test"));
        assert!(markdown.contains(MATCHING_DESCRIPTION));
        assert!(
            markdown.contains("| overall | span + type + assertion | 1 | 1.000 | 1.000 | 1.000 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| code | code, exact | 1 / 0 / 0 |"),
            "{markdown}"
        );
    }
}
