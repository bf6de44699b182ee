//! `SAM2Base` (`sam2/modeling/sam2_base.py`): the network, and one tracking step as a function.
//!
//! The official class is both the network and the tracker: it picks memories from frame
//! indices in a dict of past outputs. Here the network stops at the step: the caller (the
//! tracker, or a test replaying an official schedule) hands in the memories and pointers to use,
//! each with its temporal slot or frame distance, and keeps what the step returns.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::backbones::image_encoder::ImageEncoder;
use super::config::Sam2Config;
use super::memory_attention::MemoryAttention;
use super::memory_encoder::MemoryEncoder;
use super::nn::{Activation, Conv2d, Linear, Mlp};
use super::position_encoding::sine_pe_1d;
use super::refiner::crops::{CELL, stride2_local};
use super::refiner::{MemoryMask, RefineStep, RefinedMasks};
use super::resample::{Filter, Resampler, resample};
use super::sam::mask_decoder::{MaskDecoder, MaskDecoderOptions};
use super::sam::prompt_encoder::{PointInputs, PromptEncoder};

/// Logit given to every pixel of a frame where the object is judged absent.
pub const NO_OBJ_SCORE: f64 = -1024.0;

/// One frame's image features, shared by every object tracked on it (batch 1).
#[derive(Debug, Clone)]
pub struct FrameFeatures {
    /// FPN levels, highest resolution first; with high-res features on, levels 0 and 1 have
    /// been through the decoder's `conv_s0`/`conv_s1` (`forward_image`).
    pub backbone_fpn: Vec<Tensor>,
    /// Sine position encodings of the levels, [1, C, h, w].
    pub vision_pos_enc: Vec<Tensor>,
}

impl FrameFeatures {
    /// The image embedding [1, C, h, w] (lowest resolution level).
    pub fn vision_features(&self) -> &Tensor {
        self.backbone_fpn.last().expect("at least one level")
    }

    pub fn vision_pos(&self) -> &Tensor {
        self.vision_pos_enc.last().expect("at least one level")
    }

    /// (feat_s0, feat_s1) for the decoder's high-resolution skips, when the model uses them.
    pub fn high_res(&self, levels: usize) -> Option<(&Tensor, &Tensor)> {
        (levels == 3).then(|| {
            let n = self.backbone_fpn.len();
            (&self.backbone_fpn[n - 3], &self.backbone_fpn[n - 2])
        })
    }
}

/// Everything `_forward_sam_heads` returns.
#[derive(Debug, Clone)]
pub struct SamHeadsOutput {
    /// [B, M, 4h, 4w], with `NO_OBJ_SCORE` where the object is absent.
    pub low_res_multimasks: Tensor,
    /// [B, M, S, S]
    pub high_res_multimasks: Tensor,
    /// [B, M]
    pub ious: Tensor,
    /// The chosen mask: [B, 1, 4h, 4w] and [B, 1, S, S].
    pub low_res_masks: Tensor,
    pub high_res_masks: Tensor,
    /// The chosen mask's IoU, [B, 1].
    pub iou: Tensor,
    /// [B, C]
    pub obj_ptr: Tensor,
    /// [B, 1]
    pub object_score_logits: Tensor,
    /// With a refiner: the chosen mask refined (its logits at S: `NO_OBJ_SCORE` where absent).
    pub refined_masks: Option<RefinedMasks>,
}

/// A spatial memory of one object handed to a tracking step.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRef<'a> {
    /// `maskmem_features`, [1, Cm, h, w], in any float dtype (the official predictor stores
    /// them in bf16; they are read back in the model's dtype).
    pub features: &'a Tensor,
    /// `maskmem_pos_enc`, [1, Cm, h, w].
    pub pos_enc: &'a Tensor,
    /// The official `t_pos`: 0 for conditioning frames, `num_maskmem - k` for the frame `k`
    /// frames back (so 1..num_maskmem-1). It picks the row of `maskmem_tpos_enc`.
    pub t_pos: usize,
}

/// An object pointer of one object handed to a tracking step.
#[derive(Debug, Clone, Copy)]
pub struct PointerRef<'a> {
    /// `obj_ptr`, [1, C].
    pub pointer: &'a Tensor,
    /// Frame distance to the current frame (signed `current - t` when the config says
    /// `use_signed_tpos_enc_to_obj_ptrs`, else its absolute value).
    pub distance: i64,
}

