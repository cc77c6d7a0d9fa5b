"""evaluate_model: numbers, determinism, batching independence, resume, reports."""
import copy
import json
import math

import pytest
import torch

from scaletrain.attacks import create_attack
from scaletrain.config.schema import EvalConfig
from scaletrain.errors import ConfigError, UserError
from scaletrain.evaluate import evaluate_model, format_table, normalised_auc, rebatch, write_report


def small_cfg(**kw):
    base = dict(attacks=["fgsm", "pgd"], eps=[0.0, 0.1, 0.2], pgd_steps=3, batch_size=32)
    base.update(kw)
    return EvalConfig(**base)


def strip(report):
    r = dict(report)
    r.pop("seconds")
    return r


@pytest.fixture(scope="module")
def base_report(digits_model, digits_eval):
    return evaluate_model(digits_model, digits_eval, small_cfg(noise_sigmas=[0.0, 0.3]), progress=False)


def test_report_numbers(base_report, digits_model, digits_eval):
    r = base_report
    assert r["n"] == 96
    x = torch.cat([b[0] for b in digits_eval])
    y = torch.cat([b[1] for b in digits_eval])
    with torch.no_grad():
        clean = (digits_model(x).argmax(1) == y).float().mean().item()
    assert r["clean_acc"] == pytest.approx(clean)
    assert r["clean_acc"] > 0.9
    for name in ("fgsm", "pgd"):
        c = r["attacks"][name]
        assert c["eps"] == [0.0, 0.1, 0.2]
        assert c["acc"][0] == r["clean_acc"]
        assert c["acc"][2] < r["clean_acc"] - 0.3
        assert c["auc"] == pytest.approx(normalised_auc(c["eps"], c["acc"]))
    wc = r["worst_case"]
    for j in range(3):
        assert wc["acc"][j] <= min(r["attacks"][a]["acc"][j] for a in ("fgsm", "pgd")) + 1e-12
    assert r["robustness_score"] == wc["auc"] and 0 <= r["robustness_score"] <= 1
    assert r["attacks"]["pgd"]["acc"][1] <= r["attacks"]["fgsm"]["acc"][1] + 0.03
    # critical epsilon: exactly the clean mistakes are critical at 0
    vals = r["critical_eps"]["values"]
    assert len(vals) == 96
    assert sum(1 for v in vals if v == 0.0) == round(96 * (1 - r["clean_acc"]))
    assert r["critical_eps"]["median"] in (0.1, 0.2, None)
    # Gaussian noise: sigma 0 is the clean accuracy
    assert r["noise"]["sigma"] == [0.0, 0.3] and r["noise"]["acc"][0] == r["clean_acc"]
    assert r["noise"]["acc"][1] <= r["clean_acc"] + 0.05


def test_matches_direct_attack(base_report, digits_model, digits_eval):
    """The suite's PGD number at one eps equals running the attack by hand with the suite's seeding."""
    from scaletrain.evaluate.suite import build_eval_attack
    from scaletrain.rng import SampleRNG
    cfg = small_cfg()
    correct = 0
    for b, first, x, y in rebatch(digits_eval, cfg.batch_size):
        with torch.no_grad():
            ok = digits_model(x).argmax(1) == y
        idx = ok.nonzero().squeeze(1)
        # each sample's own stream: (seed, "attack", name, grid index, global sample index)
        rng = SampleRNG(cfg.seed, torch.arange(first, first + x.shape[0]), "attack", "pgd").fork(1).subset(idx)
        x_adv = build_eval_attack("pgd", 0.1, cfg)(digits_model, x[idx], y[idx], rng)
        with torch.no_grad():
            correct += int((digits_model(x_adv).argmax(1) == y[idx]).sum())
    assert base_report["attacks"]["pgd"]["acc"][1] == correct / 96


