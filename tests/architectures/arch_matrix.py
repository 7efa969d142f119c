"""The architecture matrix: every family headscope claims, as a tiny random model built here (no downloads), with
what headscope claims for it. ``test_parity_matrix.py`` checks every claim against the model's own eager
attention; ``docs/models.md`` is this table as text (``python tests/architectures/arch_matrix.py`` writes it,
``test_models_table.py`` fails when they disagree).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "docs" / "models.md"

#: Every tiny model: vocabulary, layers, hidden size and heads (4; grouped-query models 2 key/value heads).
VOCAB, LAYERS, HIDDEN, HEADS = 512, 2, 32, 4
#: The sliding window of the models that have one: the test sequences are longer.
WINDOW = 6


@dataclass(frozen=True)
class Arch:
    """One architecture family and what headscope claims for it."""

    name: str
    """The family as a user knows it."""
    config: str
    """transformers config class."""
    model: str
    """transformers model class saved (its ``architectures`` decide the LM head and causality at load)."""
    kwargs: dict[str, Any]
    """The tiny config."""
    kind: str
    """encoder, decoder, encoder-decoder or vision."""
    route: str | None
    """The route ``--capture auto`` chooses; None when refused."""
    routes: tuple[str, ...] = ()
    """Every route that is exact for it (checked one by one)."""
    window: int | None = None
    """Sliding-window size, when some layers have one."""
    value: str | None = None
    """Name ending of the value projection (a Linear giving [.., kv_heads * head_dim]): the hand computation of
    norm-based weights (``--weights norm``) reads it; None where the value is fused with the query and key."""
    fused: str | None = None
    """How the value sits in a fused projection named by ``value``: ``qkv`` (query, key, value one after the other,
    the value last), ``per_head`` (each head's query, key, value together: GPT-NeoX) or ``three`` ([3, head, dim]:
    ModernBERT); None for a value projection of its own."""
    refused: str | None = None
    """For a refused family, words the one-line refusal must contain."""
    note: str = ""
    """What the table says besides."""
    needs: tuple[str, ...] = field(default=())
    """Optional packages it needs (skip when absent)."""

    @property
    def exact(self) -> bool:
        return self.refused is None

    @property
    def causal(self) -> bool:
        return self.kind == "decoder"


def _enc(**kw: Any) -> dict[str, Any]:
    return {**dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   intermediate_size=64, max_position_embeddings=130), **kw}


def _dec(**kw: Any) -> dict[str, Any]:
    return {**dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   intermediate_size=64, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
                   pad_token_id=2), **kw}


ALL3 = ("interface", "hooks", "stacked")

ARCHITECTURES: tuple[Arch, ...] = (
    # --- encoders -------------------------------------------------------------------------------------------
    Arch("BERT", "BertConfig", "BertForMaskedLM", _enc(), "encoder", "interface", ALL3, value="attention.self.value"),
    Arch("RoBERTa", "RobertaConfig", "RobertaForMaskedLM", _enc(pad_token_id=1), "encoder", "interface", ALL3,
         value="attention.self.value"),
    Arch("XLM-R", "XLMRobertaConfig", "XLMRobertaForMaskedLM", _enc(pad_token_id=1), "encoder", "interface", ALL3,
         value="attention.self.value"),
    Arch("ELECTRA", "ElectraConfig", "ElectraForMaskedLM", _enc(embedding_size=HIDDEN), "encoder", "interface",
         ALL3, value="attention.self.value"),
    Arch("DistilBERT", "DistilBertConfig", "DistilBertForMaskedLM",
         dict(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=64,
              max_position_embeddings=128), "encoder", "interface", ALL3, value="attention.v_lin"),
    Arch("ALBERT", "AlbertConfig", "AlbertForMaskedLM", _enc(embedding_size=16, num_hidden_layers=3), "encoder",
         "interface", ALL3, value="attention.value",
         note="one attention module shared by every layer: each call is its own layer"),
    Arch("DeBERTa-v2", "DebertaV2Config", "DebertaV2ForMaskedLM",
         _enc(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16, position_buckets=8),
         "encoder", "hooks", ("hooks", "stacked"), note="disentangled attention in its own code"),
    Arch("ModernBERT", "ModernBertConfig", "ModernBertForMaskedLM",
         dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              intermediate_size=64, max_position_embeddings=128, local_attention=WINDOW,
              global_attn_every_n_layers=2, pad_token_id=2, bos_token_id=0, eos_token_id=1, cls_token_id=0,
              sep_token_id=1),
         "encoder", "interface", ALL3, window=WINDOW, value="attn.Wqkv", fused="three",
         note="local (sliding-window) and global layers"),
    Arch("MPNet", "MPNetConfig", "MPNetForMaskedLM", _enc(pad_token_id=1), "encoder", "hooks", ("hooks", "stacked"),
         note="attention in its own code (relative position bias)"),
    Arch("BigBird (full)", "BigBirdConfig", "BigBirdForMaskedLM", _enc(attention_type="original_full", pad_token_id=2),
         "encoder", "hooks", ("hooks", "stacked"), note="attention_type='original_full'"),
    # --- decoders -------------------------------------------------------------------------------------------
    Arch("GPT-2", "GPT2Config", "GPT2LMHeadModel",
         dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128, bos_token_id=0,
              eos_token_id=1), "decoder", "interface", ALL3, value="attn.c_attn", fused="qkv"),
    Arch("GPT-J", "GPTJConfig", "GPTJForCausalLM",
         dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, rotary_dim=4, n_positions=128,
              bos_token_id=0, eos_token_id=1), "decoder", "interface", ALL3, value="attn.v_proj"),
    Arch("GPT-NeoX", "GPTNeoXConfig", "GPTNeoXForCausalLM", _dec(rotary_pct=0.25), "decoder", "interface", ALL3,
         value="attention.query_key_value", fused="per_head"),
    Arch("OPT", "OPTConfig", "OPTForCausalLM",
         dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=64,
              word_embed_proj_dim=HIDDEN, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
              pad_token_id=2), "decoder", "interface", ALL3, value="self_attn.v_proj"),
    Arch("BLOOM", "BloomConfig", "BloomForCausalLM",
         dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, bos_token_id=0, eos_token_id=1,
              pad_token_id=2), "decoder", "hooks", ("hooks", "stacked"),
         note="ALiBi position bias; attention in its own code"),
    Arch("Falcon", "FalconConfig", "FalconForCausalLM",
         dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              bos_token_id=0, eos_token_id=1, pad_token_id=2), "decoder", "interface", ALL3,
         value="self_attention.query_key_value", fused="qkv", note="multi-query attention"),
    Arch("Llama", "LlamaConfig", "LlamaForCausalLM", _dec(num_key_value_heads=2), "decoder", "interface", ALL3,
         value="self_attn.v_proj", note="grouped-query attention"),
    Arch("Mistral", "MistralConfig", "MistralForCausalLM", _dec(num_key_value_heads=2, sliding_window=WINDOW),
         "decoder", "interface", ALL3, window=WINDOW, value="self_attn.v_proj"),
    Arch("Gemma 2", "Gemma2Config", "Gemma2ForCausalLM",
         _dec(num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, attn_logit_softcapping=2.0,
              query_pre_attn_scalar=8), "decoder", "interface", ALL3, window=WINDOW, value="self_attn.v_proj",
         note="logit soft-capping; sliding and global layers"),
    Arch("Gemma 3", "Gemma3TextConfig", "Gemma3ForCausalLM",
         _dec(num_key_value_heads=1, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
              layer_types=["sliding_attention", "full_attention"]), "decoder", "interface", ALL3, window=WINDOW,
         value="self_attn.v_proj", note="sliding and global layers, one key/value head"),
    Arch("Qwen2", "Qwen2Config", "Qwen2ForCausalLM", _dec(num_key_value_heads=2), "decoder", "interface", ALL3,
         value="self_attn.v_proj"),
    Arch("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", _dec(num_key_value_heads=2, head_dim=8), "decoder",
         "interface", ALL3, value="self_attn.v_proj", note="query/key norms"),
    Arch("Phi-3", "Phi3Config", "Phi3ForCausalLM", _dec(num_key_value_heads=2), "decoder", "interface", ALL3,
         value="self_attn.qkv_proj", fused="qkv"),
    Arch("OLMo2", "Olmo2Config", "Olmo2ForCausalLM", _dec(num_key_value_heads=2), "decoder", "interface", ALL3,
         value="self_attn.v_proj"),
    Arch("StableLM", "StableLmConfig", "StableLmForCausalLM", _dec(num_key_value_heads=2, partial_rotary_factor=0.25),
         "decoder", "interface", ALL3, value="self_attn.v_proj"),
    # --- refused --------------------------------------------------------------------------------------------
    Arch("T5", "T5Config", "T5ForConditionalGeneration",
         dict(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=LAYERS, num_heads=HEADS,
              decoder_start_token_id=0, pad_token_id=2, eos_token_id=1), "encoder-decoder", None,
         refused="encoder-decoder", note="cross-attention between encoder and decoder"),
    Arch("BART", "BartConfig", "BartForConditionalGeneration",
         dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
              encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=64, decoder_ffn_dim=64,
              max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2,
              decoder_start_token_id=1), "encoder-decoder", None, refused="encoder-decoder",
         note="cross-attention between encoder and decoder"),
    Arch("ViT", "ViTConfig", "ViTModel",
         dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
              image_size=16, patch_size=8), "vision", None, refused="pixel",
         note="takes pixel values, not text"),
    Arch("BigBird (block-sparse)", "BigBirdConfig", "BigBirdForMaskedLM",
         _enc(attention_type="block_sparse", block_size=2, num_random_blocks=1, pad_token_id=2), "encoder", None,
         refused="block_sparse", note="its attention changes kind with the input's length"),
    Arch("Longformer", "LongformerConfig", "LongformerForMaskedLM",
         _enc(pad_token_id=1, attention_window=4, max_position_embeddings=132), "encoder", None,
         refused="not a [query, key] map", note="local windows returned instead of [query, key] maps"),
)

BY_NAME = {a.name: a for a in ARCHITECTURES}



def analyses(arch: Arch) -> str:
    """The analyses that apply, from the catalog's needs (``causal``: a decoder LM; ``encoder``: an encoder)."""
    if not arch.exact:
        return "-"
    import json

    catalog = json.loads((REPO / "src" / "headscope" / "catalog.json").read_text(encoding="utf-8"))
    other = "encoder" if arch.causal else "causal"
    left_out = sorted(a["name"] for a in catalog["analyses"] if other in a["needs"])
    return f"all but {', '.join(left_out)} ({other} only)" if left_out else "all"


