//! The kernel files (`kernels/*.cu`, embedded with `include_str!`) and the `extern "C"` functions
//! each must define. `kernels/common.cuh` is prepended to every file before compilation.

/// One kernel family: a `.cu` file and the functions launchers look up in it.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File stem under `kernels/` (also the module's key in the context's module map).
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

pub const COMMON: &str = include_str!("../../kernels/common.cuh");

impl KernelFile {
    /// Prelude + file, with a `#line` marker so NVRTC errors name the right file and line.
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name, self.source)
    }
}

pub const QUANT4: KernelFile = KernelFile {
    name: "quant4",
    source: include_str!("../../kernels/quant4.cu"),
    functions: &[
        "dequant_absmax_f32",
        "dequant_4bit_f32",
        "dequant_4bit_bf16",
        "gemv_4bit_f32",
        "gemv_4bit_bf16",
    ],
};

pub const GEMM4: KernelFile = KernelFile {
    name: "gemm4",
    source: include_str!("../../kernels/gemm4.cu"),
    functions: &["gemm_4bit_bf16", "gemm_4bit_dx_bf16"],
};

pub const ADAMW8BIT: KernelFile = KernelFile {
    name: "adamw8bit",
    source: include_str!("../../kernels/adamw8bit.cu"),
    functions: &["adamw8bit_f32", "adamw8bit_bnb_f32", "bnb_adam32_f32"],
};

pub const OPTIM: KernelFile = KernelFile {
    name: "optim",
    source: include_str!("../../kernels/optim.cu"),
    functions: &[
        "adamw_torch_f32",
        "sumsq_f32",
        "sumsq_bf16",
        "sumsq_part_f32",
        "norms_sqrt_f32",
        "clip_coef_f32",
    ],
};

pub const NORM: KernelFile = KernelFile {
    name: "norm",
    source: include_str!("../../kernels/norm.cu"),
    functions: &[
        "rmsnorm_fwd_f32",
        "rmsnorm_bwd_f32",
        "layernorm_fwd_f32",
        "layernorm_bwd_f32",
        "rmsnorm_fwd_bf16",
        "rmsnorm_bwd_bf16",
        "layernorm_fwd_bf16",
        "layernorm_bwd_bf16",
    ],
};

pub const ROPE: KernelFile = KernelFile {
    name: "rope",
    source: include_str!("../../kernels/rope.cu"),
    functions: &[
        "rope_half_fwd_f32",
        "rope_half_bwd_f32",
        "rope_glm_fwd_f32",
        "rope_glm_bwd_f32",
        "rope_half_fwd_bf16",
        "rope_half_bwd_bf16",
        "rope_glm_fwd_bf16",
        "rope_glm_bwd_bf16",
        "alibi_bias_f32",
        "rope_table_f32",
    ],
};

pub const ACT: KernelFile = KernelFile {
    name: "act",
    source: include_str!("../../kernels/act.cu"),
    functions: &[
        "swiglu_fwd_f32",
        "swiglu_bwd_f32",
        "gelu_tanh_fwd_f32",
        "gelu_tanh_bwd_f32",
        "geglu_fwd_f32",
        "geglu_bwd_f32",
        "scale_add_f32",
        "dropout_f32",
        "dropout_acc_f32",
        "swiglu_fwd_bf16",
        "swiglu_bwd_bf16",
        "gelu_tanh_fwd_bf16",
        "gelu_tanh_bwd_bf16",
        "geglu_fwd_bf16",
        "geglu_bwd_bf16",
        "scale_add_bf16",
        "dropout_bf16",
        "dropout_acc_bf16",
    ],
};

pub const EMBEDDING: KernelFile = KernelFile {
    name: "embedding",
    source: include_str!("../../kernels/embedding.cu"),
    functions: &[
        "embedding_fwd_f32",
        "embedding_bwd_f32",
        "embedding_fwd_bf16",
        "embedding_bwd_bf16",
    ],
};

pub const CROSS_ENTROPY: KernelFile = KernelFile {
    name: "cross_entropy",
    source: include_str!("../../kernels/cross_entropy.cu"),
    functions: &[
        "cross_entropy_fwd_f32",
        "cross_entropy_bwd_f32",
        "cross_entropy_fwd_bf16",
        "cross_entropy_bwd_bf16",
    ],
};

pub const ATTENTION: KernelFile = KernelFile {
    name: "attention",
    source: include_str!("../../kernels/attention.cu"),
    functions: &[
        "attn_fwd_f32",
        "attn_bwd_delta_f32",
        "attn_bwd_dq_f32",
        "attn_bwd_dkdv_f32",
        "attn_fwd_bf16",
        "attn_bwd_delta_bf16",
        "attn_bwd_delta_bf16_f32",
        "attn_bwd_dq_bf16",
        "attn_bwd_dkdv_bf16",
        "attn_cached_fwd_f32",
        "attn_tc_softmax_f32",
        "attn_tc_softmax_p32",
        "attn_tc_bwd_ds_f32",
        "attn_tc_bwd_ds_p32",
    ],
};

pub const FLASH: KernelFile = KernelFile {
    name: "flash",
    source: include_str!("../../kernels/flash.cu"),
    functions: &[
        "flash_fwd_f32_d32",
        "flash_bwd_dq_f32_d32",
        "flash_bwd_dkdv_f32_d32",
        "flash_fwd_f32_d64",
        "flash_bwd_dq_f32_d64",
        "flash_bwd_dkdv_f32_d64",
        "flash_fwd_f32_d128",
        "flash_bwd_dq_f32_d128",
        "flash_bwd_dkdv_f32_d128",
        "flash_fwd_bf16_d32",
        "flash_bwd_dq_bf16_d32",
        "flash_bwd_dkdv_bf16_d32",
        "flash_fwd_bf16_d64",
        "flash_bwd_dq_bf16_d64",
        "flash_bwd_dkdv_bf16_d64",
        "flash_fwd_bf16_d128",
        "flash_bwd_dq_bf16_d128",
        "flash_bwd_dkdv_bf16_d128",
    ],
};

pub const TENSOR: KernelFile = KernelFile {
    name: "tensor",
    source: include_str!("../../kernels/tensor.cu"),
    functions: &[
        "copy2d_f32",
        "copy2d_bf16",
        "bias_add_f32",
        "col_sum_f32",
        "scale_f32",
        "scale_by_f32",
        "widen16_f32",
        "widen16_bf16",
        "gemv16_f32",
        "narrow_bf16",
        "fill_f32",
        "argmax_hits_f32",
        "sum_acc_f32",
    ],
};

/// Every kernel file, in build order.
pub const ALL: &[KernelFile] = &[
    QUANT4,
    GEMM4,
    ADAMW8BIT,
    OPTIM,
    NORM,
    ROPE,
    ACT,
    EMBEDDING,
    CROSS_ENTROPY,
    ATTENTION,
    FLASH,
    TENSOR,
];
