"""PopQA-layout loader (kaol.popqa; paper Sec. 7.1, App. K and L)."""
import pandas as pd
import pytest

from kaol import popqa


@pytest.mark.parametrize("prop", ["director", "capital"])
def test_offline_tables_have_popqa_columns(prop):
    df = popqa.load(prop)
    assert list(df.columns) == list(popqa.COLUMNS)
    assert (df["prop"] == prop).all()
    assert df["s_pop"].is_monotonic_decreasing
    assert all(isinstance(a, list) and a for a in df["possible_answers"])
    assert len(df) > 200


def test_known_facts():
    cap = popqa.load("capital").set_index("subj")
    assert cap.loc["India", "obj"] == "New Delhi"
    direc = popqa.load("director")
    assert direc.iloc[0]["subj"] == "The Shawshank Redemption"


def test_all_relations_and_bad_prop():
    df = popqa.load()
    assert set(df["prop"]) == {"director", "capital"}
    with pytest.raises(ValueError, match="offline"):
        popqa.load("occupation")


def test_local_tsv_source(tmp_path):
    src = popqa.DATA_DIR / "capital.tsv"
    extra = pd.read_csv(src, sep="\t").assign(id=1)   # PopQA's file has more columns
    path = tmp_path / "popQA.tsv"
    extra.to_csv(path, sep="\t", index=False)
    assert popqa.load("capital", source=path).equals(popqa.load("capital"))


def test_split_by_popularity():
    df = popqa.load("capital")
    sp = popqa.split_by_popularity(df, n_train=40, n_test=50, seed=0)
    assert len(sp.frequent) == len(sp.rare) == 40 and len(sp.test) == 50
    sets = [set(x["subj"]) for x in (sp.frequent, sp.rare, sp.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sp.frequent["s_pop"].min() > sp.rare["s_pop"].max()
    with pytest.raises(ValueError):
        popqa.split_by_popularity(df, 200, 100)


def test_prompts_follow_the_paper():
    df = popqa.load("capital").head(1)
    assert popqa.prompts(df) == ["Question: Where is the capital of China? Answer:"]
    assert popqa.pairs(df) == [("Question: Where is the capital of China? Answer:", ["Beijing"])]
