"""Decoder SFT rows: plain NTP, MEAP official separate masked copy, MEAP paper concatenation."""

import random

import pytest
import torch

from finetune.decoder_sft import (
    IGNORE, SftConfig, build_rows, choose_mask_positions, mask_reach, fit_sft, pad_rows, sft_rows,
)

CLS, SEP, MASK = 2, 3, 4
PROMPT = [CLS, 10, 11, 12]
ANSWER = [20, 21, 22, 23, 24, 25]
X = -100


def t(x):
    return torch.tensor(x, dtype=torch.long)


def test_ntp_row_exact():
    (r,) = build_rows(PROMPT, ANSWER, "ntp", eos_id=SEP, mask_id=MASK, min_answer_tokens=0)
    assert r.input_ids == [2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3]
    assert r.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3]


def test_meap_copy_exact():
    rows = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[1, 4])
    b = pad_rows(rows, pad_id=0)
    assert torch.equal(b["input_ids"], t([[2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3],
                                          [2, 10, 11, 12, 20, 4, 22, 23, 4, 25, 3]]))
    assert torch.equal(b["labels"], t([[X, X, X, X, 20, 21, 22, 23, 24, 25, 3],
                                       [X, X, X, X, X, 21, X, X, 24, X, X]]))
    assert torch.equal(b["attention_mask"], torch.ones(2, 11, dtype=torch.long))


def test_meap_concat_exact():
    (r,) = build_rows(PROMPT, ANSWER, "meap_concat", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[1, 4])
    assert r.input_ids == [2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3] + [2, 10, 11, 12, 20, 4, 22, 23, 4, 25, 3]
    assert r.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3] + [X, X, X, X, X, 21, X, X, 24, X, X]
    (ra,) = build_rows(PROMPT, ANSWER, "meap_concat", eos_id=SEP, mask_id=MASK, min_answer_tokens=4,
                       positions=[1, 4], concat_copy_labels="answer")
    assert ra.input_ids == r.input_ids
    assert ra.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3] * 2


@pytest.mark.parametrize("variant", ["meap_copy", "meap_concat"])
def test_threshold_short_answers_plain_ntp(variant):
    rows = build_rows(PROMPT, ANSWER, variant, eos_id=SEP, mask_id=MASK, min_answer_tokens=6)
    (ntp,) = build_rows(PROMPT, ANSWER, "ntp", eos_id=SEP, mask_id=MASK)
    assert len(rows) == 1 and rows[0] == ntp


def test_padding_and_random_positions():
    rows = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=0,
                      mask_ratio=0.1, rng=random.Random(0))
    assert sum(i == MASK for i in rows[1].input_ids) == 2  # max(min_masks=2, int(6 * 0.1))
    one = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=0,
                     mask_ratio=0.1, rng=random.Random(0), min_masks=1)
    assert sum(i == MASK for i in one[1].input_ids) == 1  # the official count rule max(1, int(6 * 0.1))
    assert all(lab != MASK for r in rows for lab in r.labels)
    short = build_rows(PROMPT, ANSWER[:2], "ntp", eos_id=SEP, mask_id=MASK)[0]
    b = pad_rows([rows[0], short], pad_id=0)
    assert torch.equal(b["input_ids"][1], t([2, 10, 11, 12, 20, 21, 3, 0, 0, 0, 0]))
    assert torch.equal(b["labels"][1], t([X, X, X, X, 20, 21, 3, X, X, X, X]))
    assert torch.equal(b["attention_mask"][1], t([1] * 7 + [0] * 4))
    assert choose_mask_positions(20, 0.25, random.Random(1)) == sorted(set(choose_mask_positions(20, 0.25, random.Random(1))))
    assert len(choose_mask_positions(20, 0.25, random.Random(1))) == 5
    with pytest.raises(ValueError):
        build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=0, positions=[6])


