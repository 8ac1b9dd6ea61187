//! The BERT encoder of all-MiniLM-L6-v2, arranged for CPU throughput.
//!
//! It computes what `candle_transformers::models::bert::BertModel` computes
//! for this model, on the same weights, with the work arranged for few
//! cores. The query, key and value projections run as one matrix product,
//! and the attention scale is folded into the query weights.
//!
//! The layers run on the real tokens only, without padding (see
//! [`Encoder::forward`]). The matrix products call OpenBLAS
//! ([`crate::blas`]) on blocks of rows spread over the rayon threads. Each
//! dense product adds its bias, and the GELU activation or the residual
//! that follows it, to a block while that block is still in cache.
//! Attention runs per sentence, head and block of queries. It reads the
//! queries, keys and values in place in the fused projection's output and
//! writes each head's context straight into its columns of the output. So
//! no permuted copy of the projections and no scores tensor for the whole
//! batch is made.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Shape, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::blas::{Matrix, MatrixMut, Operand, multiply};
use crate::error::{NlpError, Result};

/// Maximum rows of one dense product task. Larger blocks amortise OpenBLAS's
/// packing of the weights, and smaller ones keep a block's output in a
/// core's cache for the bias and activation pass.
const MAX_DENSE_ROWS_PER_TASK: usize = 256;

/// Maximum queries of one attention task. Their scores against all keys
/// take at most 64 × 256 floats (64 KiB) for 256-token sentences.
const MAX_QUERIES_PER_TASK: usize = 64;

pub(crate) struct Encoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embedding: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    hidden_size: usize,
}

struct Layer {
    /// Query, key and value projections stacked, `3 * hidden` outputs.
    qkv: Dense,
    output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    down: Dense,
    output_norm: LayerNorm,
}

/// A linear layer `x · Wᵀ + b` whose weight `W` is stored as PyTorch stores
/// it: row-major `(outputs, inputs)`.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        let bias = bias.to_vec1::<f32>()?;
        if bias.len() != outputs {
            return Err(candle_core::Error::Msg(format!(
                "bias has {} values for {outputs} outputs",
                bias.len()
            ))
            .into());
        }
        Ok(Dense {
            weight: weight.flatten_all()?.to_vec1()?,
            bias,
            inputs,
        })
    }

    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        Dense::new(
            &vb.get((outputs, inputs), "weight")?,
            &vb.get(outputs, "bias")?,
        )
    }

    fn outputs(&self) -> usize {
        self.bias.len()
    }
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

impl Encoder {
    /// Loads the encoder's weights, with or without a `bert.` prefix.
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        if config.hidden_act != HiddenAct::Gelu {
            return Err(NlpError::InvalidConfig {
                path: "config.json".into(),
                message: format!(
                    "hidden_act {:?} is not supported; this encoder runs the exact GELU",
                    config.hidden_act
                ),
            });
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(NlpError::InvalidConfig {
                path: "config.json".into(),
                message: format!("hidden_size {hidden} is not a multiple of {heads} heads"),
            });
        }
        let head_size = hidden / heads;
        let eps = config.layer_norm_eps;

        let embeddings = vb.pp("embeddings");
        let word_embeddings = embeddings
            .pp("word_embeddings")
            .get((config.vocab_size, hidden), "weight")?;
        let position_embeddings = embeddings
            .pp("position_embeddings")
            .get((config.max_position_embeddings, hidden), "weight")?;
        // Every text has token type 0, so one row of that table is added.
        let token_type_embedding = embeddings
            .pp("token_type_embeddings")
            .get((config.type_vocab_size, hidden), "weight")?
            .narrow(0, 0, 1)?;
        let embedding_norm = layer_norm(embeddings.pp("LayerNorm"), hidden, eps)?;

