//! Building blocks shared by the SAM 2 modules: linear layers, norms, the official `MLP`,
//! convolutions with fast paths for the shapes SAM 2 uses, and attention.
//!
//! Every layer loads its parameters under the official attribute names (`weight`, `bias`), so a
//! module's `vb.pp("...")` path is its checkpoint key.

use candle_core::{D, DType, Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::kernels::{
    Conv2dTaps, Conv2dUnfold, DepthwiseConv2d, Epilogue, FusedAttention, FusedLinear, FusedMlp,
    GeluErf, LayerNormChannels, LayerNormLastDim, PixelShuffle2x2,
};

/// `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    span: tracing::Span,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        let span = tracing::span!(tracing::Level::TRACE, "linear", in_dim, out_dim);
        Ok(Self { weight, bias, span })
    }

    /// [out, in]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[out]`
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Linear {
    /// `activation(linear(x))`, fused into one pass over the output on the CPU.
    pub fn forward_activated(&self, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
        let _enter = self.span.enter();
        // Fold all leading dims into one so a single GEMM runs, whatever the rank.
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap();
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
            x2.contiguous()?.apply_op3_no_bwd(
                &self.weight,
                &self.bias,
                &FusedLinear {
                    epilogue: Activation::epilogue(activation),
                },
            )?
        } else {
            let y = x2.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
            match activation {
                Some(a) => a.forward(&y)?,
                None => y,
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_activated(x, None)
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            return x.apply_op3_no_bwd(
                &self.weight,
                &self.bias,
                &LayerNormLastDim {
                    eps: self.eps as f32,
                },
            );
        }
        // Two-pass in f32 on other devices and dtypes.
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `LayerNorm2d` (sam2_utils): LayerNorm over the channels of an NCHW map, eps 1e-6.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    norm: LayerNorm,
}

impl LayerNorm2d {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(channels, 1e-6, vb)?,
        })
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = LayerNormChannels {
                eps: self.norm.eps as f32,
            };
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.norm.weight, &self.norm.bias, &op);
        }
        x.permute((0, 2, 3, 1))?
            .apply(&self.norm)?
            .permute((0, 3, 1, 2))
    }
}

/// The activations the official modules use. GELU is the exact (erf) one, as `nn.GELU()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
}

impl Activation {
    /// The CPU kernels' in-place form of an optional activation.
    fn epilogue(activation: Option<Self>) -> Epilogue {
        match activation {
            None => Epilogue::None,
            Some(Activation::Relu) => Epilogue::Relu,
            Some(Activation::Gelu) => Epilogue::Gelu,
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "relu" => Ok(Self::Relu),
            "gelu" => Ok(Self::Gelu),
            other => bail!("activation {other:?} is not supported"),
        }
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => gelu(x),
        }
    }
}

/// `nn.GELU()`: the exact (erf) form, not candle's `gelu` (the tanh approximation).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// `MLP` (sam2_utils): `layers.{i}` linear layers with an activation between them.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
    sigmoid_output: bool,
    span: tracing::Span,
}

