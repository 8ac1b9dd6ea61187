//! Semantic linking: phrases that match no dictionary term are linked to
//! the concepts whose titles have the nearest embeddings.
//!
//! A [`ConceptIndex`] contains one unit vector per concept: the embedding
//! of its display without parenthesised parts ("Viral sinusitis (disorder)"
//! is embedded as "Viral sinusitis"). Embedding a terminology takes minutes
//! on a CPU (an estimate for ICD-10-CM's 98,000 titles at 300 titles per
//! second: about 5 minutes), so the vectors are cached on disk in a file whose name carries
//! the sha256 of the model weights and the sha256 of the embedded concept
//! list (system, code and text of each concept). A new model or terminology
//! release gets a new file; an old file is never read for the wrong inputs.
//!
//! [`extract_linked`] runs [`crate::extract()`] and then links the phrases
//! between its matches, keeping those whose best concept reaches the
//! threshold. Candidate phrases are runs of one to six words outside
//! dictionary matches and triggers, split at function words and at
//! `,;:()[]/`. Linked mentions carry the same context
//! attributes as dictionary matches, and their `similarity`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dictionary::{Concept, Dictionary, remove_parenthesised};
use crate::embed::{EMBEDDING_DIMENSION, Embedder};
use crate::error::{NlpError, Result};
use crate::extract::{Mention, extract_with_candidates};

/// Default minimum cosine similarity for a link.
///
/// Chosen on the development part of the gold labels in `evaluation/`
/// (64 notes, 871 mentions) with `infoctor evaluate nlp --part dev
/// --sweep-link-thresholds`, over the ICD-10-CM 2026 and Synthea dictionary:
/// strict F1 (span, type and assertion) was 0.535 at 0.50, 0.637 at 0.70,
/// 0.658 at 0.80, 0.661 at 0.85 (the maximum) and 0.653 at 0.90, against
/// 0.647 without linking. Below 0.80 the added links cost more precision
/// than they gain recall.
///
/// On 24 probe phrases against the 92 SNOMED CT conditions of the Synthea
/// export, every nearest title scoring 0.72 or more was correct ("tired" to
/// Fatigue 0.72) and phrases naming none of the conditions scored at most
/// 0.48. Second and third candidates can be wrong at high scores ("broken
/// ankle" to Sprain of ankle 0.76, after Fracture of ankle 0.87).
/// NOTE: the model scores many correct links below this value ("breast
/// carcinoma" to Malignant neoplasm of breast 0.79, "sleep apnea" to
/// Obstructive sleep apnea syndrome 0.82, "high blood pressure" to Essential
/// hypertension 0.54, "shortness of breath" to Dyspnea 0.42), and these are
/// lost at the default.
pub const DEFAULT_LINK_THRESHOLD: f32 = 0.85;

/// Default number of concepts kept per linked phrase.
pub const DEFAULT_MAX_CONCEPTS: usize = 3;

/// First bytes of a cache file, with the format version.
const CACHE_MAGIC: &[u8; 8] = b"INFVEC01";

/// A concept and the cosine similarity of its title to a phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkedConcept {
    pub concept: Concept,
    pub similarity: f32,
}

/// Unit vectors of concept titles, searched by cosine similarity.
pub struct ConceptIndex {
    concepts: Vec<Concept>,
    /// (concepts, dimension) matrix of unit vectors.
    matrix: Tensor,
    cache_path: PathBuf,
}

impl std::fmt::Debug for ConceptIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConceptIndex")
            .field("concepts", &self.concepts.len())
            .field("cache_path", &self.cache_path)
            .finish_non_exhaustive()
    }
}