        let scale = 1.0 / (head_size as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let layer = vb.pp(format!("encoder.layer.{index}"));
            let attention = layer.pp("attention");
            let projection = |name: &str| -> Result<(Tensor, Tensor)> {
                let vb = attention.pp("self").pp(name);
                Ok((vb.get((hidden, hidden), "weight")?, vb.get(hidden, "bias")?))
            };
            let (query_weight, query_bias) = projection("query")?;
            let (key_weight, key_bias) = projection("key")?;
            let (value_weight, value_bias) = projection("value")?;
            // Scaling the queries scales the scores; done once here.
            let qkv = Dense::new(
                &Tensor::cat(&[(query_weight * scale)?, key_weight, value_weight], 0)?,
                &Tensor::cat(&[(query_bias * scale)?, key_bias, value_bias], 0)?,
            )?;

            let output = attention.pp("output");
            let intermediate_size = config.intermediate_size;
            layers.push(Layer {
                qkv,
                output: Dense::load(output.pp("dense"), hidden, hidden)?,
                attention_norm: layer_norm(output.pp("LayerNorm"), hidden, eps)?,
                intermediate: Dense::load(
                    layer.pp("intermediate").pp("dense"),
                    hidden,
                    intermediate_size,
                )?,
                down: Dense::load(layer.pp("output").pp("dense"), intermediate_size, hidden)?,
                output_norm: layer_norm(layer.pp("output").pp("LayerNorm"), hidden, eps)?,
            });
        }
        crate::blas::use_calling_thread_only();
        Ok(Encoder {
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            heads,
            head_size,
            hidden_size: hidden,
        })
    }

    /// Encodes `ids` `(rows, length)` whose real tokens `mask` marks with 1
    /// (`u32`, same shape) and returns the last hidden states
    /// `(rows, length, hidden)`, which are 0 at padding positions.
    ///
    /// Padding is dropped before the first layer: the layers run on the
    /// real tokens alone, packed sentence after sentence, and attention runs
    /// within each sentence. Padding keys get attention weight 0 in BERT, so
    /// the real tokens' states are the same as with padding, and the work
    /// grows with the real token count instead of rows × length.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (rows, length) = ids.dims2()?;
        let hidden = self.hidden_size;
        let device = self.word_embeddings.device();
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let mask = mask.flatten_all()?.to_vec1::<u32>()?;
        if mask.len() != ids.len() {
            return Err(candle_core::Error::Msg(format!(
                "mask has {} values for {} token ids",
                mask.len(),
                ids.len()
            ))
            .into());
        }

        let mut real_ids = Vec::with_capacity(ids.len());
        let mut positions = Vec::with_capacity(ids.len());
        // Index of each real token in the padded `(rows * length)` order.
        let mut slots = Vec::with_capacity(ids.len());
        let mut sentence_lengths = Vec::with_capacity(rows);
        for (row, (row_ids, row_mask)) in ids
            .chunks(length.max(1))
            .zip(mask.chunks(length.max(1)))
            .enumerate()
        {
            let before = real_ids.len();
            for (position, (&id, &flag)) in row_ids.iter().zip(row_mask).enumerate() {
                if flag != 0 {
                    real_ids.push(id);
                    positions.push(position as u32);
                    slots.push((row * length + position) as u32);
                }
            }
            sentence_lengths.push(real_ids.len() - before);
        }
        let tokens = real_ids.len();
        let padded = Tensor::zeros((rows * length, hidden), candle_core::DType::F32, device)?;
        if tokens == 0 {
            return Ok(padded.reshape((rows, length, hidden))?);
        }

        let words = self
            .word_embeddings
            .index_select(&Tensor::from_vec(real_ids, tokens, device)?, 0)?;
        let positions = self
            .position_embeddings
            .index_select(&Tensor::from_vec(positions, tokens, device)?, 0)?;
        let embedded = (words + positions)?.broadcast_add(&self.token_type_embedding)?;
        let mut states = self.embedding_norm.forward(&embedded)?;

        for layer in &self.layers {
            states = self.layer_forward(layer, &states, &sentence_lengths)?;
        }
        let slots = Tensor::from_vec(slots, tokens, device)?;
        Ok(padded
            .index_add(&slots, &states, 0)?
            .reshape((rows, length, hidden))?)
    }

    /// Runs one layer on the packed real tokens `(tokens, hidden)` of
    /// sentences with `sentence_lengths` tokens each.
    fn layer_forward(
        &self,
        layer: &Layer,
        states: &Tensor,
        sentence_lengths: &[usize],
    ) -> Result<Tensor> {
        let qkv = states.apply_op1_no_bwd(&Linear {
            dense: &layer.qkv,
            gelu: false,
        })?;
        let context = qkv.apply_op1_no_bwd(&Attention {
            sentence_lengths,
            heads: self.heads,
            head_size: self.head_size,
        })?;
        let attended = context.apply_op2_no_bwd(
            states,
            &LinearResidual {
                dense: &layer.output,
            },
        )?;
        let attended = layer.attention_norm.forward(&attended)?;

        let intermediate = attended.apply_op1_no_bwd(&Linear {
            dense: &layer.intermediate,
            gelu: true,
        })?;
        let output =
            intermediate.apply_op2_no_bwd(&attended, &LinearResidual { dense: &layer.down })?;
        Ok(layer.output_norm.forward(&output)?)
    }
}