def interventions(arch: Arch) -> str:
    """What the interventions need: head gates on the output projection (ablation, importance, pruning,
    head_effects, sep_gradient) and, for kv_budget, headscope's attention function (the interface route)."""
    if not arch.exact:
        return "-"
    gates = "gates (ablation, importance, pruning, head_effects)"
    return gates + (", kv_budget" if arch.causal and arch.route == "interface" else "")


def weights(arch: Arch) -> str:
    if not arch.exact:
        return "-"
    if arch.route != "interface":
        return "attention, rollout"
    # norm is checked by hand where the value projection is a module of its own; fused ones run the same code
    return "attention, norm, rollout" if arch.value else "attention, norm (not checked by hand), rollout"


def render() -> str:
    """docs/models.md from :data:`ARCHITECTURES`."""
    lines = [
        "# Supported models",
        "",
        "Generated from the architecture matrix (`tests/architectures/arch_matrix.py`; "
        "`python tests/architectures/arch_matrix.py` writes this page, `tests/architectures/test_models_table.py` "
        "fails when the two disagree). Every row marked *exact* is a tiny random model of that family whose every "
        "head's whole attention map equals the model's own eager `output_attentions` to 1e-5 (float32), for "
        "batches of 1 and 3 padded on either side and, where the family has a sliding window, sequences longer "
        "than the window, on every route listed (`tests/architectures/test_parity_matrix.py`); `--weights norm` "
        "matches a hand computation of Kobayashi et al.'s norms where the route is `interface`, and closing a "
        "head with headscope's gates equals zeroing its slice of the output projection's input by hand. A "
        "*refused* family stops before the pass with one line naming what is missing "
        "(`UnsupportedModelError`; the CLI exits with status 2).",
        "",
        "| architecture | kind | route (auto) | exact on routes | result | analyses | --weights | interventions "
        "| notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in ARCHITECTURES:
        result = "exact" if a.exact else "refused"
        route = a.route or "-"
        routes = ", ".join(a.routes) or "-"
        notes = a.note
        if a.window:
            notes = (notes + "; " if notes else "") + "sequences longer than the window checked"
        lines.append(f"| {a.name} | {a.kind} | {route} | {routes} | {result} | {analyses(a)} | {weights(a)} "
                     f"| {interventions(a)} | {notes} |")
    lines += [
        "",
        "Analyses: the catalog's needs decide (`headscope list`); `treebank` and `coreference` analyses need "
        "their input besides. Encoder-decoder models (T5, BART) are refused: their decoder's cross-attention is "
        "not a map of "
        "the input onto itself, and analysing one of the two self-attention stacks alone would be a different "
        "model from the one a user loads. Vision models (ViT) take pixels, not text.",
        "",
        "A model outside this table is checked when it loads: the route's probe pass must give every layer (a "
        "module called several times per forward pass, as ALBERT's, is one layer per call), every head, and "
        "rows that are distributions over all keys; on a float32 model its weights must equal the model's own "
        "eager weights on the probe input. Anything else is refused with the reason.",
        "",
        "Packaged real models: `minilm` (BERT), `minilm-finetuned` (BERT), `smollm2` (Llama, GGUF), `gemma3` "
        "(Gemma 3, GGUF); `headscope list` shows how to install each.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    TABLE.write_text(render(), encoding="utf-8")
    print(f"wrote {TABLE}", file=sys.stderr)