def test_fit_sft_runs_and_learns():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=64, pad_token_id=0))
    cfg = SftConfig(budget="steps", steps=10, batch_size=4, lr=1e-2, min_answer_tokens=2, mask_ratio=0.3)
    pairs = [([CLS, 10 + i % 5, 11], [20 + i % 5, 30, 31, 32]) for i in range(8)]
    for variant in ("ntp", "meap_copy", "meap_concat"):
        rows = sft_rows(pairs, variant, cfg, eos_id=SEP, mask_id=MASK, seed=0)
        assert len(rows) == (16 if variant == "meap_copy" else 8)
    rows = sft_rows(pairs, "meap_concat", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    before = model(**pad_rows(rows, 0)).loss.item()
    summary = fit_sft(model, rows, cfg, pad_id=0, seed=0)
    after = model(**pad_rows(rows, 0)).loss.item()
    assert summary["steps"] == 10 and after < before



# ---- issue 14: the masked input must reach the loss ---------------------------------------------
def tiny_llama(vocab=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=512, pad_token_id=0)).eval()


def shipped_items(n=12):
    """SFT items built as finetune.retrieval builds them, with the shipped tiny config's facts."""
    from finetune.retrieval import Encoder, FillerPool, RetrievalConfig, TaskGenerator, train_items
    from pipeline.config import load_config

    cfg = load_config(RetrievalConfig, "configs/finetune/retrieval-tiny.yaml")
    vocab: dict[str, int] = {}
    enc = Encoder(lambda text: [vocab.setdefault(c, 5 + len(vocab) % 59) for c in text])  # one token per char
    text = "中华人民共和国成立以来，各地经济建设取得了巨大成就。人民群众的生活水平不断提高。" * 4
    gen = TaskGenerator(enc, FillerPool.from_texts([text], enc), cfg.facts, bos_id=CLS, sep_id=SEP)
    return cfg, train_items(gen, cfg, n, seed=3)


@pytest.mark.parametrize("variant", ["meap_copy", "meap_concat"])
def test_shipped_config_loss_changes_when_mask_replaced_by_clean_token(variant):
    cfg, items = shipped_items()
    rows = sft_rows([(it.prompt, it.answer) for it in items], variant, cfg.sft, eos_id=SEP, mask_id=MASK, seed=0)
    batch = pad_rows(rows, pad_id=0)
    ids = batch["input_ids"]
    masked = ids == MASK
    assert masked.any()
    # every masked position is labelled with its clean token (masked-label copies): put it back
    clean = torch.where(masked, batch["labels"], ids)
    assert not (clean == MASK).any() and (clean[masked] != IGNORE).all()
    model = tiny_llama()
    with torch.no_grad():
        loss_masked = model(**batch).loss
        loss_clean = model(input_ids=clean, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert not torch.equal(loss_masked, loss_clean)
    # and per row: every masked row has a labelled position with a mask before it
    for r in rows:
        if MASK in r.input_ids:
            assert mask_reach(r, MASK)[1] >= 1


def test_guard_refuses_masks_that_reach_no_label():
    from pipeline.errors import UserError

    pairs = [([CLS, 10 + i, 11], [20 + i, 30, 31, 32]) for i in range(4)]
    one_mask = SftConfig(min_answer_tokens=1, mask_ratio=0.1, min_masks=1)
    for variant in ("meap_copy", "meap_concat"):
        with pytest.raises(UserError, match="plain ntp"):
            sft_rows(pairs, variant, one_mask, eos_id=SEP, mask_id=MASK, seed=0)
    # answers not longer than the threshold: no masked row at all
    with pytest.raises(UserError, match="min_answer_tokens=4"):
        sft_rows(pairs, "meap_copy", SftConfig(min_answer_tokens=4), eos_id=SEP, mask_id=MASK, seed=0)
    # one mask is enough when the whole copy is labelled (eos sees it)
    ok = SftConfig(min_answer_tokens=1, mask_ratio=0.1, min_masks=1, concat_copy_labels="answer")
    stats: dict = {}
    rows = sft_rows(pairs, "meap_concat", ok, eos_id=SEP, mask_id=MASK, seed=0, stats=stats)
    assert len(rows) == 4 and stats["masked_rows"] == 4 and stats["labels_after_mask"] >= 4
    assert sft_rows(pairs, "ntp", one_mask, eos_id=SEP, mask_id=MASK, seed=0)  # ntp is never refused


def test_mask_reach_exact():
    (r,) = build_rows(PROMPT, ANSWER, "meap_concat", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[1, 4])
    # labels: 7 on the clean copy (none after a mask), 2 on the copy (offset 4 sees the mask at offset 1)
    assert mask_reach(r, MASK) == (9, 1)
    rows = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[3])
    assert mask_reach(rows[1], MASK) == (1, 0)