/// Returns the contiguous `f32` values of an operand that has rows of `width`.
fn contiguous_rows<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    width: usize,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("expected f32 values");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected contiguous values");
    };
    if width == 0 || !(end - start).is_multiple_of(width) {
        candle_core::bail!("{} values do not form rows of {width}", end - start);
    }
    Ok(&values[start..end])
}

/// Returns how many rows of a dense product one rayon task takes: at most
/// [`MAX_DENSE_ROWS_PER_TASK`], in a multiple of the thread count of tasks
/// so that the threads get equal shares.
fn dense_rows_per_task(tokens: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = threads * tokens.div_ceil(threads * MAX_DENSE_ROWS_PER_TASK).max(1);
    tokens.div_ceil(tasks).max(1)
}

impl Dense {
    /// Computes `input · Wᵀ + b` for `input` rows of `inputs` values, then
    /// adds the matching `residual` row or applies the exact GELU.
    fn forward(&self, input: &[f32], residual: Option<&[f32]>, apply_gelu: bool) -> Vec<f32> {
        let (inputs, outputs) = (self.inputs, self.outputs());
        let tokens = input.len() / inputs;
        let rows_per_task = dense_rows_per_task(tokens);
        let weight = Matrix::new(&self.weight, outputs, inputs, inputs);
        let mut output = vec![0.0f32; tokens * outputs];
        output
            .par_chunks_mut(rows_per_task * outputs)
            .zip(input.par_chunks(rows_per_task * inputs))
            .enumerate()
            .for_each(|(task, (block, input_block))| {
                let rows = input_block.len() / inputs;
                multiply(
                    Matrix::new(input_block, rows, inputs, inputs),
                    weight,
                    Operand::Transposed,
                    0.0,
                    MatrixMut::new(block, rows, outputs, outputs),
                );
                match residual {
                    Some(residual) => {
                        let start = task * rows_per_task * outputs;
                        let residual_block = &residual[start..start + block.len()];
                        for (row, residual_row) in block
                            .chunks_exact_mut(outputs)
                            .zip(residual_block.chunks_exact(outputs))
                        {
                            for ((value, bias), residual) in
                                row.iter_mut().zip(&self.bias).zip(residual_row)
                            {
                                *value += bias + residual;
                            }
                        }
                    }
                    None => {
                        for row in block.chunks_exact_mut(outputs) {
                            for (value, bias) in row.iter_mut().zip(&self.bias) {
                                *value += bias;
                            }
                            if apply_gelu {
                                for value in row.iter_mut() {
                                    *value = gelu(*value);
                                }
                            }
                        }
                    }
                }
            });
        output
    }
}

/// `x · Wᵀ + b` of a `(tokens, inputs)` tensor, followed by the exact GELU
/// if `gelu`.
struct Linear<'a> {
    dense: &'a Dense,
    gelu: bool,
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        if self.gelu { "linear-gelu" } else { "linear" }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_rows(storage, layout, self.dense.inputs)?;
        let tokens = input.len() / self.dense.inputs;
        let output = self.dense.forward(input, None, self.gelu);
        Ok((
            CpuStorage::F32(output),
            (tokens, self.dense.outputs()).into(),
        ))
    }
}

/// `x · Wᵀ + b + residual` of a `(tokens, inputs)` tensor and a
/// `(tokens, outputs)` residual.
struct LinearResidual<'a> {
    dense: &'a Dense,
}

impl CustomOp2 for LinearResidual<'_> {
    fn name(&self) -> &'static str {
        "linear-residual"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        residual_storage: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_rows(storage, layout, self.dense.inputs)?;
        let residual = contiguous_rows(residual_storage, residual_layout, self.dense.outputs())?;
        let tokens = input.len() / self.dense.inputs;
        if residual.len() != tokens * self.dense.outputs() {
            candle_core::bail!(
                "residual has {} values, expected {tokens} rows of {}",
                residual.len(),
                self.dense.outputs()
            );
        }
        let output = self.dense.forward(input, Some(residual), false);
        Ok((
            CpuStorage::F32(output),
            (tokens, self.dense.outputs()).into(),
        ))
    }
}

