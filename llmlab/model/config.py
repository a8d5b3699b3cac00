"""ModelConfig: one dataclass describing every architecture variant, with HF field names.

Every design choice of the notes' architecture survey is one key (docs/model.md has the table:
what, where it came from, which key). The defaults are LLaMA's, so a config that sets nothing
else is exactly the model llmlab always had; every variant costs nothing when off.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from llmlab.errors import UserError

GATED_MLPS = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}  # GLU family -> default activation
PLAIN_MLPS = {"gelu": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}  # 2-matrix MLPs
ROPE_TYPES = ("default", "linear", "dynamic", "ntk", "yarn", "llama3")
ACTIVATION_NAMES = ("relu", "silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new")  # HF hidden_act names


class ModelConfigError(UserError, ValueError):
    """An impossible or incompatible ModelConfig (a UserError: one line, exit code 2)."""


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: Optional[int] = None  # default: GLU 8/3*d rounded to 64; plain MLP 4*d
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None  # None = MHA; 1 = MQA; in between = GQA
    head_dim: Optional[int] = None  # default hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    # norms
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    rms_norm_eps: float = 1e-5
    norm_placement: Literal["pre", "post", "sandwich"] = "pre"
    deepnorm: bool = False  # post-norm with residual alpha=(2N)^1/4 and init beta=(8N)^-1/4 (Wang 2022)
    embedding_layernorm: bool = False  # BLOOM: LayerNorm right after the token embedding
    qk_norm: bool = False  # RMS/LayerNorm over each head's query and key (OLMo-2, Qwen3)
    norm_weight_offset: float = 0.0  # Gemma stores g - 1: y = x_hat * (offset + g)
    # feed-forward
    mlp: Literal["swiglu", "geglu", "reglu", "gelu", "relu", "silu"] = "swiglu"
    hidden_act: Optional[str] = None  # silu | gelu (exact) | gelu_pytorch_tanh | relu; default by mlp
    # positions
    position: Literal["rope", "learned", "sinusoidal", "alibi", "t5", "none"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # HF: {"rope_type": linear|dynamic|ntk|yarn|llama3, "factor": ..}
    partial_rotary_factor: float = 1.0  # rotate only this fraction of each head (GPT-NeoX, Phi)
    relative_attention_num_buckets: int = 32  # T5 bias
    relative_attention_max_distance: int = 128
    # attention
    sliding_window: Optional[int] = None  # Mistral: query i sees keys i-W+1..i
    global_tokens: Optional[int] = None  # LM-Infinite Lambda-mask: the first N keys stay visible (with sliding_window)
    s2_group_size: Optional[int] = None  # LongLoRA S2-Attn while training: groups of G, half the heads shifted G/2
    sparse_stride: Optional[int] = None  # Sparse Transformer: the last `stride` keys + every stride-th
    attn_logit_softcapping: Optional[float] = None  # Gemma 2: s <- c * tanh(s / c)
    final_logit_softcapping: Optional[float] = None
    attn_implementation: Literal["sdpa", "eager", "flash"] = "sdpa"  # flash = llmlab.model.flash
    prefix_lm: bool = False  # prefix (non-causal) decoder, GLM / U-PaLM: bidirectional over the prefix
    # multi-head latent attention (DeepSeek-V2; llmlab/model/mla.py): on when kv_lora_rank is set
    kv_lora_rank: Optional[int] = None  # width of the cached latent c_KV
    q_lora_rank: Optional[int] = None  # None: a full-rank q_proj
    qk_rope_head_dim: int = 64  # the decoupled RoPE part of each query / the shared RoPE key
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    # block layout
    parallel_block: bool = False  # GPT-J / PaLM / Phi: x + attn(ln(x)) + mlp(ln(x))
    attention_bias: bool = False
    attention_out_bias: Optional[bool] = None  # o_proj bias; None = attention_bias (Qwen2: false)
    mlp_bias: bool = False
    lm_head_bias: bool = False  # Phi
    tie_word_embeddings: bool = True
    scale_embeddings: bool = False  # Gemma: token embeddings * sqrt(hidden_size)
    # mixture of experts (0 experts = dense)
    num_local_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: Optional[int] = None  # each expert's width (default intermediate_size)
    n_shared_experts: int = 0  # DeepSeekMoE: always-on experts, one MLP n_shared x wide
    router_order: Literal["softmax_topk", "topk_softmax"] = "softmax_topk"
    norm_topk_prob: bool = True  # softmax_topk: renormalise the k kept probabilities (Mixtral)
    capacity_factor: float = 0.0  # > 0: each expert takes ceil(cf * tokens * k / E) slots, drops the rest
    router_aux_loss_coef: float = 0.0  # Switch load balancing N * sum f_i P_i
    router_z_loss_coef: float = 0.0  # ST-MoE z-loss mean(logsumexp(logits)^2)
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)  # free-form notes carried into config.json

    def __post_init__(self):
        UserError = ModelConfigError
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.kv_lora_rank is not None:  # HF DeepseekV3: head_dim is the RoPE width
            if self.head_dim is not None and self.head_dim != self.qk_rope_head_dim:
                raise UserError(f"with kv_lora_rank (MLA) head_dim is qk_rope_head_dim ({self.qk_rope_head_dim}), "
                                f"got {self.head_dim}")
            self.head_dim = self.qk_rope_head_dim
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise UserError(f"hidden_size {self.hidden_size} is not divisible by "
                                f"num_attention_heads {self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {self.num_key_value_heads}")
        if self.mlp not in GATED_MLPS and self.mlp not in PLAIN_MLPS:
            raise UserError(f"mlp '{self.mlp}' unknown (use one of {', '.join([*GATED_MLPS, *PLAIN_MLPS])})")
        if self.hidden_act is None:
            self.hidden_act = GATED_MLPS.get(self.mlp) or PLAIN_MLPS[self.mlp]
        if self.intermediate_size is None:
            if self.is_gated:  # keep a GLU's 3 matrices at the cost of a plain MLP's 2 (LLaMA)
                self.intermediate_size = 64 * ((int(8 * self.hidden_size / 3) + 63) // 64)
            else:
                self.intermediate_size = 4 * self.hidden_size
        if self.attention_out_bias is None:
            self.attention_out_bias = self.attention_bias
        self._check_combinations(UserError)

    def _check_combinations(self, UserError) -> None:
        """Combinations that cannot work: one line naming the keys."""
        if self.hidden_act not in ACTIVATION_NAMES:
            raise UserError(f"hidden_act '{self.hidden_act}' unknown (use one of {', '.join(ACTIVATION_NAMES)})")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if self.rope_scaling and self.position != "rope":
            raise UserError(f"rope_scaling needs position=rope, got position={self.position}")
        if rope_type not in ROPE_TYPES:
            raise UserError(f"rope_scaling rope_type '{rope_type}' unknown (use one of {', '.join(ROPE_TYPES)})")
        if self.rope_scaling and rope_type != "default" and "factor" not in self.rope_scaling:
            raise UserError(f"rope_scaling {rope_type} needs a 'factor'")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise UserError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.position == "rope" and self.rotary_dim % 2:
            raise UserError(f"RoPE needs an even rotary dim (head_dim x partial_rotary_factor), got {self.rotary_dim}")
        if self.num_local_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
                raise UserError(f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..num_local_experts "
                                f"({self.num_local_experts})")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise UserError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.global_tokens is not None and (self.global_tokens < 1 or self.sliding_window is None):
            raise UserError("global_tokens (LM-Infinite) needs global_tokens >= 1 and a sliding_window")
        if self.s2_group_size is not None and (self.s2_group_size < 2 or self.s2_group_size % 2):
            raise UserError(f"s2_group_size must be an even number >= 2, got {self.s2_group_size}")
        if self.sparse_stride is not None and self.sparse_stride < 1:
            raise UserError(f"sparse_stride must be >= 1, got {self.sparse_stride}")
        if self.deepnorm and self.norm_placement != "post":
            raise UserError(f"deepnorm is a post-norm scheme: set norm_placement=post "
                            f"(got {self.norm_placement})")
        if self.parallel_block and self.norm_placement != "pre":
            raise UserError("parallel_block needs norm_placement=pre (one shared input norm)")
        if self.capacity_factor < 0:
            raise UserError(f"capacity_factor must be >= 0, got {self.capacity_factor}")
        if self.kv_lora_rank is not None:
            if min(self.kv_lora_rank, self.q_lora_rank or 1, self.qk_nope_head_dim, self.v_head_dim) < 1:
                raise UserError("MLA needs kv_lora_rank, q_lora_rank, qk_nope_head_dim and v_head_dim >= 1")
            if self.position != "rope" or self.num_key_value_heads != self.num_attention_heads:
                raise UserError("MLA (kv_lora_rank) needs position=rope and no num_key_value_heads (it "
                                "shares one latent across heads instead)")
            unused = [k for k, on in (("qk_norm", self.qk_norm), ("attn_logit_softcapping", self.needs_scores),
                                      ("attn_implementation=flash", self.attn_implementation == "flash"),
                                      ("partial_rotary_factor", self.partial_rotary_factor != 1.0)) if on]
            if unused:
                raise UserError(f"MLA (kv_lora_rank) does not implement {', '.join(unused)}")

    @property
    def is_gated(self) -> bool:
        return self.mlp in GATED_MLPS

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def rope_type(self) -> str:
        rs = self.rope_scaling or {}
        return rs.get("rope_type", rs.get("type", "default"))

    @property
    def needs_scores(self) -> bool:
        """Attention needs the explicit score matrix (no fused SDPA kernel): soft-capping."""
        return self.attn_logit_softcapping is not None

    def beyond_llama_gpt(self) -> list[str]:
        """The keys set here that the fused inference path (llmlab.infer.runner.FusedModel: pre-norm,
        RoPE or learned positions, SwiGLU or GeLU-tanh MLP) does not implement; [] = it can run this
        model. The plain `Transformer.forward` (with KVCache) runs every variant."""
        checks = {
            "position": self.position not in ("rope", "learned"),
            "partial_rotary_factor": self.partial_rotary_factor != 1.0,
            "rope_scaling (dynamic)": self.rope_type == "dynamic",
            "norm_placement": self.norm_placement != "pre",
            "deepnorm": self.deepnorm,
            "embedding_layernorm": self.embedding_layernorm,
            "qk_norm": self.qk_norm,
            "hidden_act": (self.mlp, self.hidden_act) not in (("swiglu", "silu"), ("gelu", "gelu_pytorch_tanh")),
            "sliding_window": self.sliding_window is not None,
            "sparse_stride": self.sparse_stride is not None,
            "attn_logit_softcapping": self.attn_logit_softcapping is not None,
            "final_logit_softcapping": self.final_logit_softcapping is not None,
            "parallel_block": self.parallel_block,
            "scale_embeddings": self.scale_embeddings,
            "num_local_experts": self.num_local_experts > 0,
            "prefix_lm": self.prefix_lm,
            "kv_lora_rank": self.kv_lora_rank is not None,
        }
        return [k for k, on in checks.items() if on]

    def to_dict(self) -> dict:
        return asdict(self)
