"""Coverage of relation phrases and kinds of output on unseen facts (kaol.mechanism, Thm. 2.2-2.3)."""
from __future__ import annotations

import numpy as np

import torch

from kaol.data import CTX_FREQ, DataConfig, entropy, make_data
from kaol.mechanism import (OUTPUTS, coverage, covered_phrases, fact_table, loss_gap, output_counts,
                            output_kind, qa_attention, relation_mass, success_by_coverage, unseen_facts)
from kaol.model import ModelConfig, init_params
from kaol.train import Schedule, pretrain

CFG = DataConfig(N_f=12, N_r=6, R=8, K=3, N_ft=4, seed=3)


def test_covered_phrases_are_the_union_of_the_fine_tuning_phrases() -> None:
    d = make_data(CFG)
    union = set(np.concatenate([d.phrases[i] for i in d.ft]).tolist())
    assert set(np.flatnonzero(covered_phrases(d)).tolist()) == union


def test_coverage_per_unseen_fact() -> None:
    d = make_data(CFG)
    cov, covered = coverage(d), covered_phrases(d)
    facts = unseen_facts(d)
    assert len(cov) == len(d.unseen_freq) + len(d.rare) == len(facts)
    for c, i in zip(cov, facts):
        assert c == np.mean([covered[k] for k in d.phrases[i]])
    full = make_data(CFG.with_(N_ft=CFG.N_f - 1, R=CFG.K))     # R = K: every phrase is covered
    assert np.all(coverage(full) == 1.0)


def test_output_kinds() -> None:
    d = make_data(CFG)
    v, facts = d.vocab, unseen_facts(d)
    other = [j for j in facts if j != facts[0]][0]
    pred = np.full(len(facts), v.q)
    pred[:5] = [v.a(int(facts[0])), v.r(0), v.a(int(d.ft[0])), v.a(int(other)), v.s(0)]
    pred[5] = v.a(int(facts[5]))
    codes = output_kind(pred, d)
    assert codes[:7].tolist() == [0, 1, 2, 3, 4, 0, 5]
    counts = output_counts(d, pred)
    assert list(counts.index) == list(OUTPUTS) and counts.sum() == len(facts)
    table = fact_table(d, pred)
    assert table["correct"].sum() == 2 and table["output"].iloc[1] == "relation phrase"
    by = success_by_coverage(table)
    assert by["facts"].sum() == len(facts)


def test_qa_attention_is_near_uniform_at_initialisation() -> None:
    d = make_data(CFG)
    W = init_params(ModelConfig(), d.vocab.size, 2, 0)["W"]
    S = qa_attention(W, d)
    assert S.shape == (2, CFG.N_ft, 2)
    assert np.allclose(S.sum(-1), 1, atol=1e-6) and np.abs(S - 0.5).max() < 0.01


def test_shared_phrase_of_hallucinated_answers() -> None:
    from kaol.mechanism import chance_of_shared_phrase
    d = make_data(CFG)
    v, facts = d.vocab, unseen_facts(d)
    j = int(d.ft[0])
    pred = np.full(len(facts), v.a(j))
    table = fact_table(d, pred)
    expect = [bool(set(d.phrases[i]) & set(d.phrases[j])) for i in facts]
    assert table["shares phrase"].tolist() == expect
    assert 0.0 <= chance_of_shared_phrase(d) <= 1.0
    assert fact_table(d, np.full(len(facts), v.q))["shares phrase"].isna().all()


def test_loss_gap_sums_to_loss_minus_entropy_and_counts_dead_pairs() -> None:
    """The rows' excess cross-entropy adds up to loss - H (Thm. 2.1); with V = 0 every
    phrase logit is 0, so all K phrases of every frequent context are dead. Two runs with
    their own K (row counts): the shorter run's rows are padded (weight 0, kind -1)."""
    model = ModelConfig(m=3)
    data = [make_data(CFG.with_(seed=0)), make_data(CFG.with_(seed=1, K=2))]
    n = [len(d.pretrain) for d in data]
    assert n[1] < n[0]
    params, hist = pretrain(data, model, Schedule((2.0, 10.0, 5.0), 2, 10, 20), seed=[0, 1])
    gap = loss_gap(params, data, model)
    assert gap.w.shape == (2, n[0]) and (gap.kind[1, n[1]:] == -1).all() and (gap.w[1, n[1]:] == 0).all()
    assert np.allclose(gap.gap, hist.loss[-1] - [entropy(d.cfg) for d in data], atol=1e-5)
    tab = gap.table()
    assert len(tab) == 2 and (tab["share of the gap"].between(0, 1)).all()
    assert ((gap.dead >= 0) & (gap.dead <= CFG.K)).all() and (gap.dead[gap.kind != CTX_FREQ] == 0).all()
    zero = {"W": params["W"], "V": torch.zeros_like(params["V"])}
    dead = loss_gap(zero, data, model)
    for b, d in enumerate(data):
        assert (dead.dead[b][dead.kind[b] == CTX_FREQ] == d.cfg.K).all()
    assert list(dead.table()["dead pairs"]) == [d.cfg.N_f * d.cfg.K for d in data]
    assert np.allclose(dead.table()["share of the gap"], (dead.w * dead.excess * (dead.kind == CTX_FREQ)).sum(1)
                       / dead.gap)


def test_relation_mass_is_uniform_at_zero_V_and_grows_with_the_relation_logits() -> None:
    """``p_R`` of Prop. 2: R / vocab_size for equal logits; 1 when relation logits dominate."""
    model = ModelConfig(m=3)
    d = make_data(CFG)
    params = init_params(model, d.vocab.size, 1, 0)
    V = torch.zeros_like(params["V"])
    assert np.allclose(relation_mass({"W": params["W"], "V": V}, [d], model), CFG.R / d.vocab.size)
    rel = [d.vocab.r(k) for k in range(CFG.R)]
    V[0, :, :, rel] = 10.0
    assert relation_mass({"W": params["W"], "V": V}, [d], model)[0] > 0.99
