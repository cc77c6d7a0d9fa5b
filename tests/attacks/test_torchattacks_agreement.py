"""Our attacks vs torchattacks (the trusted reference) on the same trained model and inputs:
robust accuracy within 1 percentage point, and never weaker by more than that."""
import pytest

pytest.importorskip("torchattacks")

from scaletrain.attacks.reference import agreement  # noqa: E402

NAMES = ["fgsm", "pgd_linf", "pgd_linf_no_rs", "pgd_l2", "bim", "mim", "apgd_ce", "apgd_dlr", "apgd_ce_l2",
         "apgd_t", "deepfool"]


@pytest.fixture(scope="module")
def rows(digits_model, digits_test):
    x, y = digits_test[0][:150], digits_test[1][:150]
    return {r["attack"]: r for r in agreement(digits_model, x, y, NAMES, max_deepfool=30, max_apgd_t=80)}


@pytest.mark.parametrize("name", NAMES)
def test_within_one_point(rows, name):
    r = rows[name]
    assert r["clean"] > 0.9
    assert r["ours"] < r["clean"] - 0.05 or name == "deepfool"     # the attack did something
    # 1 point of 150 samples is 1.5 samples: at most one sample apart
    assert abs(r["diff"]) <= 0.01 + 1e-9, r
    assert r["ours"] <= r["theirs"] + 0.01 + 1e-9, r                # never weaker by more than 1 point


def test_deterministic_pgd_is_identical(rows):
    # without the random start both implement exactly the same iteration
    assert rows["pgd_linf_no_rs"]["diff"] == 0.0
    assert rows["bim"]["diff"] == 0.0
    assert rows["fgsm"]["diff"] == 0.0


def test_deepfool_minimal_norm_matches(rows):
    r = rows["deepfool"]
    assert r["ours"] <= 0.02
    assert r["median_l2_ours"] == pytest.approx(r["median_l2_theirs"], rel=0.02)
