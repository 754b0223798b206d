"""Frozen encoders for the probing evaluations: an export's tokenizer + backbone, loaded through
``pretrain.exports.load_export`` (the one loader), giving per-character states.

A character takes the state of the token covering it (tokenizer offsets), so any export with a fast
tokenizer works; the states are the model's own (no fine-tuning adapter is involved).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import UserError


def resolve_export(d: str | Path) -> Path:
    """An ``export/`` folder, or the pre-training folder holding one."""
    d = Path(d)
    if (d / "export" / "config.json").is_file():
        d = d / "export"
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: not an exported model (no config.json; pass runs/RUN/pretrain/NAME/export)")
    return d


def model_name(folder: Path) -> tuple[str, str]:
    """(display name, group name): ``RUN/NAME`` and ``NAME`` for ``runs/RUN/pretrain/NAME`` or its
    ``export/``; the folder and its name otherwise."""
    parts = Path(folder).resolve().parts
    if parts and parts[-1] == "export":
        parts = parts[:-1]
    if len(parts) >= 3 and parts[-2] == "pretrain":
        return f"{parts[-3]}/{parts[-1]}", parts[-1]
    return str(folder), Path(folder).name


class FrozenEncoder:
    """An export's tokenizer + backbone; ``char_states(texts)`` gives [n_chars, H] per text.
    ``random_init``: same config, fresh weights drawn after ``torch.manual_seed(seed)``."""

    def __init__(self, export: Path, random_init: bool = False, layer: int = -1, trust_remote_code: bool = False,
                 seed: int = 0):
        from pretrain.exports import load_export

        if random_init:
            torch.manual_seed(seed)
        ex = load_export(export, task="base", random_init=random_init, model_type="encoder",
                         trust_remote_code=trust_remote_code)
        self.tok, self.model = ex.tokenizer, ex.model
        self.model.eval()
        self.layer = layer
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 512))

    def _states(self, res) -> torch.Tensor:
        return res.hidden_states[self.layer] if self.layer != -1 else res.last_hidden_state

    @torch.no_grad()
    def char_states(self, texts: list[str], batch_size: int = 16) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            try:
                enc = self.tok(chunk, return_offsets_mapping=True, padding=True, truncation=True,
                               max_length=self.max_len, return_tensors="pt")
            except (NotImplementedError, TypeError, ValueError) as e:
                raise UserError(f"the tokenizer gives no character offsets ({e}); the probes need a fast tokenizer") from None
            offsets = enc.pop("offset_mapping")
            res = self.model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                             output_hidden_states=self.layer != -1)
            h = self._states(res)
            for j, text in enumerate(chunk):
                idx = torch.full((len(text),), -1, dtype=torch.long)
                for t, (s, e) in enumerate(offsets[j].tolist()):
                    if e > s:
                        idx[s:e] = t
                # a character no token covers (dropped by the tokenizer) takes the next token's state
                if (idx < 0).any():
                    nxt = idx.clone()
                    for c in range(len(text) - 2, -1, -1):
                        if nxt[c] < 0:
                            nxt[c] = nxt[c + 1]
                    idx = torch.where(nxt < 0, torch.zeros_like(nxt), nxt)
                out.append(h[j, idx].float())
        return out

    @torch.no_grad()
    def masked_span_vectors(self, items: list[tuple[str, int, int]], batch_size: int = 32) -> torch.Tensor:
        """For each ``(text, start, end)``: every token covering a character of ``[start, end)`` is
        replaced by the mask token; the mean of the states at those tokens. [N, H]."""
        if self.tok.mask_token_id is None:
            raise UserError("the tokenizer has no mask token: the masked retrieval probe needs one")
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            enc = self.tok([t for t, _, _ in chunk], return_offsets_mapping=True, padding=True, truncation=True,
                           max_length=self.max_len, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            s = torch.tensor([a for _, a, _ in chunk])[:, None]
            e = torch.tensor([b for _, _, b in chunk])[:, None]
            cover = (offsets[..., 1] > offsets[..., 0]) & (offsets[..., 0] < e) & (offsets[..., 1] > s)
            ids = enc["input_ids"].masked_fill(cover, self.tok.mask_token_id)
            args = {k: v for k, v in enc.items() if k in ("attention_mask", "token_type_ids")}
            h = self._states(self.model(input_ids=ids, output_hidden_states=self.layer != -1, **args))
            w = cover.float()
            out.append((h.float() * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)
