//! Sentence embeddings with all-MiniLM-L6-v2 on the CPU.
//!
//! The computation is the one sentence-transformers runs for this model:
//! BERT WordPiece tokens truncated to 256 (the model's `max_seq_length`,
//! special tokens included), the 6-layer BERT encoder, the mean of the token
//! vectors weighted by the attention mask, then L2 normalisation. The
//! reference test checks every vector against sentence-transformers at
//! cosine ≥ 0.9999.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::Encoder;
use crate::error::{NlpError, Result};
use crate::model_files::{ModelManifest, verify_minilm};

/// Length of an embedding vector.
pub const EMBEDDING_DIMENSION: usize = 384;

/// Maximum number of tokens per text, special tokens included. Longer texts
/// are cut, as sentence-transformers cuts them for this model.
pub const MAX_SEQUENCE_LENGTH: usize = 256;

/// Default number of texts run through the encoder at once.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// Maximum number of token positions (rows × padded length) in one batch.
/// Batches of long texts get fewer rows, which bounds the memory of the
/// encoder's activations: 32 rows of 256 tokens at most, whose largest
/// activation, the feed-forward layer's, takes 8,192 × 1,536 floats (48 MiB).
const MAX_BATCH_TOKENS: usize = 8_192;

/// all-MiniLM-L6-v2 loaded from a verified model folder.
pub struct Embedder {
    model: Encoder,
    tokenizer: Tokenizer,
    pad_id: u32,
    device: Device,
    manifest: ModelManifest,
    batch_size: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Embedder")
            .field("weights_sha256", &self.manifest.weights_sha256())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model from `dir`, which [`crate::model_files::fetch_minilm`]
    /// filled. Verifies every file's sha256 first and needs no network.
    pub fn load(dir: &Path) -> Result<Self> {
        let manifest = verify_minilm(dir)?;
        let device = Device::Cpu;

        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|source| NlpError::io("reading", &config_path, source))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|error| NlpError::InvalidConfig {
                path: config_path.clone(),
                message: error.to_string(),
            })?;

        let (tokenizer, pad_id) = load_tokenizer(&dir.join("tokenizer.json"))?;

        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path)
            .map_err(|source| NlpError::io("reading", &weights_path, source))?;
        let variables = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = Encoder::load(variables, &config)?;
        tracing::debug!(dir = %dir.display(), "embedding model loaded");

        Ok(Embedder {
            model,
            tokenizer,
            pad_id,
            device,
            manifest,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Sets how many texts go through the encoder at once (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Returns the manifest of the loaded model files.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Returns the sha256 of the weights, which identifies the model in caches.
    pub fn weights_sha256(&self) -> &str {
        self.manifest.weights_sha256()
    }

    /// Embeds each text into a unit vector of [`EMBEDDING_DIMENSION`] floats,
    /// in input order.
    ///
    /// Texts are tokenized once, sorted by token count and run in batches of
    /// up to the batch size, each padded only to its own longest text. The
    /// attention mask keeps padding out of the result, so a vector does not
    /// depend on its batch beyond float rounding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|error| NlpError::Tokenize {
                batch: texts.len(),
                message: error.to_string(),
            })?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&index| std::cmp::Reverse(encodings[index].len()));

        let mut vectors = vec![Vec::new(); texts.len()];
        let mut first = 0;
        while first < order.len() {
            let longest = encodings[order[first]].len().max(1);
            let rows = self
                .batch_size
                .min((MAX_BATCH_TOKENS / longest).max(1))
                .min(order.len() - first);
            let batch = &order[first..first + rows];
            let batch_encodings: Vec<&tokenizers::Encoding> =
                batch.iter().map(|&index| &encodings[index]).collect();
            let batch_vectors = self.embed_batch(&batch_encodings, longest)?;
            for (&index, vector) in batch.iter().zip(batch_vectors) {
                vectors[index] = vector;
            }
            first += rows;
        }
        Ok(vectors)
    }

    /// Runs the encoder on encodings padded to `length` tokens and pools the
    /// result.
    fn embed_batch(
        &self,
        encodings: &[&tokenizers::Encoding],
        length: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let rows = encodings.len();
        let mut ids = Vec::with_capacity(rows * length);
        let mut mask = Vec::with_capacity(rows * length);
        for encoding in encodings {
            let encoding_ids = encoding.get_ids();
            ids.extend_from_slice(encoding_ids);
            ids.resize(ids.len() + length - encoding_ids.len(), self.pad_id);
            mask.extend_from_slice(encoding.get_attention_mask());
            mask.resize(mask.len() + length - encoding_ids.len(), 0);
        }

        let ids = Tensor::from_vec(ids, (rows, length), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, length), &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?;

        // Mean over real tokens: padding positions have mask 0.
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;

        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        Ok(normalized.to_vec2::<f32>()?)
    }
}

/// Loads `tokenizer.json`, replaces its truncation at 128 tokens with
/// truncation at [`MAX_SEQUENCE_LENGTH`] and removes its fixed padding to 128,
/// because [`Embedder::embed`] pads each batch to its own longest text.
/// Returns the tokenizer and the id of `[PAD]`.
fn load_tokenizer(path: &Path) -> Result<(Tokenizer, u32)> {
    let load_error = |message: String| NlpError::TokenizerLoad {
        path: path.to_path_buf(),
        message,
    };
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|error| load_error(error.to_string()))?;
    let pad_token = "[PAD]";
    let Some(pad_id) = tokenizer.token_to_id(pad_token) else {
        return Err(load_error(format!(
            "the vocabulary has no {pad_token} token"
        )));
    };
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_SEQUENCE_LENGTH,
            ..TruncationParams::default()
        }))
        .map_err(|error| load_error(error.to_string()))?;
    Ok((tokenizer, pad_id))
}

/// Returns the cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let mut dot = 0.0f64;
    let mut left_norm = 0.0f64;
    let mut right_norm = 0.0f64;
    for (&a, &b) in left.iter().zip(right) {
        dot += f64::from(a) * f64::from(b);
        left_norm += f64::from(a) * f64::from(a);
        right_norm += f64::from(b) * f64::from(b);
    }
    if left_norm == 0.0 || right_norm == 0.0 {
        return 0.0;
    }
    (dot / (left_norm.sqrt() * right_norm.sqrt())) as f32
}
