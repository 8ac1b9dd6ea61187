//! The BERT encoder of all-MiniLM-L6-v2, arranged for CPU throughput.
//!
//! It computes what `candle_transformers::models::bert::BertModel` computes
//! for this model, on the same weights, with the work arranged for few
//! cores. The query, key and value projections run as one matrix product,
//! and the attention scale is folded into the query weights. Each bias is
//! applied together with what follows it (the GELU activation, or the
//! residual sum before layer norm) in one pass over the rows on the rayon
//! threads, because candle's element-wise operators run on one thread.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::error::{NlpError, Result};

/// Rows handed to one rayon task; large enough that scheduling is cheap.
const ROWS_PER_TASK: usize = 16;

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
    /// Query, key and value weights stacked, `(3 * hidden, hidden)`.
    qkv_weight: Tensor,
    qkv_bias: Vec<f32>,
    output_weight: Tensor,
    output_bias: Vec<f32>,
    attention_norm: LayerNorm,
    intermediate_weight: Tensor,
    intermediate_bias: Vec<f32>,
    down_weight: Tensor,
    down_bias: Vec<f32>,
    output_norm: LayerNorm,
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
            let qkv_weight = Tensor::cat(&[(query_weight * scale)?, key_weight, value_weight], 0)?
                .contiguous()?;
            let qkv_bias =
                Tensor::cat(&[(query_bias * scale)?, key_bias, value_bias], 0)?.to_vec1()?;

            let output = attention.pp("output");
            let output_weight = output.pp("dense").get((hidden, hidden), "weight")?;
            let output_bias = output.pp("dense").get(hidden, "bias")?.to_vec1()?;
            let attention_norm = layer_norm(output.pp("LayerNorm"), hidden, eps)?;

            let intermediate = layer.pp("intermediate").pp("dense");
            let intermediate_weight =
                intermediate.get((config.intermediate_size, hidden), "weight")?;
            let intermediate_bias = intermediate
                .get(config.intermediate_size, "bias")?
                .to_vec1()?;
            let down = layer.pp("output");
            let down_weight = down
                .pp("dense")
                .get((hidden, config.intermediate_size), "weight")?;
            let down_bias = down.pp("dense").get(hidden, "bias")?.to_vec1()?;
            let output_norm = layer_norm(down.pp("LayerNorm"), hidden, eps)?;
            layers.push(Layer {
                qkv_weight,
                qkv_bias,
                output_weight,
                output_bias,
                attention_norm,
                intermediate_weight,
                intermediate_bias,
                down_weight,
                down_bias,
                output_norm,
            });
        }
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
    /// `(rows, length, hidden)`.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (rows, length) = ids.dims2()?;
        let hidden = self.hidden_size;
        let tokens = rows * length;

        let words = self.word_embeddings.index_select(&ids.flatten_all()?, 0)?;
        let positions = self
            .position_embeddings
            .narrow(0, 0, length)?
            .broadcast_add(&self.token_type_embedding)?;
        let embedded = words
            .reshape((rows, length, hidden))?
            .broadcast_add(&positions.unsqueeze(0)?)?
            .reshape((tokens, hidden))?;
        let mut states = self.embedding_norm.forward(&embedded)?;

        let real_keys: Vec<bool> = mask
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|flag| flag != 0)
            .collect();

        for layer in &self.layers {
            states = self.layer_forward(layer, &states, &real_keys, rows, length)?;
        }
        Ok(states.reshape((rows, length, hidden))?)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        states: &Tensor,
        real_keys: &[bool],
        rows: usize,
        length: usize,
    ) -> Result<Tensor> {
        let (heads, head_size, hidden) = (self.heads, self.head_size, self.hidden_size);
        let tokens = rows * length;

        let qkv = states.matmul(&layer.qkv_weight.t()?)?;
        qkv.inplace_op1(&AddBias {
            bias: &layer.qkv_bias,
            gelu: false,
        })?;
        // (tokens, 3 * hidden) to (3, rows, heads, length, head_size).
        let qkv = qkv
            .reshape((rows, length, 3, heads, head_size))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let query = qkv.get(0)?;
        let key = qkv.get(1)?;
        let value = qkv.get(2)?;
        let weights = query.matmul(&key.t()?)?;
        weights.inplace_op1(&MaskedSoftmax {
            real_keys,
            heads,
            length,
        })?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((tokens, hidden))?;

        let attended = context.matmul(&layer.output_weight.t()?)?;
        attended.inplace_op2(
            states,
            &AddBiasResidual {
                bias: &layer.output_bias,
            },
        )?;
        let attended = layer.attention_norm.forward(&attended)?;

        let intermediate = attended.matmul(&layer.intermediate_weight.t()?)?;
        intermediate.inplace_op1(&AddBias {
            bias: &layer.intermediate_bias,
            gelu: true,
        })?;
        let output = intermediate.matmul(&layer.down_weight.t()?)?;
        output.inplace_op2(
            &attended,
            &AddBiasResidual {
                bias: &layer.down_bias,
            },
        )?;
        Ok(layer.output_norm.forward(&output)?)
    }
}

/// Returns the contiguous `f32` values of an in-place operand.
fn rows_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    width: usize,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("expected f32 values");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected contiguous values");
    };
    if width == 0 || !(end - start).is_multiple_of(width) {
        candle_core::bail!("{} values do not form rows of {width}", end - start);
    }
    Ok(&mut values[start..end])
}

