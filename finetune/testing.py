"""Tiny checkpoints for tests and benchmarks: a small ``BertForMaskedLM`` + a WordPiece tokenizer
saved as an export folder (``config.json``, weights, tokenizer files, ``pretrain_meta.json``).

``vocab="char"``: one token per CJK character (Chinese BERT style). ``vocab="multi"``: whole words
and sub-words of several characters (an SGT/word-like vocabulary, CJK characters not split), so
tokens cover more than one character and the character map is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(texts: Iterable[str], vocab: str = "char", words: Iterable[str] = ()):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in texts for c in t if not c.isspace()})
    toks = list(SPECIALS) + chars + ["##" + c for c in chars]
    if vocab == "multi":
        toks += sorted({w for w in words if len(w) > 1}) + sorted({"##" + w for w in words if len(w) > 1})
    toks = list(dict.fromkeys(toks))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(toks)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=(vocab == "char"), strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def make_checkpoint(path: str | Path, texts: Iterable[str], vocab: str = "char", words: Iterable[str] = (),
                    hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0, metrics: bool = True,
                    decoder: bool = False) -> Path:
    """``decoder=True``: a tiny ``LlamaForCausalLM`` (an NTP-style export) instead of the BERT MLM."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    tokenizer = make_tokenizer(texts, vocab, words)
    torch.manual_seed(seed)
    if decoder:
        conf = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=hidden * 4, max_position_embeddings=256, pad_token_id=0)
        LlamaForCausalLM(conf).save_pretrained(path)
    else:
        conf = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=hidden * 4, max_position_embeddings=256, type_vocab_size=2, pad_token_id=0)
        BertForMaskedLM(conf).save_pretrained(path)
    tokenizer.save_pretrained(path)
    from pretrain.exports import ExportMeta

    ExportMeta(objective="ntp" if decoder else "mlm", model_type="decoder" if decoder else "encoder", vocab_kind=vocab,
               vocab_path="", trust_remote_code=False, finetune_adapter="hf", hardware="cpu").save(path)
    if metrics and path.name == "export":
        lines = [{"step": s, "split": "train", "loss": 9.0 - s / 10} for s in range(10, 60, 10)] + \
            [{"step": 50, "split": "valid", "loss": 8.5, "accuracy": 0.05}]
        (path.parent / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    return path
