"""ModelConfig: one dataclass describing every architecture variant, with HF LLaMA field names."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: Optional[int] = None  # default: SwiGLU 8/3*d rounded to 64; GELU 4*d
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None  # None = MHA; 1 = MQA; in between = GQA
    head_dim: Optional[int] = None  # default hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    rms_norm_eps: float = 1e-5
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    position: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)  # free-form notes carried into config.json

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.intermediate_size is None:
            if self.mlp == "swiglu":  # keep SwiGLU's 3 matrices at the cost of GELU-MLP's 2 (LLaMA)
                self.intermediate_size = 64 * ((int(8 * self.hidden_size / 3) + 63) // 64)
            else:
                self.intermediate_size = 4 * self.hidden_size

    @property
    def is_llama(self) -> bool:
        """True when the architecture is exactly HF `LlamaForCausalLM`."""
        return (self.norm == "rmsnorm" and self.mlp == "swiglu" and self.position == "rope"
                and not self.mlp_bias)

    def to_dict(self) -> dict:
        return asdict(self)