def test_bit_identical_and_independent_of_loader_batching(base_report, digits_model, digits_eval):
    x = torch.cat([b[0] for b in digits_eval])
    y = torch.cat([b[1] for b in digits_eval])
    other = [(x[i:i + 7], y[i:i + 7]) for i in range(0, 96, 7)]
    again = evaluate_model(digits_model, other, small_cfg(noise_sigmas=[0.0, 0.3]), progress=False)
    assert strip(again) == strip(base_report)
    seeded = evaluate_model(digits_model, digits_eval, small_cfg(noise_sigmas=[0.0, 0.3], seed=5), progress=False)
    assert seeded["attacks"]["pgd"]["acc"] != base_report["attacks"]["pgd"]["acc"] or \
        seeded["noise"]["acc"] != base_report["noise"]["acc"]


def test_normalised_auc():
    assert normalised_auc([0.0, 0.1, 0.2], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert normalised_auc([0.0, 0.1, 0.2], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert normalised_auc([0.0, 0.1, 0.3], [1.0, 0.0, 0.0]) == pytest.approx(0.05 / 0.3)
    assert normalised_auc([0.0], [0.7]) == 0.7


def test_grid_without_zero_and_max_samples(digits_model, digits_eval):
    r = evaluate_model(digits_model, digits_eval, small_cfg(eps=[0.2, 0.1], attacks=["fgsm"], max_samples=50),
                       progress=False)
    assert r["n"] == 50
    assert r["attacks"]["fgsm"]["eps"] == [0.0, 0.1, 0.2]


def test_model_mode_restored(digits_model, digits_eval):
    digits_model.train()
    try:
        evaluate_model(digits_model, digits_eval[:1], small_cfg(attacks=["fgsm"]), progress=False)
        assert all(m.training for m in digits_model.modules())
    finally:
        digits_model.eval()


class Interrupt(Exception):
    pass


def _interrupting(loader, after):
    for i, batch in enumerate(loader):
        if i == after:
            raise Interrupt()
        yield batch


def test_resume_from_state_file(tmp_path, base_report, digits_model, digits_eval):
    cfg = small_cfg(noise_sigmas=[0.0, 0.3])
    state = tmp_path / "state.json"
    with pytest.raises(Interrupt):
        evaluate_model(digits_model, _interrupting(digits_eval, 2), cfg, progress=False, state_file=str(state))
    saved = json.loads(state.read_text())
    assert saved["state"]["next_batch"] == 2      # 80 samples read = 2 global batches of 32 done
    calls = []
    orig = digits_model.forward
    digits_model.forward = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    try:
        resumed = evaluate_model(digits_model, digits_eval, cfg, progress=False, state_file=str(state))
    finally:
        del digits_model.forward
    assert strip(resumed) == strip(base_report)
    assert not state.exists()                     # a finished evaluation leaves no state behind
    # only the last global batch (32 samples) was evaluated again
    assert max(calls) <= 32 and sum(1 for c in calls if c > 0) < 60
    with pytest.raises(Interrupt):
        evaluate_model(digits_model, _interrupting(digits_eval, 2), cfg, progress=False, state_file=str(state))
    with pytest.raises(UserError, match="different evaluation"):
        evaluate_model(digits_model, digits_eval, small_cfg(pgd_steps=4), progress=False, state_file=str(state))
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other.head[-1].bias.add_(1e-3)             # other weights, same shapes
    with pytest.raises(UserError, match="different evaluation"):
        evaluate_model(other, digits_eval, cfg, progress=False, state_file=str(state))


def test_config_errors(digits_model, digits_eval):
    bad = [dict(attacks=["pgd", "nope"]), dict(eps=[]), dict(eps=[0.1, -0.1]), dict(noise_sigmas=[-1.0]),
           dict(certify={"n": 10}), dict(certify={"sigma": 0.25, "nn": 3}), dict(batch_size=0),
           dict(norm="l3")]
    for b in bad:
        with pytest.raises(ConfigError) as e:
            evaluate_model(digits_model, digits_eval, small_cfg(**b), progress=False)
        assert "eval." in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no samples"):
        evaluate_model(digits_model, [], small_cfg(), progress=False)


def test_autoattack_preset(digits_model, digits_eval):
    cfg = small_cfg(autoattack=True, autoattack_steps=5, eps=[0.1])
    r = evaluate_model(digits_model, digits_eval, cfg, progress=False)
    aa, pgd = r["autoattack"], r["attacks"]["pgd"]
    assert aa["acc"][0] == r["clean_acc"]
    assert aa["acc"][1] <= pgd["acc"][1] + 0.02
    assert r["worst_case"]["acc"][1] <= aa["acc"][1]
    assert "autoattack" in r["worst_case"]["attacks"]
    # the preset = APGD-CE then APGD-T on what survives: a direct run gives the same count
    from scaletrain.attacks import APGDCE, APGDT
    from scaletrain.rng import SampleRNG
    alive_total = 0
    for b, first, x, y in rebatch(digits_eval, cfg.batch_size):
        with torch.no_grad():
            alive = digits_model(x).argmax(1) == y
        for k, atk in enumerate((APGDCE(eps=0.1, steps=5), APGDT(eps=0.1, steps=5))):
            idx = alive.nonzero().squeeze(1)
            # each sample's stream: (seed, "autoattack", grid index, attack index, global sample index)
            xa = atk(digits_model, x[idx], y[idx], SampleRNG(cfg.seed, first + idx, "autoattack", 1, k))
            with torch.no_grad():
                alive[idx] = digits_model(xa).argmax(1) == y[idx]
        alive_total += int(alive.sum())
    assert aa["acc"][1] == alive_total / 96


def test_write_report_and_table(tmp_path, base_report):
    paths = write_report(base_report, str(tmp_path / "out"))
    data = json.loads(open(paths["json"]).read())
    assert data["attacks"]["pgd"]["acc"] == base_report["attacks"]["pgd"]["acc"]
    md = open(paths["md"]).read()
    assert "| attack | eps=0 | eps=0.1 | eps=0.2 | AUC |" in md and "| pgd |" in md and "Gaussian noise" in md
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = format_table(base_report)
    assert "pgd" in table and "robustness score" in table and f"{base_report['robustness_score']:.3f}" in table
    assert math.isfinite(data["robustness_score"])


def test_rebatch_exact():
    x = torch.arange(10.0).view(10, 1, 1, 1)
    y = torch.arange(10)
    out = list(rebatch([(x[:3], y[:3]), (x[3:], y[3:])], 4, max_samples=9))
    assert [(b, f, t[0].flatten().tolist()) for b, f, *t in out] == [
        (0, 0, [0, 1, 2, 3]), (1, 4, [4, 5, 6, 7]), (2, 8, [8])]


def test_deepfool_in_suite_uses_its_own_steps():
    from scaletrain.evaluate.suite import build_eval_attack
    assert build_eval_attack("deepfool", 0.1, small_cfg()).steps == 50
    assert build_eval_attack("pgd", 0.1, small_cfg()).steps == 3
    assert build_eval_attack("pgd", 0.1, small_cfg()).track_best
    assert create_attack("pgd", eps=0.1).track_best is False


def test_attack_specs_with_options(digits_model, digits_eval):
    from scaletrain.evaluate.suite import build_eval_attack, parse_attack_spec
    assert parse_attack_spec("pgd:loss=cw,restarts=2") == ("pgd", {"loss": "cw", "restarts": 2})
    atk = build_eval_attack("pgd:loss=cw,steps=7,schedule=cosine", 0.1, small_cfg())
    assert (atk.loss, atk.steps, atk.schedule, atk.track_best) == ("cw", 7, "cosine", True)
    r = evaluate_model(digits_model, digits_eval[:1], small_cfg(attacks=["pgd", "pgd:loss=cw"]), progress=False)
    assert set(r["attacks"]) == {"pgd", "pgd:loss=cw"}
    for bad in (["pgd:loss"], ["pgd:stepz=3"], ["pgd:loss=hinge"]):
        with pytest.raises(ConfigError, match="eval.attacks.0"):
            evaluate_model(digits_model, digits_eval, small_cfg(attacks=bad), progress=False)
