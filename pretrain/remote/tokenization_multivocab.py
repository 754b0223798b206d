"""One tokenizer call, both views: the tokenizer of the published two-view models.

Copied by ``python -m pretrain.publish`` into the published folders of ``amber``, ``al_mvp``
(reading b) and ``hi_mvp``, whose ``tokenizer_config.json`` points ``AutoTokenizer`` here:

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    inputs = tok("我们在北京学习中文。", return_tensors="pt")   # both views from raw text
    states = AutoModel.from_pretrained(folder, trust_remote_code=True)(**inputs).last_hidden_state

and ``pipeline("feature-extraction", model=folder, trust_remote_code=True)`` works the same way.

The folder's own ``tokenizer.json`` is the fine (character) view; the coarse (word/SGT) view is
the tokenizer saved next to it under the ``coarse.`` prefix (with its own code, e.g. the SGT
segmenter, which needs ``rjieba``). ``__call__`` returns the fine view's ``input_ids`` /
``attention_mask`` / ``token_type_ids`` plus ``coarse_input_ids`` / ``coarse_attention_mask``; for
the hierarchical layout (``hi_mvp``) also ``coarse_index``: for every fine position the coarse
position of the token that holds its first character (``[CLS]``/``[SEP]`` map to the coarse
``[CLS]``/``[SEP]`` of the same rank, padding to -1), as ``finetune/adapters_multivocab.py`` builds
it. Needs only ``transformers``, ``tokenizers`` and the coarse view's own requirements.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from transformers import AutoTokenizer, TokenizersBackend

COARSE_PREFIX = "coarse."


def _coarse_index(fine_offsets, fine_special, fine_mask, fine_types, coarse_offsets, coarse_special, coarse_mask,
                  coarse_types):
    """Coarse position per fine position of one example (see the module docstring); offsets are
    per segment (``text`` / ``text_pair``), told apart by the token type ids."""
    c_specials = [j for j, (s, m) in enumerate(zip(coarse_special, coarse_mask)) if s and m]
    spans: dict = {}
    for j, ((a, b), s, m, t) in enumerate(zip(coarse_offsets, coarse_special, coarse_mask, coarse_types)):
        if m and not s:
            spans.setdefault(t, []).append((j, a, b))
    ptr: dict = {}
    out, rank = [], 0
    for (a, _), s, m, t in zip(fine_offsets, fine_special, fine_mask, fine_types):
        if not m:
            out.append(-1)
        elif s:
            out.append(c_specials[rank] if rank < len(c_specials) else -1)
            rank += 1
        else:
            lst, k = spans.get(t, []), ptr.get(t, 0)
            while k < len(lst) and lst[k][2] <= a:
                k += 1
            ptr[t] = k
            out.append(lst[k][0] if k < len(lst) and lst[k][1] <= a < lst[k][2] else -1)
    return out


class TwoViewTokenizer(TokenizersBackend):
    """The fine view's ``TokenizersBackend`` whose calls also produce the coarse view."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask", "coarse_input_ids",
                         "coarse_attention_mask"]

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        # load tokenizer.json as saved (a subclass would otherwise be rebuilt from its vocabulary)
        return super().convert_to_native_format(trust_remote_code=True, **kwargs)

    def __init__(self, *args, view_layout="pair", coarse_files=None, **kwargs):
        super().__init__(*args, view_layout=view_layout, coarse_files=coarse_files, **kwargs)
        self.view_layout = view_layout
        self.coarse_files = list(coarse_files or [])
        self._coarse = None
        if view_layout == "hierarchical":
            self.model_input_names = self.model_input_names + ["coarse_index"]

    @property
    def coarse_tokenizer(self):
        """The coarse view's tokenizer, restored from the ``coarse.*`` files next to this one."""
        if self._coarse is None:
            from transformers.utils import cached_file

            with tempfile.TemporaryDirectory(prefix="coarse-view-") as tmp:
                for name in self.coarse_files:
                    src = cached_file(self.name_or_path, name)
                    shutil.copyfile(src, os.path.join(tmp, name[len(COARSE_PREFIX):]))
                self._coarse = AutoTokenizer.from_pretrained(tmp, trust_remote_code=True)
        return self._coarse

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        out = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        from transformers.utils import cached_file

        extra = []
        for name in self.coarse_files:  # the coarse view travels with the fine one
            src = cached_file(self.name_or_path, name)
            dst = os.path.join(str(save_directory), name)
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
            extra.append(dst)
        return tuple(out) + tuple(extra)

    def __call__(self, text=None, text_pair=None, **kwargs):
        tensors = kwargs.pop("return_tensors", None)
        kwargs.pop("return_offsets_mapping", None)
        kwargs.pop("return_special_tokens_mask", None)
        hier = self.view_layout == "hierarchical"
        if hier:
            kwargs["return_token_type_ids"] = True
        fine = super().__call__(text, text_pair, return_offsets_mapping=hier, return_special_tokens_mask=hier,
                                **kwargs)
        keep = {k: v for k, v in kwargs.items()
                if k in ("add_special_tokens", "truncation", "max_length", "padding", "return_token_type_ids")}
        coarse = self.coarse_tokenizer(text, text_pair, return_offsets_mapping=hier,
                                       return_special_tokens_mask=hier, **keep)
        fine["coarse_input_ids"] = coarse["input_ids"]
        fine["coarse_attention_mask"] = coarse["attention_mask"]
        batched = bool(fine["input_ids"]) and isinstance(fine["input_ids"][0], list)
        if hier:
            keys = ("offset_mapping", "special_tokens_mask", "attention_mask", "token_type_ids")
            views = [fine[k] for k in keys] + [coarse[k] for k in keys]
            rows = zip(*(x if batched else [x] for x in views))
            index = [_coarse_index(*r) for r in rows]
            fine["coarse_index"] = index if batched else index[0]
            for k in ("offset_mapping", "special_tokens_mask"):
                del fine[k]
        return fine.convert_to_tensors(tensors, prepend_batch_axis=not batched) if tensors else fine
