//! Word tokens and their normal forms, shared by dictionary matching and
//! context triggers.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// A word: a maximal run of alphanumeric characters, as byte offsets into
/// the text it was cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into alphanumeric runs. Punctuation, including hyphens and
/// slashes, separates words, so "non-small" and "non small" give the same
/// tokens. Offsets are shifted by `offset`.
pub(crate) fn tokenize(text: &str, offset: usize) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (index, character) in text.char_indices() {
        if character.is_alphanumeric() {
            if start.is_none() {
                start = Some(index);
            }
        } else if let Some(begin) = start.take() {
            tokens.push(Token {
                start: offset + begin,
                end: offset + index,
            });
        }
    }
    if let Some(begin) = start {
        tokens.push(Token {
            start: offset + begin,
            end: offset + text.len(),
        });
    }
    tokens
}

/// Lowercases a word and removes accents ("Sézary" becomes "sezary").
pub(crate) fn fold(word: &str) -> String {
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    word.to_lowercase()
        .nfd()
        .filter(|character| !is_combining_mark(*character))
        .collect()
}

/// Folds a word and strips a regular English plural ending, so "allergies"
/// and "allergy" or "masses" and "mass" compare equal. Endings in -ss, -us
/// and -is stay ("abscess", "virus", "pelvis"). The rule is applied to both
/// dictionary terms and note text, so a word it mangles ("diabetes" becomes
/// "diabete") still matches itself.
pub(crate) fn normalize_word(word: &str) -> String {
    let mut folded = fold(word);
    let length = folded.len();
    if length <= 3 || !folded.bytes().all(|byte| byte.is_ascii_lowercase()) {
        return folded;
    }
    if length > 4 && folded.ends_with("ies") {
        folded.truncate(length - 3);
        folded.push('y');
    } else if folded.ends_with("sses") {
        folded.truncate(length - 2);
    } else if folded.ends_with('s')
        && !folded.ends_with("ss")
        && !folded.ends_with("us")
        && !folded.ends_with("is")
    {
        folded.truncate(length - 1);
    }
    folded
}

/// Returns the normalised words of a phrase.
pub(crate) fn normalized_words(phrase: &str) -> Vec<String> {
    tokenize(phrase, 0)
        .into_iter()
        .map(|token| normalize_word(&phrase[token.start..token.end]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_splits_on_punctuation() {
        let text = "Non-small cell (NSCLC), 4.5 cm; Sézary";
        let words: Vec<&str> = tokenize(text, 0)
            .iter()
            .map(|token| &text[token.start..token.end])
            .collect();
        assert_eq!(
            words,
            ["Non", "small", "cell", "NSCLC", "4", "5", "cm", "Sézary"]
        );
    }

    #[test]
    fn tokenize_shifts_offsets() {
        let tokens = tokenize("ab cd", 10);
        assert_eq!(tokens[1], Token { start: 13, end: 15 });
    }

    #[test]
    fn normalize_word_handles_plurals() {
        assert_eq!(normalize_word("Allergies"), "allergy");
        assert_eq!(normalize_word("masses"), "mass");
        assert_eq!(normalize_word("pains"), "pain");
        assert_eq!(normalize_word("abscess"), "abscess");
        assert_eq!(normalize_word("virus"), "virus");
        assert_eq!(normalize_word("pelvis"), "pelvis");
        assert_eq!(normalize_word("lbs"), "lbs");
        assert_eq!(normalize_word("Sézary"), "sezary");
    }
}