impl ConceptIndex {
    /// Loads the vectors of `concepts` from `cache_dir`, or embeds the
    /// titles and writes the cache file when there is none for this model
    /// and concept list.
    pub fn build(embedder: &Embedder, concepts: Vec<Concept>, cache_dir: &Path) -> Result<Self> {
        let titles: Vec<String> = concepts.iter().map(title_text).collect();
        let concepts_sha256 = concept_list_sha256(&concepts, &titles);
        let weights = embedder.weights_sha256();
        let cache_path = cache_dir.join(format!(
            "concept-vectors-{}-{}.f32",
            &weights[..16.min(weights.len())],
            &concepts_sha256[..16]
        ));

        let vectors = match read_cache(&cache_path, concepts.len())? {
            Some(vectors) => {
                tracing::debug!(path = %cache_path.display(), concepts = concepts.len(), "concept vectors read from cache");
                vectors
            }
            None => {
                tracing::info!(concepts = concepts.len(), "embedding concept titles");
                let title_refs: Vec<&str> = titles.iter().map(String::as_str).collect();
                let vectors: Vec<f32> =
                    embedder.embed(&title_refs)?.into_iter().flatten().collect();
                fs::create_dir_all(cache_dir)
                    .map_err(|source| NlpError::io("creating", cache_dir, source))?;
                write_cache(&cache_path, concepts.len(), &vectors)?;
                vectors
            }
        };
        let matrix =
            Tensor::from_vec(vectors, (concepts.len(), EMBEDDING_DIMENSION), &Device::Cpu)?;
        Ok(ConceptIndex {
            concepts,
            matrix,
            cache_path,
        })
    }

    /// Builds the index over every concept of a dictionary.
    pub fn from_dictionary(
        embedder: &Embedder,
        dictionary: &Dictionary,
        cache_dir: &Path,
    ) -> Result<Self> {
        ConceptIndex::build(embedder, dictionary.concepts().to_vec(), cache_dir)
    }

    pub fn len(&self) -> usize {
        self.concepts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concepts.is_empty()
    }

    /// Path of the cache file that contains this index's vectors.
    pub fn cache_path(&self) -> &Path {
        &self.cache_path
    }

    /// Returns, for each query vector, up to `max_concepts` concepts with
    /// similarity at least `threshold`, the most similar first.
    pub fn nearest(
        &self,
        queries: &[Vec<f32>],
        max_concepts: usize,
        threshold: f32,
    ) -> Result<Vec<Vec<LinkedConcept>>> {
        if queries.is_empty() || self.concepts.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let queries_tensor =
            Tensor::from_vec(flat, (queries.len(), EMBEDDING_DIMENSION), &Device::Cpu)?;
        // Unit vectors, so the dot product is the cosine similarity.
        let scores = queries_tensor.matmul(&self.matrix.t()?)?.to_vec2::<f32>()?;

        let mut results = Vec::with_capacity(queries.len());
        for row in scores {
            let mut best: Vec<(usize, f32)> = row
                .into_iter()
                .enumerate()
                .filter(|&(_, score)| score >= threshold)
                .collect();
            best.sort_by(|left, right| right.1.total_cmp(&left.1));
            best.truncate(max_concepts);
            results.push(
                best.into_iter()
                    .map(|(index, similarity)| LinkedConcept {
                        concept: self.concepts[index].clone(),
                        similarity,
                    })
                    .collect(),
            );
        }
        Ok(results)
    }
}

/// Links phrases to concepts of an index with one embedder.
#[derive(Debug, Clone)]
pub struct Linker<'a> {
    embedder: &'a Embedder,
    index: &'a ConceptIndex,
    pub threshold: f32,
    pub max_concepts: usize,
}

impl<'a> Linker<'a> {
    pub fn new(embedder: &'a Embedder, index: &'a ConceptIndex) -> Self {
        Linker {
            embedder,
            index,
            threshold: DEFAULT_LINK_THRESHOLD,
            max_concepts: DEFAULT_MAX_CONCEPTS,
        }
    }

    /// Returns the concepts nearest to each phrase (possibly none).
    pub fn link_phrases(&self, phrases: &[&str]) -> Result<Vec<Vec<LinkedConcept>>> {
        let vectors = self.embedder.embed(phrases)?;
        self.index
            .nearest(&vectors, self.max_concepts, self.threshold)
    }
}

/// Extracts dictionary mentions, then links the remaining candidate
/// phrases by embedding. Returns all mentions ordered by offset.
pub fn extract_linked(
    note: &str,
    dictionary: &Dictionary,
    linker: &Linker<'_>,
) -> Result<Vec<Mention>> {
    Ok(link_candidates(note, dictionary, linker)?.mentions(linker.threshold))
}

