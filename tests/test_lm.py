"""kaol.lm: scoring rules (Sec. 7.1), GPT-2 without positional encoding (App. J.2), training."""
import pytest
import torch

pytest.importorskip("transformers")

from kaol import lm
from kaol.data import DataConfig, make_data


def test_squad_normalisation_em_f1():
    assert lm.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert lm.exact_match("the Beijing.", ["Beijing"]) == 1.0
    assert lm.exact_match("Beijing city", ["Beijing"]) == 0.0
    assert lm.f1_score("Beijing city", ["Beijing"]) == pytest.approx(2 / 3)
    assert lm.f1_score("New Delhi", ["Delhi", "New Delhi"]) == 1.0
    assert lm.f1_score("Paris", ["Rome"]) == 0.0
    s = lm.score(["Beijing", "Rome"], [["Beijing"], ["Paris"]])
    assert s["em"] == pytest.approx(50.0) and s["popqa"] == pytest.approx(50.0)


def test_popqa_rule_substring():
    assert lm.popqa_match("I think it is new delhi, India", ["New Delhi"]) == 1.0
    assert lm.popqa_match("Mumbai", ["New Delhi"]) == 0.0
    assert lm.first_line("\n\n Beijing \nQuestion: x") == "Beijing"


def _tiny(positional: bool, n_layer: int = 1):
    return lm.build_gpt2(12, lm.GPT2Size(n_layer, 2, 16), n_positions=8, positional=positional, seed=0).eval()


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


def test_tiny_gpt2_step_lowers_synthetic_loss():
    torch.manual_seed(0)
    data = make_data(DataConfig(N_f=8, N_r=4, R=4, K=2, N_ft=4))
    seqs, w = lm.synthetic_sequences(data)
    assert seqs.shape == (8 * 2 + 4, 4)
    m = lm.build_gpt2(data.vocab.size + 1, lm.GPT2Size(1, 1, 16), n_positions=8)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    before = lm.synthetic_pt_loss(m, seqs, w)
    for _ in range(3):
        loss = lm.synthetic_pt_loss(m, seqs, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lm.synthetic_pt_loss(m, seqs, w) < before
    assert m.transformer.wpe.weight.abs().max() == 0


def test_word_tokenizer_round_trip_and_director_facts():
    import pandas as pd
    df = pd.DataFrame({"subj": ["The Cell", "Atlantic"], "obj": ["Tarsem Singh", "Ewald André Dupont"]})
    facts = lm.director_facts(df, K=2, R=4, seed=0)
    assert len(facts.sentences) == 4 and facts.prompts[1] == "Question: Who was the director of Atlantic? Answer:"
    tok = lm.word_tokenizer(facts.sentences + facts.prompts)
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[EOS]") == 1
    ids = tok.encode("Atlantic was helmed by Ewald André Dupont").ids if "was helmed by" in " ".join(facts.sentences) \
        else tok.encode(facts.sentences[2]).ids
    assert tok.token_to_id("[UNK]") not in ids
    assert lm._first_phrase(facts, 1) in lm.DIRECTOR_PHRASES