impl Mlp {
    pub fn new(
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        num_layers: usize,
        activation: Activation,
        sigmoid_output: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..num_layers)
            .map(|i| {
                let in_dim = if i == 0 { input_dim } else { hidden_dim };
                let out_dim = if i + 1 == num_layers {
                    output_dim
                } else {
                    hidden_dim
                };
                Linear::new(in_dim, out_dim, vb.pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        let span = tracing::span!(tracing::Level::TRACE, "mlp");
        Ok(Self {
            layers,
            activation,
            sigmoid_output,
            span,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut x = x.clone();
        if let [fc1, fc2] = self.layers.as_slice() {
            x = mlp2(&x, fc1, fc2, self.activation)?;
        } else {
            for (i, layer) in self.layers.iter().enumerate() {
                let hidden = i + 1 < self.layers.len();
                x = layer.forward_activated(&x, hidden.then_some(self.activation))?;
            }
        }
        if self.sigmoid_output {
            x = candle_nn::ops::sigmoid(&x)?;
        }
        Ok(x)
    }
}

/// `fc2(activation(fc1(x)))` over the last dimension. On the CPU in f32 it runs a block of rows
/// at a time, so the 4×-wide hidden layer never leaves the cache.
pub fn mlp2(x: &Tensor, fc1: &Linear, fc2: &Linear, activation: Activation) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return fc2.forward(&fc1.forward_activated(x, Some(activation))?);
    }
    let dims = x.dims().to_vec();
    let in_dim = dims.last().copied().unwrap_or(1).max(1);
    let op = FusedMlp {
        fc1: (&fc1.weight, &fc1.bias),
        fc2: (&fc2.weight, &fc2.bias),
        activation: Activation::epilogue(Some(activation)),
    };
    let y = x
        .reshape((x.elem_count() / in_dim, in_dim))?
        .contiguous()?
        .apply_op1_no_bwd(&op)?;
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = fc2.weight.dim(0)?;
    y.reshape(out_dims)
}

/// `nn.Conv2d`, NCHW, with fast paths for the shapes SAM 2 uses: 1×1 convolutions and
/// non-overlapping patch convolutions (kernel = stride) as matrix products, depthwise
/// convolutions as one pass, other stride-1 convolutions (mask refinement's 3×3) as one product
/// per kernel tap, strided ones (Hiera's patch embedding, the mask downsampler) as one product of
/// the unfolded input; grouped convolutions elsewhere, and other devices, go to candle's.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    span: tracing::Span,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get(
            (out_channels, in_channels / groups, kernel, kernel),
            "weight",
        )?;
        let bias = vb.get(out_channels, "bias")?;
        let span = tracing::span!(tracing::Level::TRACE, "conv2d", kernel, stride);
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            groups,
            span,
        })
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        y.broadcast_add(&self.bias.reshape((1, self.bias.dim(0)?, 1, 1))?)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c_in, h, w) = x.dims4()?;
        let (c_out, _, kh, kw) = self.weight.dims4()?;
        if self.groups == 1 && kh == 1 && kw == 1 && self.padding == 0 && self.stride == 1 {
            // 1×1: [C_out, C_in] @ [B, C_in, H*W], straight in NCHW with no transposes.
            let y = self
                .weight
                .reshape((1, c_out, c_in))?
                .broadcast_matmul(&x.reshape((b, c_in, h * w))?)?
                .reshape((b, c_out, h, w))?;
            return self.add_bias(y);
        }
        if self.groups == 1 && kh == kw && self.padding == 0 && kh == self.stride {
            let k = kh;
            if h % k == 0 && w % k == 0 {
                let (oh, ow) = (h / k, w / k);
                // Patches as rows: [B*oh*ow, C_in*k*k] @ [C_in*k*k, C_out].
                let patches = x
                    .reshape((b, c_in, oh, k, ow, k))?
                    .permute((0, 2, 4, 1, 3, 5))?
                    .reshape((b * oh * ow, c_in * k * k))?;
                let wmat = self.weight.reshape((c_out, c_in * k * k))?;
                let y = patches
                    .matmul(&wmat.t()?)?
                    .reshape((b, oh, ow, c_out))?
                    .permute((0, 3, 1, 2))?;
                return self.add_bias(y);
            }
        }
        if self.groups > 1 && self.groups == c_in && self.groups == c_out && self.stride == 1 {
            let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
                x.contiguous()?.apply_op2_no_bwd(
                    &self.weight.contiguous()?,
                    &DepthwiseConv2d {
                        padding: self.padding,
                    },
                )?
            } else {
                depthwise_by_shifts(x, &self.weight, self.padding)?
            };
            return self.add_bias(y);
        }
        if self.groups == 1 && x.device().is_cpu() && x.dtype() == DType::F32 {
            let (x, weight) = (x.contiguous()?, self.weight.contiguous()?);
            let padding = self.padding;
            let y = if self.stride == 1 {
                x.apply_op2_no_bwd(&weight, &Conv2dTaps { padding })?
            } else {
                let stride = self.stride;
                x.apply_op2_no_bwd(&weight, &Conv2dUnfold { stride, padding })?
            };
            return self.add_bias(y);
        }
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, self.groups)?;
        self.add_bias(y)
    }
}