/// Multi-head self-attention within each sentence, from the fused
/// projections `(tokens, 3 * hidden)` of sentences packed one after another
/// with `sentence_lengths` tokens each. The projection columns are the
/// queries, keys and values, each head by head. Returns the context
/// `(tokens, hidden)`, each head in its own columns.
struct Attention<'a> {
    sentence_lengths: &'a [usize],
    heads: usize,
    head_size: usize,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let hidden = self.heads * self.head_size;
        let width = 3 * hidden;
        let qkv = contiguous_rows(storage, layout, width)?;
        let tokens = qkv.len() / width;
        let total: usize = self.sentence_lengths.iter().sum();
        if total != tokens {
            candle_core::bail!(
                "invalid attention input: {tokens} tokens of projections for sentences of {total} tokens in all"
            );
        }
        let mut context = vec![0.0f32; tokens * hidden];

        // One mutable block of the output per sentence, with the sentence's
        // first token.
        let mut sentences = Vec::with_capacity(self.sentence_lengths.len());
        let mut rest = context.as_mut_slice();
        let mut first_token = 0;
        for &length in self.sentence_lengths {
            let (sentence, tail) = std::mem::take(&mut rest).split_at_mut(length * hidden);
            sentences.push((first_token, sentence));
            rest = tail;
            first_token += length;
        }
        sentences
            .into_par_iter()
            .for_each(|(first_token, sentence)| {
                let length = sentence.len() / hidden;
                let projections = &qkv[first_token * width..(first_token + length) * width];
                sentence
                    .par_chunks_mut(MAX_QUERIES_PER_TASK * hidden)
                    .enumerate()
                    .for_each(|(block, output)| {
                        self.attend(projections, block * MAX_QUERIES_PER_TASK, output);
                    });
            });
        Ok((CpuStorage::F32(context), (tokens, hidden).into()))
    }
}

impl Attention<'_> {
    /// Computes the context of one sentence's queries from `first_query` on,
    /// as many as `output` has rows of `hidden`, over all heads.
    /// `projections` is the sentence's `(length, 3 * hidden)` block.
    fn attend(&self, projections: &[f32], first_query: usize, output: &mut [f32]) {
        let head_size = self.head_size;
        let hidden = self.heads * head_size;
        let width = 3 * hidden;
        let length = projections.len() / width;
        let queries = output.len() / hidden;
        let mut scores = vec![0.0f32; queries * length];
        for head in 0..self.heads {
            let column = head * head_size;
            let query = Matrix::new(
                &projections[first_query * width + column..],
                queries,
                head_size,
                width,
            );
            let key = Matrix::new(&projections[hidden + column..], length, head_size, width);
            let value = Matrix::new(
                &projections[2 * hidden + column..],
                length,
                head_size,
                width,
            );
            multiply(
                query,
                key,
                Operand::Transposed,
                0.0,
                MatrixMut::new(&mut scores, queries, length, length),
            );
            for row in scores.chunks_exact_mut(length) {
                softmax(row);
            }
            multiply(
                Matrix::new(&scores, queries, length, length),
                value,
                Operand::AsIs,
                0.0,
                MatrixMut::new(&mut output[column..], queries, head_size, hidden),
            );
        }
    }
}

/// Replaces `scores` with their softmax.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The sum runs in a loop of its own, so that this one vectorises.
    for score in scores.iter_mut() {
        *score = exp_non_positive(*score - max);
    }
    let scale = 1.0 / scores.iter().sum::<f32>();
    for score in scores.iter_mut() {
        *score *= scale;
    }
}

/// Computes the GELU `x * Φ(x)` with [`erf`].
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Computes the error function with an absolute error below 1.5e-7
/// (Abramowitz and Stegun, formula 7.1.26), plus f32 rounding. Exact `erf`
/// from a math library took about a sixth of the encoder's time, and an
/// error this size changes no embedding beyond the reference tolerance.
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let series = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - series * exp_non_positive(-a * a)).copysign(x)
}

