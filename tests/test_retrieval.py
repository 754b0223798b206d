"""The synthetic retrieval task generator, its scoring and summaries (no pipeline run needed)."""

import random

import numpy as np
import pytest
import torch

from finetune.retrieval import (
    Encoder, FactConfig, FillerPool, MdqaConfig, NeedleConfig, RetrievalConfig, TaskGenerator, eval_items,
    find_subseq, score_generate, score_teacher_forced, summarise, train_items,
)

TEXT = ("中华人民共和国成立以来，各地经济建设取得了巨大成就。人民群众的生活水平不断提高，"
        "科学技术事业蓬勃发展，教育文化卫生事业全面进步。") * 3

VOCAB: dict[str, int] = {}


def char_encode(text: str) -> list[int]:
    """A toy char tokenizer (ids >= 5, so they never collide with the specials 0..4)."""
    return [VOCAB.setdefault(c, 5 + len(VOCAB)) for c in text]


def make_gen(text=TEXT, facts=None):
    enc = Encoder(char_encode)
    return TaskGenerator(enc, FillerPool.from_texts([text], enc), facts or FactConfig(), bos_id=2, sep_id=3), enc


@pytest.mark.parametrize("length", [40, 97, 200])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_needle_depth_exact_and_answer_recoverable(length, depth):
    gen, enc = make_gen()
    item = gen.needle(length, depth, random.Random(7))
    fact = enc(item.key) + enc("的密码是") + enc(item.value) + enc("。")
    n = len(fact)
    assert item.position == round(depth * (length - n))
    # the haystack is exactly `length` tokens and the fact starts where we say
    query = enc("问：") + enc(item.key) + enc("的密码是多少？答：") + enc(item.key) + enc("的密码是")
    assert len(item.prompt) == 1 + length + len(query)
    assert item.prompt[0] == 2
    assert item.prompt[item.fact_start:item.fact_start + n] == fact
    assert item.fact_start == 1 + item.position
    # the answer is the value, and it follows the (unique) key in the context
    assert item.answer == enc(item.value)
    context = item.prompt[1:1 + length]
    key_hits = find_subseq(context, enc(item.key))
    assert key_hits == [item.position]
    after = item.position + len(enc(item.key)) + len(enc("的密码是"))
    assert context[after:after + len(item.answer)] == item.answer
    assert item.prompt[-len(query):] == query


def test_mdqa_gold_position_and_unique_keys():
    gen, enc = make_gen()
    for gold in range(4):
        item = gen.mdqa(4, 20, gold, random.Random(gold))
        assert item.position == gold and item.length == 4
        assert item.depth == pytest.approx(gold / 3)
        ctx = item.prompt
        seps = [i for i, t in enumerate(ctx) if t == 3]
        assert len(seps) == 4  # 3 between documents + 1 before the query
        # the gold fact lies inside document `gold`
        doc_bounds = [0] + seps
        assert doc_bounds[gold] < item.fact_start < doc_bounds[gold + 1]
        fact = enc(item.key) + enc("的密码是") + enc(item.value) + enc("。")
        assert ctx[item.fact_start:item.fact_start + len(fact)] == fact
        # the key appears once in the documents (and twice in the query)
        hits = find_subseq(ctx, enc(item.key))
        assert hits[0] == item.fact_start and all(h > seps[-1] for h in hits[1:]) and len(hits) == 3
        # the document header of the gold document
        assert ctx[doc_bounds[gold] + 1:doc_bounds[gold] + 1 + len(enc(f"文档{gold + 1}："))] == enc(f"文档{gold + 1}：")


def test_grid_and_train_items_deterministic():
    gen, _ = make_gen()
    cfg = RetrievalConfig(needle=NeedleConfig(context_lengths=[40, 80], depths=[0.0, 0.5, 1.0], n_per_cell=2),
                          mdqa=MdqaConfig(n_docs=3, doc_tokens=10, n_per_position=2))
    items = eval_items(gen, cfg, seed=1)
    assert len(items) == 2 * 3 * 2 + 3 * 2
    again = eval_items(gen, cfg, seed=1)
    assert [i.prompt for i in items] == [i.prompt for i in again]
    tr = train_items(gen, cfg, 6, seed=2)
    assert [i.task for i in tr] == ["needle", "mdqa"] * 3


def test_key_collision_redrawn():
    # filler that contains every possible key: the generator must fail loudly, not return an ambiguous item
    facts = FactConfig(key_chars="ab", key_len=1, value_chars="01", value_len=2)
    gen, _ = make_gen(text="ab" * 50, facts=facts)
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        gen.needle(30, 0.5, random.Random(0))


def test_find_subseq():
    assert find_subseq([1, 2, 3, 1, 2], [1, 2]) == [0, 3]
    assert find_subseq([1, 2], [1, 2, 3]) == []


