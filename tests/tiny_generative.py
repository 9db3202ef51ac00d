"""Tiny random captioning models built from configs (no hub, no download), saved like real checkpoints
(model.safetensors + processor files) so GenerativeCaptioner loads them through from_pretrained.

The weights are random, so captions are word salad; the builders push the special tokens' logits down
so that decoding always gives ordinary words, and seed torch so every build is the same.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the cat dog red blue green yellow square circle on of in with sitting standing table "
         "photo picture small large bird tree sky water grass man woman car house white black").split()
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
IMAGE = 32  # pixels; patch 8 -> 16 patches


def _tiny_vit(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=IMAGE, patch_size=8, **extra)


def _bert_tokenizer(bos: str | None = None):
    """A WordPiece (BERT) tokenizer over WORDS, built in memory."""
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(BERT_SPECIAL + WORDS)}
    kwargs = {"bos_token": bos} if bos else {}
    return BertTokenizer(vocab=vocab, **kwargs)


def _only_words(bias: torch.Tensor, banned: list[int], eos: int | None) -> None:
    """Make specials (but eos) unlikely so a random model writes words; eos a little more likely than any one word, so captions end."""
    with torch.no_grad():
        bias[banned] = -1e4
        if eos is not None:
            bias[eos] = 1.0


def _only_words_after_norm(norm: torch.nn.LayerNorm, head: torch.nn.Linear, banned: list[int], eos: int) -> None:
    """For a bias-free (untied) LM head after a LayerNorm: the normed vector sums to 0 across features, so
    with the norm's bias all 1 a head row of constant c gives the logit c * hidden exactly, for any input."""
    with torch.no_grad():
        norm.bias.fill_(1.0)
        width = head.weight.shape[1]
        head.weight[banned] = -1.0  # logit -width: never chosen
        head.weight[eos] = 1.0 / width  # logit 1: a little above the words, so captions end


def make_tiny_blip(folder: Path, positions: int = 256) -> Path:
    """A random BlipForConditionalGeneration + BlipProcessor saved into folder (safetensors)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    tok = _bert_tokenizer(bos="[DEC]")  # the real BLIP tokenizer starts captions with [DEC]
    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=positions, encoder_hidden_size=32,
                bos_token_id=ids("[DEC]"), sep_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"),
                eos_token_id=ids("[SEP]"))
    config = BlipConfig(text_config=text, vision_config=_tiny_vit(), projection_dim=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    banned = [ids(t) for t in BERT_SPECIAL if t != "[SEP]"]
    _only_words(model.text_decoder.cls.predictions.bias, banned, ids("[SEP]"))
    image_processor = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _word_tokenizer(specials: list[str], **special_names):
    """A whole-word tokenizer (tokenizers WordLevel) over specials + WORDS; decode joins words with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special_names)


def make_tiny_blip2(folder: Path, positions: int = 256) -> Path:
    """A random Blip2ForConditionalGeneration (tiny ViT + Q-Former + OPT) + Blip2Processor."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              BlipImageProcessor)

    folder = Path(folder)
    # OPT's layout: <s>=0 <pad>=1 </s>=2 (also its BOS); <image> marks where the query tokens go
    tok = _word_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], bos_token="</s>", eos_token="</s>",
                          pad_token="<pad>", cls_token="<s>", extra_special_tokens={"image_token": "<image>"})
    queries = 4
    text = dict(model_type="opt", vocab_size=len(tok), hidden_size=32, word_embed_proj_dim=32,
                num_hidden_layers=1, ffn_dim=64, num_attention_heads=2, max_position_embeddings=positions,
                bos_token_id=2, eos_token_id=2, pad_token_id=1, tie_word_embeddings=False)
    qformer = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   encoder_hidden_size=32, vocab_size=len(tok))
    config = Blip2Config(vision_config=_tiny_vit(), qformer_config=qformer, text_config=text,
                         num_query_tokens=queries, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    lm = model.language_model
    _only_words_after_norm(lm.model.decoder.final_layer_norm, lm.lm_head, [0, 1, 3, 4], eos=2)
    image_processor = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=queries).save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_git(folder: Path, positions: int = 256) -> Path:
    """A random GitForCausalLM (tiny CLIP-style vision tower + BERT-style decoder) + GitProcessor."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder = Path(folder)
    tok = _bert_tokenizer()
    ids = tok.convert_tokens_to_ids
    # GIT starts generation from [CLS] and stops at [SEP], as microsoft/git-* do
    config = GitConfig(vision_config=_tiny_vit(), vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=positions,
                       bos_token_id=ids("[CLS]"), eos_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"))
    torch.manual_seed(0)
    model = GitForCausalLM(config).eval()
    banned = [ids(t) for t in BERT_SPECIAL if t != "[SEP]"]
    _only_words(model.output.bias, banned, ids("[SEP]"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    GitProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_florence2(folder: Path, positions: int = 256) -> Path:
    """A random Florence2ForConditionalGeneration (tiny DaViT + BART) + Florence2Processor."""
    from transformers import (CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    folder = Path(folder)
    tok = _word_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], bos_token="<s>", eos_token="</s>",
                          pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    size = 64  # four stages stride 4*2*2*2 = 32 -> 2x2 image tokens, + 1 pooled (temporal) token
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 32], num_heads=[1, 1, 2, 2],
                  num_groups=[1, 1, 2, 2], window_size=2, projection_dim=32, drop_path_rate=0.0)
    text = dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=positions, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                decoder_start_token_id=2, tie_word_embeddings=False)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    # BART is post-norm: the last decoder layer's final_layer_norm feeds lm_head
    last_norm = model.model.language_model.decoder.layers[-1].final_layer_norm
    _only_words_after_norm(last_norm, model.lm_head, [0, 1, 3, 4], eos=2)
    image_processor = CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False,
                                         image_seq_length=(size // 32) ** 2 + 1)
    # post_process_generation refuses a parse task ("pure_text" for captions) missing from this config
    Florence2Processor(image_processor=image_processor, tokenizer=tok,
                       post_processor_config={"pure_text": {}}).save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
