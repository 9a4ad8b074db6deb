//! A definition as a transformers `config.json` (LlamaForCausalLM, or
//! Qwen3ForCausalLM for q/k-norm models), MoE settings under MiniMind's names.

use serde_json::{json, Value};

use super::def::{LayerFfn, ModelDef};
use super::rope::RopeScaling;

pub fn hf_config(def: &ModelDef) -> Value {
    let rope_scaling = match &def.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor } => json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
        }),
    };
    let mut c = json!({
        "architectures": [def.architecture()],
        "model_type": if def.qk_norm { "qwen3" } else { "llama" },
        "vocab_size": def.vocab_size,
        "hidden_size": def.hidden_size,
        "num_hidden_layers": def.num_hidden_layers,
        "num_attention_heads": def.num_attention_heads,
        "num_key_value_heads": def.num_key_value_heads,
        "head_dim": def.head_dim,
        "intermediate_size": def.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": def.rms_norm_eps,
        "rope_theta": def.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": def.max_position_embeddings,
        "tie_word_embeddings": def.tie_word_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": def.initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    });
    if let Some(m) = &def.moe {
        let moe_layers: Vec<usize> = def.layers.iter().enumerate().filter(|(_, l)| matches!(l, LayerFfn::Moe(_))).map(|(i, _)| i).collect();
        let o = c.as_object_mut().unwrap();
        o.insert("use_moe".into(), json!(true));
        o.insert("n_routed_experts".into(), json!(m.n_routed_experts));
        o.insert("n_shared_experts".into(), json!(m.n_shared_experts));
        o.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
        o.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
        o.insert("aux_loss_alpha".into(), json!(m.aux_loss_alpha));
        o.insert("seq_aux".into(), json!(m.seq_aux));
        o.insert("moe_intermediate_size".into(), json!(m.expert_size));
        o.insert("moe_layers".into(), json!(moe_layers));
    }
    c
}