/// Depthwise convolution as a sum of shifted, per-channel-scaled copies (any device).
fn depthwise_by_shifts(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let (oh, ow) = (h + 2 * padding - kh + 1, w + 2 * padding - kw + 1);
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        for kx in 0..kw {
            let tap = weight
                .narrow(2, ky, 1)?
                .narrow(3, kx, 1)?
                .reshape((1, c, 1, 1))?;
            let term = xp
                .narrow(2, ky, oh)?
                .narrow(3, kx, ow)?
                .broadcast_mul(&tap)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty depthwise kernel".into()))
}

/// `nn.ConvTranspose2d(kernel_size=2, stride=2)`: non-overlapping, so one matrix product then a
/// pixel shuffle. (candle's transposed convolution is a direct loop, slow on every device.)
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    /// The weight as the product's left matrix, [1, C_out·4, C_in] (rows: channel, ky, kx),
    /// laid out once at load.
    wmat: Tensor,
    bias: Tensor,
    span: tracing::Span,
}

impl ConvTranspose2x2 {
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        // PyTorch's transposed-conv weight layout is [in, out, kh, kw].
        let weight = vb.get((in_channels, out_channels, 2, 2), "weight")?;
        let wmat = weight
            .reshape((in_channels, out_channels * 4))?
            .t()?
            .contiguous()?
            .unsqueeze(0)?;
        let bias = vb.get(out_channels, "bias")?;
        let span = tracing::span!(tracing::Level::TRACE, "conv_transpose2x2");
        Ok(Self { wmat, bias, span })
    }
}

impl Module for ConvTranspose2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c_in, h, w) = x.dims4()?;
        // [C_out·4, C_in] @ [B, C_in, H·W] in NCHW, then one pixel-shuffle copy.
        let y = self.wmat.broadcast_matmul(&x.reshape((b, c_in, h * w))?)?;
        if y.device().is_cpu() && y.dtype() == DType::F32 {
            let shuffle = PixelShuffle2x2 {
                height: h,
                width: w,
            };
            return y.contiguous()?.apply_op2_no_bwd(&self.bias, &shuffle);
        }
        pixel_shuffle_2x2(&y, &self.bias, h, w)
    }
}

/// The transposed convolution's product [B, C·4, H·W] (rows: channel, ky, kx) to the image
/// [B, C, 2H, 2W] plus the bias, in tensor operations: any device, and the reference of the CPU
/// kernel `PixelShuffle2x2`.
pub(crate) fn pixel_shuffle_2x2(y: &Tensor, bias: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c) = (y.dim(0)?, bias.dim(0)?);
    y.reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, 2 * h, 2 * w))?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)
}

/// An `nn.Embedding(n, dim)` table, used whole (SAM 2 never looks its rows up by index).
pub fn embedding_table(n: usize, dim: usize, vb: VarBuilder) -> Result<Tensor> {
    vb.get((n, dim), "weight")
}

/// Above this many attention scores at once, queries are processed in chunks, so that memory
/// attention over tens of thousands of keys never materialises the whole score matrix.
const MAX_SCORES_PER_CHUNK: usize = 1 << 25;

/// `F.scaled_dot_product_attention(q, k, v)` without mask or dropout: q [.., N, D], k/v [.., M, D].
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let rank = q.rank();
    let n = q.dim(rank - 2)?;
    let d = q.dim(rank - 1)?;
    let m = k.dim(rank - 2)?;
    let dv = v.dim(rank - 1)?;
    let lead = q.dims()[..rank - 2].to_vec();
    let batch: usize = lead.iter().product();
    let scale = 1.0 / (d as f64).sqrt();
    if q.device().is_cpu() && q.dtype() == DType::F32 && m > 0 {
        let op = FusedAttention {
            scale: scale as f32,
        };
        let out = q.reshape((batch, n, d))?.contiguous()?.apply_op3_no_bwd(
            &k.reshape((batch, m, d))?.contiguous()?,
            &v.reshape((batch, m, dv))?.contiguous()?,
            &op,
        )?;
        let mut dims = lead;
        dims.extend([n, dv]);
        return out.reshape(dims);
    }
    let kt = k.transpose(rank - 2, rank - 1)?.contiguous()?;
    let v = v.contiguous()?;
    let chunk = (MAX_SCORES_PER_CHUNK / (m * batch).max(1)).clamp(1, n.max(1));
    let attend = |q: &Tensor| -> Result<Tensor> {
        let scores = (q.contiguous()?.matmul(&kt)? * scale)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)
    };
    if chunk >= n {
        return attend(q);
    }
    let parts = (0..n)
        .step_by(chunk)
        .map(|start| attend(&q.narrow(rank - 2, start, chunk.min(n - start))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, rank - 2)
}
