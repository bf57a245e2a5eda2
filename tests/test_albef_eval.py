import numpy as np
import pytest

from models.albef.eval import (attribute_accuracy, bleu4, chance_recall, cider_d, recall_at_k,
                               itm_topk, rerank, tokenize_caption)


def test_recall_at_k_known_matrix():
    # 3 images; texts 0,1 -> image 0, text 2 -> image 1, text 3 -> image 2
    text_image = np.array([0, 0, 1, 2])
    s = np.array([[0.1, 0.9, 0.0, 0.2],     # image 0: a true caption first
                  [0.0, 0.1, 0.5, 0.9],     # image 1: true caption second
                  [0.9, 0.1, 0.5, 0.0]])    # image 2: true caption last
    r = recall_at_k(s, text_image, ks=(1, 2))
    assert r["tr_r@1"] == pytest.approx(100 / 3)
    assert r["tr_r@2"] == pytest.approx(200 / 3)
    # texts: t0 best image 2 (wrong), t1 image 0 (right), t2 image 1 (right, 0.5 vs 0.5 tie aside)
    assert r["ir_r@1"] == pytest.approx(50.0)


def test_rerank_orders_top_k_by_itm():
    itc = np.array([[0.9, 0.8, 0.1, 0.85]])
    itm = itm_topk(itc, lambda r, cols: [1.0 if c == 1 else 0.0 for c in cols], k=3)
    assert np.isnan(itm[0, 2]) and itm[0, 1] == 1.0
    assert list(np.argsort(-rerank(itc, itm)[0])) == [1, 0, 3, 2]
    # BLIP variant: ITM + ITC; a big enough ITC gap outweighs a small ITM one
    itm2 = np.array([[0.5, 0.55, np.nan, np.nan]])
    assert np.argmax(rerank(np.array([[0.9, 0.2, 0.1, 0.0]]), itm2, itc_weight=1.0)[0]) == 0


def test_chance_recall():
    c = chance_recall(np.arange(10), 10, ks=(1, 5))
    assert c["tr_r@1"] == pytest.approx(10.0) and c["ir_r@5"] == pytest.approx(50.0)


def test_tokenize_mixed():
    assert tokenize_caption("A red-ish circle, 左边!") == ["a", "red-ish", "circle", "左", "边"]


def test_bleu4():
    refs = [["a red circle on the left of a plain background"]]
    assert bleu4(["a red circle on the left of a plain background"], refs) == pytest.approx(100.0)
    assert bleu4(["a blue square"], refs) == 0.0
    partial = bleu4(["a red circle on the right of a plain background"], refs)
    assert 0 < partial < 100
    # brevity penalty: a correct prefix scores below the full caption
    assert bleu4(["a red circle on the left of"], refs) < 100


def test_cider_prefers_right_caption():
    refs = [["a red circle on the left", "red circle, left side"],
            ["two blue squares at the top", "blue squares on top"],
            ["a green star in the middle", "green star, centre"]]
    good = cider_d(["a red circle on the left", "two blue squares at the top", "a green star in the middle"], refs)
    bad = cider_d(["two blue squares at the top", "a green star in the middle", "a red circle on the left"], refs)
    assert good > 1.0 and bad < 0.2 * good


def test_attribute_accuracy():
    truth = [{"color": "red", "shape": "circle", "position": "left"},
             {"color": "blue", "shape": "square", "position": "top"}]
    acc = attribute_accuracy(["a red circle on the left", "一个蓝色的圆在上方"], truth)
    assert acc["attr_color"] == 100 and acc["attr_shape"] == 50 and acc["attr_all"] == 50