/// Adds a bias to every row, then applies the exact GELU if `gelu`.
struct AddBias<'a> {
    bias: &'a [f32],
    gelu: bool,
}

impl InplaceOp1 for AddBias<'_> {
    fn name(&self) -> &'static str {
        if self.gelu {
            "add-bias-gelu"
        } else {
            "add-bias"
        }
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let width = self.bias.len();
        let values = rows_mut(storage, layout, width)?;
        values
            .par_chunks_mut(width * ROWS_PER_TASK)
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(width) {
                    for (value, bias) in row.iter_mut().zip(self.bias) {
                        *value += bias;
                    }
                    if self.gelu {
                        for value in row.iter_mut() {
                            *value = gelu(*value);
                        }
                    }
                }
            });
        Ok(())
    }
}

/// Softmax over attention scores `(rows, heads, length, length)` in place,
/// restricted to the keys that `real_keys` (`rows * length`) marks as real
/// tokens, so padding keys get weight 0. It makes one pass, where a mask
/// addition and a softmax would each write a new scores tensor.
struct MaskedSoftmax<'a> {
    real_keys: &'a [bool],
    heads: usize,
    length: usize,
}

impl InplaceOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let length = self.length;
        let values = rows_mut(storage, layout, length)?;
        let block = length * length;
        if values.len() != self.real_keys.len() * self.heads * length {
            candle_core::bail!(
                "invalid attention shape: {} scores for {} keys and {} heads",
                values.len(),
                self.real_keys.len(),
                self.heads
            );
        }
        values
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(index, block)| {
                let row = index / self.heads;
                let keys = &self.real_keys[row * length..(row + 1) * length];
                for scores in block.chunks_exact_mut(length) {
                    masked_softmax(scores, keys);
                }
            });
        Ok(())
    }
}

/// Replaces `scores` with their softmax over the positions `keys` marks, and 0 elsewhere.
fn masked_softmax(scores: &mut [f32], keys: &[bool]) {
    let max = scores
        .iter()
        .zip(keys)
        .filter(|(_, real)| **real)
        .map(|(score, _)| *score)
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        scores.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for (score, real) in scores.iter_mut().zip(keys) {
        *score = if *real { (*score - max).exp() } else { 0.0 };
        sum += *score;
    }
    let scale = 1.0 / sum;
    for score in scores.iter_mut() {
        *score *= scale;
    }
}

/// Adds a bias and the matching row of a residual tensor to every row.
struct AddBiasResidual<'a> {
    bias: &'a [f32],
}

impl InplaceOp2 for AddBiasResidual<'_> {
    fn name(&self) -> &'static str {
        "add-bias-residual"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<()> {
        let width = self.bias.len();
        let values = rows_mut(storage, layout, width)?;
        let CpuStorage::F32(residual) = residual else {
            candle_core::bail!("expected f32 residual values");
        };
        let Some((start, end)) = residual_layout.contiguous_offsets() else {
            candle_core::bail!("expected a contiguous residual");
        };
        let residual = &residual[start..end];
        if residual.len() != values.len() {
            candle_core::bail!(
                "residual has {} values, expected {}",
                residual.len(),
                values.len()
            );
        }
        values
            .par_chunks_mut(width * ROWS_PER_TASK)
            .zip(residual.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(chunk, residual)| {
                for (row, residual_row) in chunk
                    .chunks_exact_mut(width)
                    .zip(residual.chunks_exact(width))
                {
                    for ((value, bias), residual) in row.iter_mut().zip(self.bias).zip(residual_row)
                    {
                        *value += bias + residual;
                    }
                }
            });
        Ok(())
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
    (1.0 - series * (-a * a).exp()).copysign(x)
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
    fn masked_softmax_ignores_padding_keys() {
        let mut scores = [1.0f32, 2.0, 3.0, 100.0];
        masked_softmax(&mut scores, &[true, true, true, false]);
        let total: f32 = (1.0f32).exp() + (2.0f32).exp() + (3.0f32).exp();
        assert!((scores[0] - (1.0f32).exp() / total).abs() < 1e-6);
        assert!((scores[2] - (3.0f32).exp() / total).abs() < 1e-6);
        assert_eq!(scores[3], 0.0);
        let mut none = [1.0f32, 2.0];
        masked_softmax(&mut none, &[false, false]);
        assert_eq!(none, [0.0, 0.0]);
    }

    #[test]
    fn bias_and_residual_are_added_per_row() {
        let values = Tensor::new(
            &[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let residual = Tensor::new(
            &[[10.0f32, 20.0], [30.0, 40.0], [50.0, 60.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        values
            .inplace_op2(&residual, &AddBiasResidual { bias: &[0.5, -0.5] })
            .unwrap();
        assert_eq!(
            values.to_vec2::<f32>().unwrap(),
            vec![vec![11.5, 21.5], vec![33.5, 43.5], vec![55.5, 65.5]]
        );
        values
            .inplace_op1(&AddBias {
                bias: &[1.0, 1.0],
                gelu: false,
            })
            .unwrap();
        assert_eq!(values.to_vec2::<f32>().unwrap()[0], vec![12.5, 22.5]);
    }
}