/// A note's dictionary mentions and its candidate phrases, each with the
/// concepts nearest to it at or above the linker's threshold.
#[derive(Debug, Clone)]
pub struct LinkCandidates {
    pub matched: Vec<Mention>,
    pub candidates: Vec<(Mention, Vec<LinkedConcept>)>,
}

impl LinkCandidates {
    /// Returns the dictionary mentions and the candidates linked at
    /// `threshold` or above, ordered by offset. A threshold below the one the
    /// candidates were linked with keeps no more than that one did.
    pub fn mentions(&self, threshold: f32) -> Vec<Mention> {
        let mut mentions = self.matched.clone();
        for (candidate, linked) in &self.candidates {
            let kept: Vec<&LinkedConcept> = linked
                .iter()
                .filter(|link| link.similarity >= threshold)
                .collect();
            let Some(best) = kept.first() else { continue };
            let mut mention = candidate.clone();
            mention.similarity = Some(best.similarity);
            mention.concepts = kept.iter().map(|link| link.concept.clone()).collect();
            mentions.push(mention);
        }
        mentions.sort_by_key(|mention| mention.start);
        mentions
    }
}

/// Runs [`crate::extract()`] on a note and links the candidate phrases
/// between its matches, keeping concepts at or above `linker.threshold`.
/// [`LinkCandidates::mentions`] then applies any higher threshold without
/// embedding again.
pub fn link_candidates(
    note: &str,
    dictionary: &Dictionary,
    linker: &Linker<'_>,
) -> Result<LinkCandidates> {
    let (matched, candidates) = extract_with_candidates(note, dictionary, true);
    let phrases: Vec<&str> = candidates
        .iter()
        .map(|candidate| candidate.text.as_str())
        .collect();
    let links = linker.link_phrases(&phrases)?;
    Ok(LinkCandidates {
        matched,
        candidates: candidates.into_iter().zip(links).collect(),
    })
}

fn title_text(concept: &Concept) -> String {
    let title = remove_parenthesised(&concept.display);
    if title.is_empty() {
        concept.display.clone()
    } else {
        title
    }
}

fn concept_list_sha256(concepts: &[Concept], titles: &[String]) -> String {
    let mut hasher = Sha256::new();
    for (concept, title) in concepts.iter().zip(titles) {
        for part in [&concept.system, &concept.code, title] {
            hasher.update(part.as_bytes());
            hasher.update([0x1f]);
        }
        hasher.update([b'\n']);
    }
    hex::encode(hasher.finalize())
}

/// Reads a cache file: magic, dimension (u32 LE), count (u64 LE), then
/// count × dimension f32 LE. Returns `None` when the file does not exist.
fn read_cache(path: &Path, expected_count: usize) -> Result<Option<Vec<f32>>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(NlpError::io("opening", path, source)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| NlpError::io("reading", path, source))?;
    let invalid = |message: String| NlpError::InvalidEmbeddingCache {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 20 || &bytes[..8] != CACHE_MAGIC {
        return Err(invalid(
            "it does not start with the expected header".to_string(),
        ));
    }
    let dimension = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let count = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    if dimension != EMBEDDING_DIMENSION || count != expected_count {
        return Err(invalid(format!(
            "it contains {count} vectors of dimension {dimension}, expected {expected_count} of dimension {EMBEDDING_DIMENSION}"
        )));
    }
    let payload = &bytes[20..];
    if payload.len() != count * dimension * 4 {
        return Err(invalid(format!(
            "{} data bytes, expected {}",
            payload.len(),
            count * dimension * 4
        )));
    }
    Ok(Some(
        payload
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect(),
    ))
}

fn write_cache(path: &Path, count: usize, vectors: &[f32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(20 + vectors.len() * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(EMBEDDING_DIMENSION as u32).to_le_bytes());
    bytes.extend_from_slice(&(count as u64).to_le_bytes());
    for value in vectors {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let temporary = path.with_extension(format!("{}.part", std::process::id()));
    let mut file = fs::File::create(&temporary)
        .map_err(|source| NlpError::io("creating", &temporary, source))?;
    file.write_all(&bytes)
        .map_err(|source| NlpError::io("writing", &temporary, source))?;
    file.sync_all()
        .map_err(|source| NlpError::io("writing", &temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| NlpError::io("renaming", &temporary, source))
}
