//! Sentence splitting for clinical text.
//!
//! Boundaries are:
//! - `.`, `!` or `?` followed by white space, unless the next word starts
//!   with a lowercase letter ("500 mg. daily", "E. coli"), the word before a
//!   `.` is a title or Latin abbreviation ("Dr. Smith", "e.g. Aspirin") or a
//!   single capital (an initial), or the `.` closes a list number at the start
//!   of a sentence ("1. Hypertension");
//! - a blank line;
//! - a line break before a list item (`-`, `*`, `•`, `1.`, `1)`);
//! - a line break after a short line (under 55 characters, not ending in a
//!   comma) when the next line starts with a capital or a digit. Longer lines
//!   are taken as hard-wrapped prose, so the sentence goes on.

use std::ops::Range;

/// Abbreviations after which a `.` does not end a sentence even when a
/// capital follows. Units such as "mg." need no entry: they end a sentence
/// only before a capital, which is the general rule.
const NON_TERMINAL_ABBREVIATIONS: &[&str] = &[
    "dr", "mr", "mrs", "ms", "prof", "st", "vs", "e.g", "i.e", "approx", "cf", "fig", "no",
];

/// Line length under which a line break before a capital ends a sentence.
const SHORT_LINE: usize = 55;

/// Splits `text[range]` into sentences, returned as byte ranges into `text`
/// without surrounding white space.
pub fn split_sentences(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut sentences = Vec::new();
    let base = range.start;
    let part = &text[range];
    let bytes = part.as_bytes();
    let mut sentence_start = 0usize;
    let mut line_start = 0usize;

    let mut index = 0usize;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'\n' {
            let line = part[line_start..index].trim();
            let next_line_start = index + 1;
            let next = part[next_line_start..].trim_start_matches([' ', '\t', '\r']);
            let blank_follows = next.starts_with('\n') || next.is_empty();
            let breaks = blank_follows
                || starts_list_item(next)
                || (line.len() < SHORT_LINE
                    && !line.ends_with(',')
                    && next
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit()));
            if breaks {
                push_trimmed(&mut sentences, part, base, sentence_start..index);
                sentence_start = next_line_start;
            }
            line_start = next_line_start;
            index += 1;
            continue;
        }

        if matches!(byte, b'.' | b'!' | b'?') {
            let end = closing_punctuation_end(bytes, index + 1);
            let followed_by_space = end == bytes.len() || bytes[end].is_ascii_whitespace();
            if followed_by_space && ends_sentence(part, sentence_start, index, end) {
                push_trimmed(&mut sentences, part, base, sentence_start..end);
                sentence_start = end;
            }
            index = end.max(index + 1);
            continue;
        }
        index += 1;
    }
    push_trimmed(&mut sentences, part, base, sentence_start..part.len());
    sentences
}

/// Skips closing quotes and brackets after terminal punctuation.
fn closing_punctuation_end(bytes: &[u8], mut index: usize) -> usize {
    while index < bytes.len() && matches!(bytes[index], b'"' | b'\'' | b')' | b']') {
        index += 1;
    }
    index
}

/// Decides whether the punctuation at `mark` (followed by white space up to
/// `after`) ends the sentence that began at `sentence_start`.
fn ends_sentence(part: &str, sentence_start: usize, mark: usize, after: usize) -> bool {
    let next_word = part[after..].trim_start();
    if next_word.chars().next().is_some_and(|c| c.is_lowercase()) {
        return false;
    }
    if part.as_bytes()[mark] != b'.' {
        return true;
    }

    let before = &part[sentence_start..mark];
    let word_start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '.'))
        .map_or(0, |(position, c)| position + c.len_utf8());
    let word = &before[word_start..];
    if word.is_empty() {
        return true;
    }
    let sentence_so_far = before[..word_start].trim();
    if sentence_so_far.is_empty() && word.len() <= 3 && word.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut characters = word.chars();
    if let (Some(first), None) = (characters.next(), characters.next())
        && first.is_uppercase()
    {
        return false;
    }
    let lower = word.to_ascii_lowercase();
    !NON_TERMINAL_ABBREVIATIONS.contains(&lower.as_str())
}

fn starts_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") || line.starts_with('•') {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    (1..=3).contains(&digits)
        && matches!(line.as_bytes().get(digits), Some(b'.' | b')'))
        && line
            .as_bytes()
            .get(digits + 1)
            .is_none_or(|b| b.is_ascii_whitespace())
}

fn push_trimmed(sentences: &mut Vec<Range<usize>>, part: &str, base: usize, range: Range<usize>) {
    let slice = &part[range.clone()];
    let leading = slice.len() - slice.trim_start().len();
    let trimmed = slice.trim();
    if trimmed.is_empty() {
        return;
    }
    let start = base + range.start + leading;
    sentences.push(start..start + trimmed.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        split_sentences(text, 0..text.len())
            .into_iter()
            .map(|range| &text[range])
            .collect()
    }

    #[test]
    fn abbreviations_do_not_split() {
        assert_eq!(
            split("Seen by Dr. Smith today. Takes aspirin 81 mg. daily. Grew E. coli in urine."),
            [
                "Seen by Dr. Smith today.",
                "Takes aspirin 81 mg. daily.",
                "Grew E. coli in urine."
            ]
        );
    }

    #[test]
    fn unit_before_capital_splits() {
        assert_eq!(
            split("Metformin 500 mg. Patient tolerates it."),
            ["Metformin 500 mg.", "Patient tolerates it."]
        );
    }

    #[test]
    fn numbered_lists() {
        assert_eq!(
            split("1. Hypertension. 2. Diabetes mellitus.\n3. Asthma"),
            ["1. Hypertension.", "2. Diabetes mellitus.", "3. Asthma"]
        );
    }

    #[test]
    fn decimals_do_not_split() {
        assert_eq!(
            split("Temp 38.5 today. Fine."),
            ["Temp 38.5 today.", "Fine."]
        );
    }

    #[test]
    fn line_breaks() {
        let text = "- Cough\n- Fever\n\nThe patient was seen in the clinic today and was found to be\nin no distress.\nBP 120/80\nHR 70";
        assert_eq!(
            split(text),
            [
                "- Cough",
                "- Fever",
                "The patient was seen in the clinic today and was found to be\nin no distress.",
                "BP 120/80",
                "HR 70",
            ]
        );
    }

    #[test]
    fn offsets_are_into_the_whole_text() {
        let text = "HPI: Fever. Cough.";
        let sentences = split_sentences(text, 4..text.len());
        assert_eq!(&text[sentences[0].clone()], "Fever.");
        assert_eq!(&text[sentences[1].clone()], "Cough.");
    }

    #[test]
    fn multibyte_characters_before_a_period() {
        assert_eq!(
            split("Flexion to 90 °. Extension normal."),
            ["Flexion to 90 °.", "Extension normal."]
        );
    }

    #[test]
    fn questions_and_exclamations() {
        assert_eq!(
            split("Pneumonia? Unclear! Recheck."),
            ["Pneumonia?", "Unclear!", "Recheck."]
        );
    }
}