/// What one object's tracking step reads from its memory bank, in the official order
/// (conditioning frames first, for memories and for pointers).
#[derive(Debug, Clone, Default)]
pub struct ObjectMemory<'a> {
    pub memories: Vec<MemoryRef<'a>>,
    pub pointers: Vec<PointerRef<'a>>,
}

/// The inputs of one tracking step for a batch of B objects on one frame.
#[derive(Debug, Clone)]
pub struct TrackStepInput<'a> {
    pub features: &'a FrameFeatures,
    /// A frame with a first prompt: no memory is read.
    pub is_init_cond_frame: bool,
    /// Each object's memories and pointers (one entry per object of the batch; ignored on an
    /// initial conditioning frame). Objects batched together must have as many memories and
    /// pointers as each other; their slots and distances may differ.
    pub objects: &'a [ObjectMemory<'a>],
    /// The pointer distance that maps to 1 in the temporal encoding (`max_obj_ptrs - 1`).
    pub max_pointer_distance: usize,
    pub points: Option<&'a PointInputs>,
    /// A mask prompt [B, 1, S, S] (0/1 or probabilities).
    pub mask_input: Option<&'a Tensor>,
    /// A correction's previous low-res logits [B, 1, 4h, 4w], fed as the mask prompt.
    pub prev_mask_logits: Option<&'a Tensor>,
    pub run_mem_encoder: bool,
    /// Number of objects (the batch); features are shared and broadcast to it.
    pub batch: usize,
    /// With a refiner: its modules run in the SAM heads, and the memory is encoded from the
    /// mask its options name.
    pub refine: Option<RefineStep<'a>>,
}

/// What a tracking step returns (`track_step`'s `current_out`, plus the IoU).
#[derive(Debug, Clone)]
pub struct TrackStepOutput {
    pub heads: SamHeadsOutput,
    /// The new memory (`maskmem_features` [B, Cm, h, w], `maskmem_pos_enc` [1, Cm, h, w]).
    pub memory: Option<(Tensor, Tensor)>,
}

#[derive(Debug)]
enum PointerProjection {
    Linear(Linear),
    Mlp(Mlp),
}

#[derive(Debug)]
pub struct Sam2Base {
    pub config: Sam2Config,
    pub image_encoder: ImageEncoder,
    pub sam_prompt_encoder: PromptEncoder,
    pub sam_mask_decoder: MaskDecoder,
    pub memory_attention: MemoryAttention,
    pub memory_encoder: MemoryEncoder,
    /// [num_maskmem, 1, 1, Cm]
    maskmem_tpos_enc: Option<Tensor>,
    /// [1, 1, C]
    no_mem_embed: Tensor,
    no_mem_pos_enc: Tensor,
    /// [1, C]
    no_obj_ptr: Option<Tensor>,
    /// [1, Cm]
    no_obj_embed_spatial: Option<Tensor>,
    mask_downsample: Option<Conv2d>,
    obj_ptr_proj: Option<PointerProjection>,
    obj_ptr_tpos_proj: Option<Linear>,
    /// Low-res logits (4h) to the model's input size S.
    upsample_to_input: Resampler,
    dtype: DType,
    device: Device,
}