/// Computes `e^x` for `x ≤ 0` with a relative error of a few f32 roundings
/// (the test checks below 4e-7). Below -87 it returns `e^-87` (1.6e-38)
/// instead of smaller or subnormal values. Softmax and erf add the result
/// to terms near 1, where the difference is far below f32 resolution.
///
/// It has no branch and no library call, so the compiler vectorises the
/// GELU and softmax loops that call it, where a call to the math library's
/// `expf` per value kept them scalar. The method: `e^x = 2^n · e^r`, with
/// `n = round(x / ln 2)`, `r = x - n · ln 2` in two parts (Cody and Waite),
/// so `|r| ≤ ln 2 / 2`, and `e^r` by its Taylor series to degree 7, whose
/// truncation error is below 1e-8 there.
fn exp_non_positive(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer, which then sits in the low
    // mantissa bits of the sum.
    const ROUNDING: f32 = 12_582_912.0;
    const LN_2_HIGH: f32 = 0.693_359_4;
    const LN_2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    let r = x - n * LN_2_HIGH - n * LN_2_LOW;
    let series = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n is in [-126, 0], so 2^n is a normal f32 with exponent field n + 127.
    let exponent = (shifted.to_bits() as i32 - ROUNDING.to_bits() as i32) + 127;
    series * f32::from_bits((exponent as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        // x * Φ(x) at a few points.
        for (x, expected) in [
            (0.0f32, 0.0f32),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_3),
            (3.0, 2.995_950_3),
        ] {
            assert!((gelu(x) - expected).abs() < 1e-6, "gelu({x}) = {}", gelu(x));
        }
    }

    #[test]
    fn erf_stays_within_its_bound() {
        for step in -600..=600 {
            let x = step as f64 / 100.0;
            let exact = candle_core::cpu::erf::erf_f64(x);
            let error = (f64::from(erf(x as f32)) - exact).abs();
            assert!(error < 4e-7, "erf({x}) is off by {error}");
        }
    }

    #[test]
    fn exp_non_positive_matches_exp() {
        for step in 0..=90_000 {
            let x = -(step as f32) / 1000.0;
            let exact = f64::from(x).exp();
            let actual = f64::from(exp_non_positive(x));
            if x >= -87.0 {
                let error = (actual - exact).abs() / exact;
                assert!(error < 4e-7, "exp({x}) is off by {error} relative");
            } else {
                assert!(actual <= 1.7e-38, "exp({x}) = {actual} is not clamped");
            }
        }
        assert_eq!(exp_non_positive(0.0), 1.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut scores = [1.0f32, 2.0, 3.0, 100.0];
        softmax(&mut scores);
        let total: f32 = [1.0f32, 2.0, 3.0, 100.0]
            .iter()
            .map(|score| (score - 100.0).exp())
            .sum();
        assert!((scores[3] - 1.0 / total).abs() < 1e-6);
        assert!((scores[2] - (3.0f32 - 100.0).exp() / total).abs() < 1e-6);
        assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    use candle_core::{D, Device};

    /// Returns `count` deterministic values in [-1, 1).
    fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn max_difference(left: &Tensor, right: &Tensor) -> f32 {
        (left - right)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn linear_matches_candle_matmul() {
        // 600 rows make several tasks, the last one shorter.
        let (tokens, inputs, outputs) = (600, 24, 40);
        let device = Device::Cpu;
        let weight =
            Tensor::from_vec(values(outputs * inputs, 1), (outputs, inputs), &device).unwrap();
        let bias = Tensor::from_vec(values(outputs, 2), outputs, &device).unwrap();
        let input =
            Tensor::from_vec(values(tokens * inputs, 3), (tokens, inputs), &device).unwrap();
        let residual =
            Tensor::from_vec(values(tokens * outputs, 4), (tokens, outputs), &device).unwrap();
        let dense = Dense::new(&weight, &bias).unwrap();
        let expected = input
            .matmul(&weight.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();

        let plain = input
            .apply_op1_no_bwd(&Linear {
                dense: &dense,
                gelu: false,
            })
            .unwrap();
        assert_eq!(plain.dims(), &[tokens, outputs]);
        assert!(max_difference(&plain, &expected) < 1e-5);

        let activated = input
            .apply_op1_no_bwd(&Linear {
                dense: &dense,
                gelu: true,
            })
            .unwrap();
        assert!(max_difference(&activated, &expected.gelu_erf().unwrap()) < 1e-5);

        let summed = input
            .apply_op2_no_bwd(&residual, &LinearResidual { dense: &dense })
            .unwrap();
        assert!(max_difference(&summed, &(&expected + &residual).unwrap()) < 1e-5);
    }

    #[test]
    fn linear_rejects_wrong_residual_size() {
        let device = Device::Cpu;
        let dense = Dense::new(
            &Tensor::zeros((3, 2), candle_core::DType::F32, &device).unwrap(),
            &Tensor::zeros(3, candle_core::DType::F32, &device).unwrap(),
        )
        .unwrap();
        let input = Tensor::zeros((4, 2), candle_core::DType::F32, &device).unwrap();
        let residual = Tensor::zeros((5, 3), candle_core::DType::F32, &device).unwrap();
        let error = input
            .apply_op2_no_bwd(&residual, &LinearResidual { dense: &dense })
            .unwrap_err();
        assert!(
            error.to_string().contains("residual has 15 values"),
            "{error}"
        );
    }

    /// Computes attention the way candle-transformers' BERT does: split the
    /// heads, multiply, mask, softmax, multiply and merge the heads.
    fn reference_attention(
        qkv: &Tensor,
        real_keys: &[bool],
        rows: usize,
        length: usize,
        heads: usize,
        head_size: usize,
    ) -> Tensor {
        let device = Device::Cpu;
        let parts = qkv
            .reshape((rows, length, 3, heads, head_size))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let query = parts.get(0).unwrap();
        let key = parts.get(1).unwrap();
        let value = parts.get(2).unwrap();
        let penalty: Vec<f32> = real_keys
            .iter()
            .map(|&real| if real { 0.0 } else { -1e9 })
            .collect();
        let penalty = Tensor::from_vec(penalty, (rows, 1, 1, length), &device).unwrap();
        let scores = query
            .matmul(&key.t().unwrap().contiguous().unwrap())
            .unwrap()
            .broadcast_add(&penalty)
            .unwrap();
        let weights = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        weights
            .matmul(&value)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows * length, heads * head_size))
            .unwrap()
    }

    #[test]
    fn packed_attention_matches_padded_reference() {
        // 150 tokens make three query blocks, the last one shorter.
        let (rows, length, heads, head_size) = (3, 150, 3, 8);
        let sentence_lengths = [150, 97, 1];
        let hidden = heads * head_size;
        let width = 3 * hidden;
        let padded = values(rows * length * width, 5);
        let mut real_keys = Vec::with_capacity(rows * length);
        let mut packed = Vec::new();
        for (row, &sentence_length) in sentence_lengths.iter().enumerate() {
            real_keys.extend((0..length).map(|position| position < sentence_length));
            let start = row * length * width;
            packed.extend_from_slice(&padded[start..start + sentence_length * width]);
        }
        let tokens = packed.len() / width;
        let packed = Tensor::from_vec(packed, (tokens, width), &Device::Cpu).unwrap();
        let context = packed
            .apply_op1_no_bwd(&Attention {
                sentence_lengths: &sentence_lengths,
                heads,
                head_size,
            })
            .unwrap();
        assert_eq!(context.dims(), &[tokens, hidden]);

        let padded = Tensor::from_vec(padded, (rows * length, width), &Device::Cpu).unwrap();
        let expected = reference_attention(&padded, &real_keys, rows, length, heads, head_size);
        let mut first_token = 0;
        for (row, &sentence_length) in sentence_lengths.iter().enumerate() {
            let actual = context.narrow(0, first_token, sentence_length).unwrap();
            let expected = expected.narrow(0, row * length, sentence_length).unwrap();
            assert!(
                max_difference(&actual, &expected) < 1e-5,
                "sentence {row} differs"
            );
            first_token += sentence_length;
        }
    }

    #[test]
    fn attention_rejects_wrong_token_count() {
        let qkv = Tensor::zeros((4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let error = qkv
            .apply_op1_no_bwd(&Attention {
                sentence_lengths: &[2, 3],
                heads: 1,
                head_size: 2,
            })
            .unwrap_err();
        assert!(
            error.to_string().contains("invalid attention input"),
            "{error}"
        );
    }
}