# ---- issue 14: meap_concat is truncated per copy ------------------------------------------------
NEEDLE = [50, 51, 52, 53]


def long_pair(n_ctx=3000, at=5):
    ctx = [10 + (i % 30) for i in range(n_ctx)]
    ctx[at:at + len(NEEDLE)] = NEEDLE
    return [CLS] + ctx + [60, 61, 62], [20, 21, 22, 23, 24, 25, 26, 27]


def check_copy_aligned(row_ids, row_labels, prompt, answer, masked_labels_only):
    """A copy = the end of [prompt; answer; eos]; its labels sit on the answer (+ eos)."""
    full = list(prompt) + list(answer) + [SEP]
    n = len(row_ids)
    for i, (t, lab) in enumerate(zip(row_ids, row_labels)):
        src = full[len(full) - n + i]
        assert t == src or t == MASK
        if t == MASK:
            assert lab == src
        in_answer = len(full) - n + i >= len(prompt)
        if not in_answer:
            assert lab == IGNORE
        elif not masked_labels_only:
            assert lab == src


def test_meap_concat_long_row_keeps_needle_in_both_copies():
    prompt, answer = long_pair()
    cfg = SftConfig(min_answer_tokens=4, mask_ratio=0.25, max_len=4096)  # ntp row 3012 fits, [X; X'] does not
    (row,) = sft_rows([(prompt, answer)], "meap_concat", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    n = len(prompt) + len(answer) + 1
    assert len(row.input_ids) == 2 * n
    first, second = row.input_ids[:n], row.input_ids[n:]
    assert first[0] == CLS and second[0] == CLS
    for copy in (first, second):
        assert copy[6:10] == NEEDLE
    check_copy_aligned(first, row.labels[:n], prompt, answer, masked_labels_only=False)
    check_copy_aligned(second, row.labels[n:], prompt, answer, masked_labels_only=True)
    assert sum(t == MASK for t in second) == 2 and MASK not in first
    (ntp,) = sft_rows([(prompt, answer)], "ntp", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    assert ntp.input_ids == first and ntp.labels == row.labels[:n]


def test_meap_concat_half_truncation_cuts_both_copies_alike():
    prompt, answer = long_pair(n_ctx=1500, at=1200)
    cfg = SftConfig(min_answer_tokens=4, mask_ratio=0.25, max_len=1024, concat_truncation="half")
    (row,) = sft_rows([(prompt, answer)], "meap_concat", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    assert len(row.input_ids) == 1024
    first, second = row.input_ids[:512], row.input_ids[512:]
    assert [t for t in first] == [f if s != MASK else f for f, s in zip(first, second)]
    assert all(f == s or s == MASK for f, s in zip(first, second))
    for copy in (first, second):  # the needle (300 tokens before the query) survives in both
        starts = [i for i in range(len(copy) - 3) if copy[i:i + 4] == NEEDLE]
        assert len(starts) == 1 and starts[0] == 512 - (len(prompt) + len(answer) + 1 - 1 - 1200)
    check_copy_aligned(first, row.labels[:512], prompt, answer, masked_labels_only=False)
    check_copy_aligned(second, row.labels[512:], prompt, answer, masked_labels_only=True)


# ---- issue 14: equal supervision --------------------------------------------------------------
class RecordingModel(torch.nn.Module):
    """Records every batch row it is trained on; its loss is a function of one weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, 2))
        self.seen: list[tuple] = []

    def forward(self, input_ids, attention_mask=None, labels=None):
        for r, a in zip(input_ids.tolist(), attention_mask.tolist()):
            self.seen.append(tuple(t for t, m in zip(r, a) if m))
        return type("O", (), {"loss": (self.w ** 2).sum()})()


@pytest.mark.parametrize("budget", ["epochs", "steps"])
def test_budget_clean_answer_seen_equally(budget):
    pairs = [([CLS, 10 + i, 11], [20 + i, 30, 31, 32, 33]) for i in range(8)]
    cfg = SftConfig(budget=budget, epochs=3, steps=8, batch_size=4, min_answer_tokens=2, mask_ratio=0.4)
    seen_clean = {}
    for variant in ("ntp", "meap_copy", "meap_concat"):
        rows = sft_rows(pairs, variant, cfg, eos_id=SEP, mask_id=MASK, seed=0)
        model = RecordingModel()
        summary = fit_sft(model, rows, cfg, pad_id=0, seed=0)
        clean = {tuple(ntp_ids) for ntp_ids in (list(p) + list(a) + [SEP] for p, a in pairs)}
        counts = {c: sum(s[:len(c)] == c for s in model.seen) for c in clean}
        seen_clean[variant] = counts
        assert summary["budget"] == budget
        if budget == "epochs":
            assert summary["steps"] == 3 * -(-len(rows) // 4) and summary["epochs"] == 3
            assert set(counts.values()) == {3}  # every clean answer seen 3 times, whatever the variant
        else:
            assert summary["steps"] == 8
    if budget == "steps":  # the old rule: meap_copy sees each clean answer half as often as ntp
        assert sum(seen_clean["meap_copy"].values()) * 2 == sum(seen_clean["ntp"].values())


# ---- issue 17: decoder SFT is a task kind of the one fine-tuning loop ---------------------------
def test_decoder_sft_kind_rows_collate_and_token_accuracy():
    from finetune.kinds.base import KindOptions, get_kind
    from finetune.kinds.decoder_sft import SftTask

    cfg = SftConfig(min_answer_tokens=4, mask_ratio=0.3)
    task = SftTask(name="t", kind="decoder_sft", train=[{"prompt": PROMPT, "answer": ANSWER}] * 3, dev=[], test=[],
                   variant="meap_copy", sft=cfg, eos_id=SEP, mask_id=MASK, pad_id=0, seed=5)
    kind = get_kind("decoder_sft")(task, 0, KindOptions())
    feats = kind.features(task.train, "train")
    rows = sft_rows([(PROMPT, ANSWER)] * 3, "meap_copy", cfg, eos_id=SEP, mask_id=MASK, seed=5)
    assert [(f["input_ids"], f["labels"]) for f in feats] == [(r.input_ids, r.labels) for r in rows]
    assert kind.row_stats["train"]["rows"] == 6 and kind.row_stats["train"]["masked_rows"] == 3
    batch = kind.collate(feats[:2])
    assert all(torch.equal(batch[k], pad_rows(rows[:2], 0)[k]) for k in ("input_ids", "labels", "attention_mask"))
    # logits at i-1 predict labels[i]: right on every labelled position but the last of row 0;
    # a [MASK] logit above the right one is excluded from the arg-max
    V = 40
    logits = torch.zeros(2, batch["input_ids"].shape[1], V)
    for b in range(2):
        for i in range(1, logits.shape[1]):
            if batch["labels"][b, i] != IGNORE:
                logits[b, i - 1, batch["labels"][b, i]] = 1.0
                logits[b, i - 1, MASK] = 3.0
    last = max(i for i in range(logits.shape[1]) if batch["labels"][0, i] != IGNORE)
    logits[0, last - 1, 39] = 2.0
    pred = kind.predict({"logits": logits}, batch)
    n0, n1 = int((batch["labels"][0] != IGNORE).sum()), int((batch["labels"][1] != IGNORE).sum())
    assert pred == [(n0 - 1, n0), (n1, n1)]
    assert kind.score(pred, feats[:2]) == {"token_acc": pytest.approx(100.0 * (n0 + n1 - 1) / (n0 + n1))}


def test_fit_sft_step_budget_stops_inside_an_epoch():
    pairs = [([CLS, 10 + i, 11], [20 + i, 30]) for i in range(8)]
    cfg = SftConfig(budget="steps", steps=3, batch_size=4)
    rows = sft_rows(pairs, "ntp", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    model = RecordingModel()
    summary = fit_sft(model, rows, cfg, pad_id=0, seed=0)
    assert summary["steps"] == 3 and summary["epochs"] == 1.5
    assert len(model.seen) == 12
    assert sorted(model.seen[:8]) == sorted(tuple(r.input_ids) for r in rows)  # one full pass, then half of the next
    assert 0 < summary["final_loss"] < 4.0  # sum(w ** 2) starts at 4 and the optimizer steps lower it


def test_decoder_sft_task_through_the_suite_loop(tmp_path):
    """An SftTask goes through ``train_grid_point`` like any task: the kind loads the export's causal
    LM, the loop keeps the dev-best state, the test score is the kind's main metric."""
    from finetune.config import FinetuneConfig
    from finetune.kinds.decoder_sft import SftTask
    from finetune.tasks import TaskConfig
    from finetune.train import train_grid_point
    from test_retrieval_cli import save_tiny_decoder

    d = tmp_path / "m"
    d.mkdir()
    tok = save_tiny_decoder(d)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    ex = [{"prompt": [CLS] + enc(k + "的密码是"), "answer": enc(v)} for k, v in
          (("天地", "1234-5678"), ("山水", "8765-4321"), ("风云", "1357-2468"), ("江河", "9753-8642"))]
    task = SftTask(name="sft", kind="decoder_sft", train=ex * 4, dev=ex, test=ex, variant="meap_concat",
                   sft=SftConfig(min_answer_tokens=2, mask_ratio=0.3), eos_id=SEP, mask_id=MASK)
    cfg = FinetuneConfig(batch_size=4, eval_batch_size=8, evals_per_epoch=1, device="cpu", warmup=0.0)
    r = train_grid_point(str(d), False, task, TaskConfig(name="sft"), cfg, lr=1e-2, epochs=4, seed=0)
    assert r["test"] == r["test_metrics"]["token_acc"] and len(r["curve"]) == 4
    assert r["dev"] == max(c["dev"]["token_acc"] for c in r["curve"])
    assert r["curve"][-1]["train_loss"] < r["curve"][0]["train_loss"]  # it learns the answers


@pytest.mark.parametrize("variant", ["ntp", "meap_concat"])
def test_training_loss_at_labelled_positions_equals_the_models_loss_and_gradients(variant):
    """The kind's training forward applies the LM head only where a label is predicted: the same loss
    and the same gradients as the model's own full-logits loss (padded rows of unequal length)."""
    from finetune.kinds.base import KindOptions, get_kind
    from finetune.kinds.decoder_sft import SftTask, labelled_head_ok

    cfg, items = shipped_items()
    rows = sft_rows([(it.prompt, it.answer) for it in items], variant, cfg.sft, eos_id=SEP, mask_id=MASK, seed=0)
    batch = pad_rows(rows, pad_id=0)
    assert (batch["attention_mask"] == 0).any()  # unequal lengths: padding inside the batch
    task = SftTask(name="t", kind="decoder_sft", train=[], dev=[], test=[], sft=cfg.sft, mask_id=MASK, pad_id=0)
    kind = get_kind("decoder_sft")(task, 0, KindOptions())
    model = tiny_llama().train()
    assert labelled_head_ok(model)
    out = kind(model, batch)
    assert out["logits"] is None  # the fast path ran
    out["loss"].backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(**batch).loss
    ref.backward()
    assert torch.allclose(out["loss"], ref, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(fast[n], p.grad, rtol=1e-5, atol=1e-7), n
    # evaluation keeps the full logits (token accuracy reads them)
    model.eval()
    with torch.no_grad():
        assert kind(model, batch)["logits"].shape[:2] == batch["input_ids"].shape


def test_labelled_head_only_for_the_transformers_llama_class():
    """A class that only reports ``model_type: llama`` (remote code with its own forward or loss) keeps
    the model's own loss: the fast path is for the ``transformers`` Llama class."""
    from transformers import LlamaForCausalLM

    from finetune.kinds.decoder_sft import labelled_head_ok

    class OwnLoss(LlamaForCausalLM):  # e.g. a trust_remote_code class with a scaled loss
        pass

    model = tiny_llama()
    assert labelled_head_ok(model)
    assert not labelled_head_ok(OwnLoss(model.config))