class CopyModel(torch.nn.Module):
    """Predicts the token that followed the previous occurrence of the current token: a perfect
    induction head, so it solves every item whose key/value tokens are distinct."""

    def __init__(self, vocab=256, suppress_bias=None):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            seq = input_ids[b].tolist()
            for t in range(T):
                nxt = 4  # [MASK] wins when nothing matches: must be suppressed
                for s in range(t - 1, -1, -1):
                    if seq[s] == seq[t] and s + 1 <= t:
                        nxt = seq[s + 1]
                        break
                logits[b, t, nxt] = 10.0
                logits[b, t, 4] = max(logits[b, t, 4], 5.0)
        return type("O", (), {"logits": logits})()


def test_teacher_forced_scoring_and_summary(tmp_path):
    facts = FactConfig(key_chars="甲乙丙丁戊己庚辛", value_chars="ABCDEFGH", value_len=3,
                       query_template="{key}的密码是")
    gen, _ = make_gen(text="，。" * 60, facts=facts)
    items = [gen.needle(60, d, random.Random(i)) for i, d in enumerate([0.0, 0.5, 1.0] * 2)]
    model = CopyModel()
    scores = score_teacher_forced(model, items, pad_id=0, suppress=[4], batch_size=4)
    # an induction copier recovers a value only when its characters are not repeated inside the value
    for it, s in zip(items, scores):
        assert s["correct"] == (s["token_acc"] == 1.0)
        if len(set(it.value)) == len(it.value):
            assert s["correct"], it.value
    assert any(s["correct"] for s in scores)
    summ = summarise(items, scores)
    assert summ["needle"]["token_accuracy"] == pytest.approx(100.0 * sum(s["token_acc"] for s in scores) / len(scores))
    assert summ["needle"]["n"] == 6 and set(summ["needle"]["by_length"]["60"]) == {"0.0", "0.5", "1.0"}
    # token accuracy by depth: the mean of the items' token accuracies in each cell
    for d in ("0.0", "0.5", "1.0"):
        cell = [100.0 * s["token_acc"] for it, s in zip(items, scores) if str(it.depth) == d]
        assert summ["needle"]["token_by_length"]["60"][d] == pytest.approx(sum(cell) / len(cell))
    # without suppression the [MASK] logit never wins here (10 > 5), so the results agree
    assert [s["correct"] for s in score_teacher_forced(model, items, pad_id=0, batch_size=3)] == \
        [s["correct"] for s in scores]
    from evaluate.retrieval_report import cells, report_lines

    rec = {"model": "m", "seed": 0, "results": {"cells": {"none": {"needle": summ["needle"]}}}}
    agg = cells([rec, {**rec, "seed": 1}])
    assert agg["m"]["none"]["needle"]["tok"]["60"]["0.5"]["mean"] == pytest.approx(summ["needle"]["token_by_length"]["60"]["0.5"])
    assert agg["m"]["none"]["needle"]["acc"]["60"]["0.0"]["n"] == 2
    lines = report_lines(RetrievalConfig(), [rec], tmp_path)
    assert "![needle_by_depth](needle_by_depth.png)" in lines and not (tmp_path / "mdqa_by_position.png").exists()
    assert (tmp_path / "needle_by_depth.png").stat().st_size > 0


def test_teacher_forced_equals_greedy_generate(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=256, pad_token_id=0)
    model = LlamaForCausalLM(conf).eval()
    facts = FactConfig(key_chars="甲乙丙丁戊己庚辛", value_chars="ABCDEFGH", value_len=3)
    VOCAB.clear()
    gen, _ = make_gen(text="天地人和" * 10, facts=facts)
    items = [gen.needle(30, d, random.Random(i)) for i, d in enumerate([0.0, 0.5, 1.0])]
    for it in items:  # make the answer what the random model predicts greedily, for some items
        it.answer = it.answer[:2]
    tf = score_teacher_forced(model, items, pad_id=0, suppress=[4], batch_size=2)
    gg = score_generate(model, items, suppress=[4])
    for it, a, b in zip(items, tf, gg):
        assert a["correct"] == b["correct"]
    for it, b in zip(items, gg):
        it.answer = b["generated"]
    tf2 = score_teacher_forced(model, items, pad_id=0, suppress=[4], batch_size=2)
    assert all(s["correct"] for s in tf2)
    assert all(4 not in b["generated"] for b in gg)


def test_multi_value_fact_answer_long_and_recoverable():
    facts = FactConfig(value_len=4, value_groups=3, value_sep="-")
    gen, enc = make_gen(facts=facts)
    item = gen.needle(80, 0.5, random.Random(3))
    groups = item.value.split("-")
    assert len(groups) == 3 and all(len(g) == 4 and g.isdigit() for g in groups)
    assert len(item.answer) == 14 and item.answer == enc(item.value)
    assert find_subseq(item.prompt, item.answer) == [item.fact_start + len(enc(item.key)) + len(enc("的密码是"))]
    with pytest.raises(ValueError, match="value_sep"):
        FactConfig(value_groups=2, value_sep="1").validate()