impl Sam2Base {
    /// Builds the network from a `VarBuilder` whose keys are the official state-dict keys.
    pub fn new(config: &Sam2Config, vb: VarBuilder) -> Result<Self> {
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let c = config.hidden_dim();
        let m = config.mem_dim();
        let s = config.image_size;
        let e = config.image_embedding_size();
        let image_encoder =
            ImageEncoder::new(&config.image_encoder, s, dtype, vb.pp("image_encoder"))?;
        let sam_prompt_encoder =
            PromptEncoder::new(c, (e, e), (s, s), 16, vb.pp("sam_prompt_encoder"))?;
        let sam_mask_decoder = MaskDecoder::new(
            c,
            MaskDecoderOptions {
                use_high_res_features: config.use_high_res_features_in_sam,
                iou_prediction_use_sigmoid: config.iou_prediction_use_sigmoid,
                pred_obj_scores: config.pred_obj_scores,
                pred_obj_scores_mlp: config.pred_obj_scores_mlp,
                use_multimask_token_for_obj_ptr: config.use_multimask_token_for_obj_ptr,
                extra: config.mask_decoder_extra(),
            },
            vb.pp("sam_mask_decoder"),
        )?;
        let memory_attention =
            MemoryAttention::new(&config.memory_attention, vb.pp("memory_attention"))?;
        let memory_encoder =
            MemoryEncoder::new(&config.memory_encoder, e, dtype, vb.pp("memory_encoder"))?;
        let use_ptrs = config.use_obj_ptrs_in_encoder;
        let obj_ptr_proj = match (use_ptrs, config.use_mlp_for_obj_ptr_proj) {
            (false, _) => None,
            (true, false) => Some(PointerProjection::Linear(Linear::new(
                c,
                c,
                vb.pp("obj_ptr_proj"),
            )?)),
            (true, true) => Some(PointerProjection::Mlp(Mlp::new(
                c,
                c,
                c,
                3,
                Activation::Relu,
                false,
                vb.pp("obj_ptr_proj"),
            )?)),
        };
        Ok(Self {
            image_encoder,
            sam_prompt_encoder,
            sam_mask_decoder,
            memory_attention,
            memory_encoder,
            maskmem_tpos_enc: if config.num_maskmem > 0 {
                Some(vb.get((config.num_maskmem, 1, 1, m), "maskmem_tpos_enc")?)
            } else {
                None
            },
            no_mem_embed: vb.get((1, 1, c), "no_mem_embed")?,
            no_mem_pos_enc: vb.get((1, 1, c), "no_mem_pos_enc")?,
            no_obj_ptr: if config.pred_obj_scores && use_ptrs {
                Some(vb.get((1, c), "no_obj_ptr")?)
            } else {
                None
            },
            no_obj_embed_spatial: if config.no_obj_embed_spatial {
                Some(vb.get((1, m), "no_obj_embed_spatial")?)
            } else {
                None
            },
            mask_downsample: if use_ptrs {
                Some(Conv2d::new(1, 1, 4, 4, 0, 1, vb.pp("mask_downsample"))?)
            } else {
                None
            },
            obj_ptr_proj,
            obj_ptr_tpos_proj: if config.proj_tpos_enc_in_obj_ptrs {
                Some(Linear::new(c, m, vb.pp("obj_ptr_tpos_proj"))?)
            } else {
                None
            },
            upsample_to_input: Resampler::new(Filter::Bilinear, (4 * e, 4 * e), (s, s), &device)?,
            config: config.clone(),
            dtype,
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `forward_image`: a normalised image batch [B, 3, S, S] -> features.
    pub fn forward_image(&self, image: &Tensor) -> Result<FrameFeatures> {
        let image = image.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut out = self.image_encoder.forward(&image)?;
        if self.config.use_high_res_features_in_sam
            && let (Some(s0), Some(s1)) = (
                &self.sam_mask_decoder.conv_s0,
                &self.sam_mask_decoder.conv_s1,
            )
        {
            out.backbone_fpn[0] = s0.forward(&out.backbone_fpn[0])?;
            out.backbone_fpn[1] = s1.forward(&out.backbone_fpn[1])?;
        }
        Ok(FrameFeatures {
            backbone_fpn: out.backbone_fpn,
            vision_pos_enc: out.vision_pos_enc,
        })
    }

    /// `no_mem_embed`, [1, 1, C]: the image predictor adds it to the image embedding.
    pub fn no_mem_embed(&self) -> &Tensor {
        &self.no_mem_embed
    }

    /// `_use_multimask`: three candidate masks on ambiguous prompts (0 or 1 clicks by default).
    pub fn use_multimask(&self, is_init_cond_frame: bool, num_points: usize) -> bool {
        let c = &self.config;
        c.multimask_output_in_sam
            && (is_init_cond_frame || c.multimask_output_for_tracking)
            && (c.multimask_min_pt_num..=c.multimask_max_pt_num).contains(&num_points)
    }

    /// `_forward_sam_heads`: prompt encoder and mask decoder on (memory-conditioned) features;
    /// with `refine`, the refiner's modules in between (`models/refiner/video_path.py`).
    pub fn forward_sam_heads(
        &self,
        backbone_features: &Tensor,
        points: Option<&PointInputs>,
        mask_inputs: Option<&Tensor>,
        high_res_features: Option<(&Tensor, &Tensor)>,
        multimask_output: bool,
        refine: Option<&RefineStep>,
    ) -> Result<SamHeadsOutput> {
        let b = backbone_features.dim(0)?;
        let padding;
        let points = match points {
            Some(p) => p,
            None => {
                // No clicks: a single padding point, as the official code does.
                padding = PointInputs {
                    coords: Tensor::zeros((b, 1, 2), self.dtype, &self.device)?,
                    labels: Tensor::full(-1f32, (b, 1), &self.device)?,
                };
                &padding
            }
        };
        let mask_prompt = match mask_inputs {
            Some(m) => {
                let (mh, mw) = self.sam_prompt_encoder.mask_input_size();
                let (_, _, h, w) = m.dims4()?;
                Some(if (h, w) != (mh, mw) {
                    resample(&m.to_dtype(self.dtype)?, Filter::BilinearAntialias, mh, mw)?
                } else {
                    m.to_dtype(self.dtype)?
                })
            }
            None => None,
        };
        let (sparse, dense) = self
            .sam_prompt_encoder
            .forward(Some(points), mask_prompt.as_ref())?;
        let enhanced = match refine {
            Some(step) => Some(self.enhance(
                step,
                backbone_features,
                high_res_features,
                (&sparse, &dense),
                points,
                mask_prompt.as_ref(),
            )?),
            None => None,
        };
        let (embedding, high_res, sparse, dense) = match &enhanced {
            Some([s0, s1, embedding, sparse, dense]) => (embedding, Some((s0, s1)), sparse, dense),
            None => (backbone_features, high_res_features, &sparse, &dense),
        };
        let decoded = self.sam_mask_decoder.forward(
            embedding,
            self.sam_prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask_output,
            false,
            high_res,
        )?;
        let mut low_res_multimasks = decoded.masks;
        let object_score_logits = decoded.object_score_logits;
        let is_obj_appearing = object_score_logits.gt(0.0)?;
        if self.config.pred_obj_scores {
            let absent = Tensor::full(NO_OBJ_SCORE, (), &self.device)?
                .to_dtype(low_res_multimasks.dtype())?
                .broadcast_as(low_res_multimasks.shape())?;
            low_res_multimasks = is_obj_appearing
                .reshape((b, 1, 1, 1))?
                .broadcast_as(low_res_multimasks.shape())?
                .where_cond(&low_res_multimasks, &absent)?;
        }
        let high_res_multimasks = self.upsample_to_input.apply(&low_res_multimasks)?;
        let ious = decoded.iou;
        let num_masks = low_res_multimasks.dim(1)?;
        let (low_res_masks, high_res_masks, iou, sam_token) = if multimask_output {
            let best = ious.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let pick = |t: &Tensor, i: usize| t.narrow(0, i, 1)?.narrow(1, best[i] as usize, 1);
            let tokens_per = decoded.sam_tokens.dim(1)?;
            let mut parts: [Vec<Tensor>; 4] = Default::default();
            for i in 0..b {
                parts[0].push(pick(&low_res_multimasks, i)?);
                parts[1].push(pick(&high_res_multimasks, i)?);
                parts[2].push(pick(&ious, i)?);
                parts[3].push(if tokens_per > 1 {
                    pick(&decoded.sam_tokens, i)?
                } else {
                    decoded.sam_tokens.narrow(0, i, 1)?.narrow(1, 0, 1)?
                });
            }
            let [l, h, io, t] = parts.map(|p| Tensor::cat(&p, 0));
            (l?, h?, io?, t?.squeeze(1)?)
        } else {
            debug_assert_eq!(num_masks, 1);
            (
                low_res_multimasks.clone(),
                high_res_multimasks.clone(),
                ious.clone(),
                decoded.sam_tokens.i((.., 0))?,
            )
        };
        let mut obj_ptr = match &self.obj_ptr_proj {
            Some(PointerProjection::Linear(l)) => l.forward(&sam_token)?,
            Some(PointerProjection::Mlp(m)) => m.forward(&sam_token)?,
            None => sam_token,
        };
        if self.config.pred_obj_scores {
            let lambda = if self.config.soft_no_obj_ptr {
                candle_nn::ops::sigmoid(&object_score_logits)?
            } else {
                is_obj_appearing.to_dtype(self.dtype)?
            };
            obj_ptr = self.blend_no_obj_ptr(obj_ptr, &lambda)?;
        }
        let refined_masks = match refine {
            Some(step) => {
                // Each object's local features on the stride-2 grid, and where they cover.
                let local = match step.locals {
                    Some(locals) => {
                        let (local_s2, coverage): (Vec<_>, Vec<_>) = locals
                            .iter()
                            .map(|l| stride2_local(l, self.config.image_size))
                            .collect::<Result<Vec<_>>>()?
                            .into_iter()
                            .unzip();
                        Some((Tensor::cat(&local_s2, 0)?, Tensor::cat(&coverage, 0)?))
                    }
                    None => None,
                };
                let refined = step.refiner.mask_refinement.forward(
                    &low_res_masks,
                    &decoded.upscaled,
                    &step
                        .image
                        .broadcast_as(step.image.dims4().map(|(_, c, h, w)| (b, c, h, w))?)?
                        .contiguous()?,
                    local.as_ref().map(|(l, c)| (l, c)),
                    step.pins,
                )?;
                let logits = &refined.logits;
                let absent = Tensor::full(NO_OBJ_SCORE, (), &self.device)?
                    .to_dtype(logits.dtype())?
                    .broadcast_as(logits.shape())?;
                let logits = is_obj_appearing
                    .reshape((b, 1, 1, 1))?
                    .broadcast_as(logits.shape())?
                    .where_cond(logits, &absent)?;
                Some(refined.with_logits(logits))
            }
            None => None,
        };
        Ok(SamHeadsOutput {
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            iou,
            obj_ptr,
            object_score_logits,
            refined_masks,
        })
    }

    /// Localization augment on each object's features with its own local features, then prompt
    /// retargeting: [feat_s0, feat_s1, image embedding, sparse, dense], enhanced.
    fn enhance(
        &self,
        step: &RefineStep,
        backbone_features: &Tensor,
        high_res_features: Option<(&Tensor, &Tensor)>,
        (sparse, dense): (&Tensor, &Tensor),
        points: &PointInputs,
        mask_prompt: Option<&Tensor>,
    ) -> Result<[Tensor; 5]> {
        let Some((s0, s1)) = high_res_features else {
            bail!(
                "the refiner needs a model with high-resolution features (use_high_res_features_in_sam)"
            );
        };
        // Localization augment, each object with its own local features; none without crops.
        let [s0, s1, embedding] = match step.locals {
            None if step.refiner.reads_crops() => {
                bail!("the refiner reads crops: local features expected")
            }
            None => [s0.clone(), s1.clone(), backbone_features.clone()],
            Some(locals) => {
                let b = backbone_features.dim(0)?;
                if locals.len() != b {
                    bail!("{} local features for a batch of {b}", locals.len());
                }
                let mut levels: [Vec<Tensor>; 3] = Default::default();
                for (i, local) in locals.iter().enumerate() {
                    let global = [
                        s0.narrow(0, i, 1)?,
                        s1.narrow(0, i, 1)?,
                        backbone_features.narrow(0, i, 1)?,
                    ];
                    let out = step.refiner.localization_augment.forward(&global, local)?;
                    for (level, t) in out.into_iter().enumerate() {
                        levels[level].push(t);
                    }
                }
                let [s0, s1, embedding] = levels.map(|l| Tensor::cat(&l, 0));
                [s0?, s1?, embedding?]
            }
        };
        let (sparse, dense) = step.refiner.prompt_retargeting.forward(
            sparse,
            dense,
            Some(points),
            &embedding,
            mask_prompt,
            CELL as f32,
        )?;
        Ok([s0, s1, embedding, sparse, dense])
    }

    /// `obj_ptr = λ·obj_ptr (fixed_no_obj_ptr) + (1-λ)·no_obj_ptr`, λ [B, 1] the appearance weight.
    fn blend_no_obj_ptr(&self, obj_ptr: Tensor, lambda: &Tensor) -> Result<Tensor> {
        let obj_ptr = if self.config.fixed_no_obj_ptr {
            obj_ptr.broadcast_mul(lambda)?
        } else {
            obj_ptr
        };
        match &self.no_obj_ptr {
            Some(no_obj) => obj_ptr + (1.0 - lambda)?.broadcast_mul(no_obj)?,
            None => Ok(obj_ptr),
        }
    }

    /// `_use_mask_as_output`: a mask prompt [B, 1, S, S] taken directly as the output (logits
    /// ±10), with the pointer from the SAM heads run on the downsampled mask.
    pub fn use_mask_as_output(
        &self,
        backbone_features: &Tensor,
        high_res_features: Option<(&Tensor, &Tensor)>,
        mask_inputs: &Tensor,
    ) -> Result<SamHeadsOutput> {
        let (out_scale, out_bias) = (20.0, -10.0);
        let mask = mask_inputs.to_dtype(self.dtype)?;
        let (b, _, h, w) = mask.dims4()?;
        let s = self.config.image_size;
        if (h, w) != (s, s) {
            bail!("a mask prompt must be {s}x{s} (the model input size), got {h}x{w}");
        }
        let high_res_masks = ((&mask * out_scale)? + out_bias)?;
        let low_res_masks = resample(&high_res_masks, Filter::BilinearAntialias, h / 4, w / 4)?;
        let ious = Tensor::ones((b, 1), self.dtype, &self.device)?;
        let obj_ptr = match &self.mask_downsample {
            None => Tensor::zeros((b, self.config.hidden_dim()), self.dtype, &self.device)?,
            Some(downsample) => {
                let small = downsample.forward(&mask)?;
                self.forward_sam_heads(
                    backbone_features,
                    None,
                    Some(&small),
                    high_res_features,
                    false,
                    None,
                )?
                .obj_ptr
            }
        };
        let lambda = mask
            .flatten_from(1)?
            .gt(0.0)?
            .max(1)?
            .to_dtype(self.dtype)?
            .unsqueeze(1)?;
        let object_score_logits = ((&lambda * out_scale)? + out_bias)?;
        let obj_ptr = if self.config.pred_obj_scores {
            self.blend_no_obj_ptr(obj_ptr, &lambda)?
        } else {
            obj_ptr
        };
        Ok(SamHeadsOutput {
            low_res_multimasks: low_res_masks.clone(),
            high_res_multimasks: high_res_masks.clone(),
            ious: ious.clone(),
            low_res_masks,
            high_res_masks,
            iou: ious,
            obj_ptr,
            object_score_logits,
            refined_masks: None,
        })
    }

    /// `_prepare_memory_conditioned_features`: the frame's image embedding fused with the given
    /// memories and pointers by memory attention, [B, C, h, w].
    pub fn prepare_memory_conditioned_features(&self, input: &TrackStepInput) -> Result<Tensor> {
        let b = input.batch;
        let vision = input.features.vision_features();
        let (_, c, h, w) = vision.dims4()?;
        let vision_b = vision.broadcast_as((b, c, h, w))?;
        if self.config.num_maskmem == 0 {
            return vision_b.contiguous();
        }
        let to_tokens = |x: &Tensor| -> Result<Tensor> {
            // [B', C, h, w] -> [B', h*w, C]
            x.flatten_from(2)?.transpose(1, 2)
        };
        let (memory, memory_pos, num_obj_ptr_tokens) = if input.is_init_cond_frame {
            if self.config.directly_add_no_mem_embed {
                let no_mem = self.no_mem_embed.reshape((1, c, 1, 1))?;
                return vision_b.broadcast_add(&no_mem);
            }
            let memory = self.no_mem_embed.broadcast_as((b, 1, c))?.contiguous()?;
            let memory_pos = self.no_mem_pos_enc.broadcast_as((b, 1, c))?.contiguous()?;
            (memory, memory_pos, 0)
        } else {
            self.assemble_memory(input)?
        };
        let curr = to_tokens(&vision_b)?.contiguous()?;
        let curr_pos = to_tokens(input.features.vision_pos())?
            .broadcast_as(curr.shape())?
            .contiguous()?;
        let out = self.memory_attention.forward(
            &curr,
            &memory,
            &curr_pos,
            &memory_pos,
            num_obj_ptr_tokens,
        )?;
        out.transpose(1, 2)?.reshape((b, c, h, w))
    }

    /// The memory tokens and their positions, [B, T, Cm], and the number of pointer tokens.
    fn assemble_memory(&self, input: &TrackStepInput) -> Result<(Tensor, Tensor, usize)> {
        if input.objects.len() != input.batch {
            bail!(
                "{} objects' memories for a batch of {}",
                input.objects.len(),
                input.batch
            );
        }
        let mut tokens = Vec::with_capacity(input.batch);
        let mut positions = Vec::with_capacity(input.batch);
        let mut num_ptr_tokens = None;
        for object in input.objects {
            let (t, p, n) = self.assemble_object_memory(object, input.max_pointer_distance)?;
            if num_ptr_tokens.is_some_and(|prev| prev != n)
                || tokens
                    .first()
                    .is_some_and(|f: &Tensor| f.dims() != t.dims())
            {
                bail!("objects batched in one step must have memory banks of the same size");
            }
            num_ptr_tokens = Some(n);
            tokens.push(t);
            positions.push(p);
        }
        Ok((
            Tensor::stack(&tokens, 0)?,
            Tensor::stack(&positions, 0)?,
            num_ptr_tokens.unwrap_or(0),
        ))
    }

    /// One object's memory tokens and positions, [T, Cm], and its number of pointer tokens.
    fn assemble_object_memory(
        &self,
        object: &ObjectMemory,
        max_pointer_distance: usize,
    ) -> Result<(Tensor, Tensor, usize)> {
        let c = self.config.hidden_dim();
        let m = self.config.mem_dim();
        let num_maskmem = self.config.num_maskmem;
        let tpos_table = self.maskmem_tpos_enc.as_ref().expect("num_maskmem > 0");
        // [1, Cm, h, w] -> [h·w, Cm]
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            t.to_dtype(self.dtype)?.flatten_from(2)?.squeeze(0)?.t()
        };
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for mem in &object.memories {
            if mem.t_pos >= num_maskmem {
                bail!(
                    "memory t_pos {} out of range (num_maskmem {num_maskmem})",
                    mem.t_pos
                );
            }
            let tpos = tpos_table.i(num_maskmem - mem.t_pos - 1)?.reshape((1, m))?;
            tokens.push(to_tokens(mem.features)?);
            positions.push(to_tokens(mem.pos_enc)?.broadcast_add(&tpos)?);
        }
        let mut num_obj_ptr_tokens = 0;
        if !object.pointers.is_empty() {
            if !self.config.use_obj_ptrs_in_encoder {
                bail!("this model does not use object pointers");
            }
            let num = object.pointers.len();
            let ptrs = Tensor::cat(
                &object
                    .pointers
                    .iter()
                    .map(|p| p.pointer)
                    .collect::<Vec<_>>(),
                0,
            )?; // [P, C]
            let obj_pos = if self.config.add_tpos_enc_to_obj_ptrs {
                if max_pointer_distance == 0 {
                    bail!("max_pointer_distance must be at least 1");
                }
                let t_max = max_pointer_distance as f32;
                let rel: Vec<f32> = object
                    .pointers
                    .iter()
                    .map(|p| p.distance as f32 / t_max)
                    .collect();
                let tpos_dim = if self.config.proj_tpos_enc_in_obj_ptrs {
                    c
                } else {
                    m
                };
                let pe = sine_pe_1d(&rel, tpos_dim, 10000.0, &self.device)?.to_dtype(self.dtype)?;
                match &self.obj_ptr_tpos_proj {
                    Some(proj) => proj.forward(&pe)?,
                    None => pe,
                }
            } else {
                Tensor::zeros((num, m), self.dtype, &self.device)?
            };
            // A C-wide pointer becomes C/Cm tokens of width Cm, each with the pointer's position.
            let split = if m < c { c / m } else { 1 };
            let ptr_tokens = ptrs.to_dtype(self.dtype)?.reshape((num * split, m))?;
            let ptr_pos = obj_pos
                .unsqueeze(1)?
                .broadcast_as((num, split, m))?
                .reshape((num * split, m))?;
            num_obj_ptr_tokens = num * split;
            tokens.push(ptr_tokens);
            positions.push(ptr_pos);
        }
        if tokens.is_empty() {
            bail!(
                "a frame that is not an initial conditioning frame needs at least one memory or pointer"
            );
        }
        Ok((
            Tensor::cat(&tokens, 0)?,
            Tensor::cat(&positions, 0)?,
            num_obj_ptr_tokens,
        ))
    }

    /// `_encode_new_memory`: the frame's raw image embedding fused with its predicted mask.
    pub fn encode_new_memory(
        &self,
        features: &FrameFeatures,
        pred_masks_high_res: &Tensor,
        object_score_logits: &Tensor,
        is_mask_from_pts: bool,
    ) -> Result<(Tensor, Tensor)> {
        let b = pred_masks_high_res.dim(0)?;
        let vision = features.vision_features();
        let (_, c, h, w) = vision.dims4()?;
        let pix_feat = vision.broadcast_as((b, c, h, w))?.contiguous()?;
        let masks = if self.config.non_overlap_masks_for_mem_enc {
            apply_non_overlapping_constraints(pred_masks_high_res)?
        } else {
            pred_masks_high_res.clone()
        };
        let mut mask_for_mem = if self.config.binarize_mask_from_pts_for_mem_enc && is_mask_from_pts
        {
            masks.gt(0.0)?.to_dtype(self.dtype)?
        } else {
            candle_nn::ops::sigmoid(&masks)?
        };
        if self.config.sigmoid_scale_for_mem_enc != 1.0 {
            mask_for_mem = (mask_for_mem * self.config.sigmoid_scale_for_mem_enc)?;
        }
        if self.config.sigmoid_bias_for_mem_enc != 0.0 {
            mask_for_mem = (mask_for_mem + self.config.sigmoid_bias_for_mem_enc)?;
        }
        let mut maskmem = self
            .memory_encoder
            .forward(&pix_feat, &mask_for_mem, true)?;
        if let Some(no_obj) = &self.no_obj_embed_spatial {
            let absent = (1.0 - object_score_logits.gt(0.0)?.to_dtype(self.dtype)?)?; // [B, 1]
            let m = no_obj.dim(1)?;
            let add = absent
                .reshape((b, 1, 1, 1))?
                .broadcast_mul(&no_obj.reshape((1, m, 1, 1))?)?;
            maskmem = maskmem.broadcast_add(&add)?;
        }
        Ok((maskmem, self.memory_encoder.pos_enc().clone()))
    }

    /// `track_step`: one frame for a batch of objects, from prompts and/or memory.
    pub fn track_step(&self, input: &TrackStepInput) -> Result<TrackStepOutput> {
        let levels = self.config.num_feature_levels();
        let high_res = input.features.high_res(levels);
        let b = input.batch;
        let broadcast = |t: &Tensor| -> Result<Tensor> {
            let mut dims = t.dims().to_vec();
            dims[0] = b;
            t.broadcast_as(dims)?.contiguous()
        };
        let high_res_b = match high_res {
            Some((s0, s1)) => Some((broadcast(s0)?, broadcast(s1)?)),
            None => None,
        };
        let high_res_b = high_res_b.as_ref().map(|(a, c)| (a, c));
        let heads = match input.mask_input {
            Some(mask) if self.config.use_mask_input_as_output_without_sam => {
                let pix_feat = broadcast(input.features.vision_features())?;
                self.use_mask_as_output(&pix_feat, high_res_b, mask)?
            }
            _ => {
                let pix_feat = self.prepare_memory_conditioned_features(input)?;
                let mask_inputs = match (input.prev_mask_logits, input.mask_input) {
                    (Some(_), Some(_)) => {
                        bail!("a correction (previous logits) cannot also carry a mask prompt")
                    }
                    (Some(prev), None) => {
                        if input.points.is_none() {
                            bail!("a correction (previous logits) needs points");
                        }
                        Some(prev)
                    }
                    (None, mask) => mask,
                };
                let num_points = input.points.map_or(0, |p| p.num_points());
                let multimask = self.use_multimask(input.is_init_cond_frame, num_points);
                self.forward_sam_heads(
                    &pix_feat,
                    input.points,
                    mask_inputs,
                    high_res_b,
                    multimask,
                    input.refine.as_ref(),
                )?
            }
        };
        let memory = if input.run_mem_encoder && self.config.num_maskmem > 0 {
            let masks = match (&input.refine, &heads.refined_masks) {
                (Some(step), Some(refined)) if step.memory_mask == MemoryMask::Refined => {
                    &refined.logits
                }
                _ => &heads.high_res_masks,
            };
            Some(self.encode_new_memory(
                input.features,
                masks,
                &heads.object_score_logits,
                input.points.is_some(),
            )?)
        } else {
            None
        };
        Ok(TrackStepOutput { heads, memory })
    }
}

/// `_apply_non_overlapping_constraints`: at each pixel only the highest-scoring object keeps its
/// logit; the others are clamped to at most -10. masks [B, 1, H, W].
pub fn apply_non_overlapping_constraints(masks: &Tensor) -> Result<Tensor> {
    let b = masks.dim(0)?;
    if b == 1 {
        return Ok(masks.clone());
    }
    let max_idx = masks.argmax_keepdim(0)?; // [1, 1, H, W]
    let ids = Tensor::arange(0u32, b as u32, masks.device())?.reshape((b, 1, 1, 1))?;
    let keep = max_idx.broadcast_eq(&ids)?;
    let clamped = masks.clamp(f64::NEG_INFINITY, -10.0)?;
    keep.where_cond(masks, &clamped)
}
