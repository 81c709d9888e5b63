"""The language-model modules: scoring rules (``kaol.scoring``, Sec. 7.1), GPT-2 without positional
encoding (``kaol.gpt2``, App. J.2), the training loop (``kaol.lmtrain``), the director facts
(``kaol.gpt2_text``, App. K)."""
import pytest
import torch

pytest.importorskip("transformers")

from kaol import gpt2, gpt2_synthetic, gpt2_text, lmtrain, scoring
from kaol.data import DataConfig, make_data


def test_squad_normalisation_em_f1():
    assert scoring.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert scoring.exact_match("the Beijing.", ["Beijing"]) == 1.0
    assert scoring.exact_match("Beijing city", ["Beijing"]) == 0.0
    assert scoring.f1_score("Beijing city", ["Beijing"]) == pytest.approx(2 / 3)
    assert scoring.f1_score("New Delhi", ["Delhi", "New Delhi"]) == 1.0
    assert scoring.f1_score("Paris", ["Rome"]) == 0.0
    s = scoring.score(["Beijing", "Rome"], [["Beijing"], ["Paris"]])
    assert s["em"] == pytest.approx(50.0) and s["popqa"] == pytest.approx(50.0)


def test_popqa_rule_substring():
    assert scoring.popqa_match("I think it is new delhi, India", ["New Delhi"]) == 1.0
    assert scoring.popqa_match("Mumbai", ["New Delhi"]) == 0.0
    assert scoring.first_line("\n\n Beijing \nQuestion: x") == "Beijing"


def _tiny(positional: bool, n_layer: int = 1):
    return gpt2.build_gpt2(12, gpt2.GPT2Size(n_layer, 2, 16), n_positions=8, positional=positional, seed=0).eval()


def test_no_positional_encoding_is_frozen_zero():
    m = _tiny(False)
    assert not m.transformer.wpe.weight.requires_grad
    assert m.transformer.wpe.weight.abs().max() == 0


def test_one_layer_without_pe_ignores_prefix_order():
    """No positional encoding + causal mask: a one-layer model's last output depends on the
    *set* of tokens before it (the paper's model, Sec. 2); with GPT-2's learned positions it does not."""
    x = torch.tensor([[3, 5, 7, 9]])
    y = torch.tensor([[7, 3, 5, 9]])
    with torch.no_grad():
        nope = _tiny(False)
        assert torch.allclose(nope(x).logits[0, -1], nope(y).logits[0, -1], atol=1e-5)
        pe = _tiny(True)
        assert not torch.allclose(pe(x).logits[0, -1], pe(y).logits[0, -1], atol=1e-5)
        # deeper models see order through the causal mask of earlier positions
        deep = _tiny(False, n_layer=2)
        assert not torch.allclose(deep(x).logits[0, -1], deep(y).logits[0, -1], atol=1e-5)


def test_tiny_gpt2_steps_lower_synthetic_loss():
    data = make_data(DataConfig(N_f=8, N_r=4, R=4, K=2, N_ft=4))
    seqs, w = gpt2_synthetic.synthetic_sequences(data)
    assert seqs.shape == (8 * 2 + 4, 4)
    m = gpt2.build_gpt2(data.vocab.size + 1, gpt2.GPT2Size(1, 1, 16), n_positions=8)
    before = gpt2_synthetic.synthetic_pt_loss(m, seqs, w).item()
    losses = lmtrain.train(m, lambda sw: gpt2_synthetic.synthetic_pt_loss(m, *sw), (seqs, w), 3, 1e-2)
    assert len(losses) == 3 and losses[0] == before
    assert gpt2_synthetic.synthetic_pt_loss(m, seqs, w).item() < before
    assert m.transformer.wpe.weight.abs().max() == 0


def test_schedule_warmup_then_constant_or_cosine():
    const, cos = lmtrain.schedule(4), lmtrain.schedule(4, cosine_steps=12)
    assert [const(t) for t in (0, 3, 4, 100)] == [0.25, 1.0, 1.0, 1.0]
    assert [cos(t) for t in (0, 3, 4)] == [0.25, 1.0, 1.0]
    assert cos(8) == pytest.approx(0.5) and cos(12) == pytest.approx(0.0)


def test_minibatch_epochs_follow_the_generator():
    """Each epoch is one ``randperm`` of the given generator, cut into batches; the loop calls
    ``after_epoch`` with the epoch number (from 1) and returns one loss per step."""
    lin = torch.nn.Linear(1, 1)
    seen, ends = [], []

    def loss(batch):
        seen.append(batch)
        return lin(torch.tensor([[float(len(batch))]])).sum() ** 2

    g = torch.Generator().manual_seed(3)
    losses = lmtrain.train(lin, loss, list("abcde"), 2, 1e-3, batch=2, generator=g, after_epoch=ends.append)
    perms = torch.Generator().manual_seed(3)
    expected = []
    for _ in range(2):
        perm = torch.randperm(5, generator=perms)
        expected += [["abcde"[i] for i in perm[b:b + 2]] for b in (0, 2, 4)]
    assert seen == expected and ends == [1, 2] and len(losses) == 6


def test_word_tokenizer_round_trip_and_director_facts():
    import pandas as pd
    df = pd.DataFrame({"subj": ["The Cell", "Atlantic"], "obj": ["Tarsem Singh", "Ewald André Dupont"]})
    facts = gpt2_text.director_facts(df, K=2, R=4, seed=0)
    assert len(facts.sentences) == 4 and facts.prompts[1] == "Question: Who was the director of Atlantic? Answer:"
    tok = gpt2_text.word_tokenizer(facts.sentences + facts.prompts)
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[EOS]") == 1
    ids = tok.encode("Atlantic was helmed by Ewald André Dupont").ids if "was helmed by" in " ".join(facts.sentences) \
        else tok.encode(facts.sentences[2]).ids
    assert tok.token_to_id("[UNK]") not in ids
    assert gpt2_text._first_phrase(facts, 1) in gpt2_text.DIRECTOR_PHRASES
