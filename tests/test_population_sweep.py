"""The sweep specification: grids, lists, member names and configs, one-sentence errors."""

from __future__ import annotations

import pytest

from fondtrain.config import RunConfig, load_yaml
from fondtrain.config.sweep import member_name, members_from_sweep, split_sweep, sweep_digest
from fondtrain.errors import UserError


def test_grid_string_gives_the_product_first_setting_slowest():
    base = RunConfig()
    members = members_from_sweep(base, "beta_outer=8,16,24,32 seed=0,1,2")
    assert len(members) == 12
    assert [m.name for m in members[:4]] == ["b8-s0", "b8-s1", "b8-s2", "b16-s0"]
    last = members[-1]
    assert last.name == "b32-s2" and last.settings == {"beta_outer": 32.0, "seed": 2}
    # the member's config is the single run it stands for: both seeds, the beta, rest = base
    assert last.config.model.beta_outer == 32.0
    assert last.config.model.seed == 2 and last.config.train.seed == 2
    assert last.config.train.lr == base.train.lr and last.config.model.n_latents == base.model.n_latents
    assert base.model.beta_outer == 24.0 and base.train.seed == 0  # the base is left alone


def test_yaml_grid_and_list_forms(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: igvae\ntrain:\n  lr: 0.002\n"
                    "sweep:\n  lr: [1e-3, 0.005]\n  weight_decay: 0\n")
    raw, sweep = split_sweep(load_yaml(path))
    base = RunConfig.from_dict(raw)
    members = members_from_sweep(base, sweep)
    assert [m.name for m in members] == ["lr0.001-wd0", "lr0.005-wd0"]
    assert members[0].config.model.preset == "igvae" and members[1].config.train.weight_decay == 0.0

    listed = members_from_sweep(base, [{"beta_outer": 8, "lr": 2e-3}, {"beta_outer": 16, "poisson_kl": "exact"}])
    # every member carries every named setting; the base fills what a member leaves out
    assert [m.name for m in listed] == ["b8-lr0.002-klreference", "b16-lr0.002-klexact"]
    assert listed[1].config.model.poisson_kl == "exact" and listed[1].config.train.lr == 0.002
    # the same list as a --sweep string (YAML flow)
    again = members_from_sweep(base, "[{beta_outer: 8, lr: 2e-3}, {beta_outer: 16, poisson_kl: exact}]")
    assert [m.name for m in again] == [m.name for m in listed]


def test_names_are_filesystem_safe_and_distinct():
    assert member_name({"lr": 1e-5, "seed": 3}) == "lr1e-05-s3"
    assert member_name({"init_scale": 0.0001, "temp_stop": 0.01}) == "is0.0001-te0.01"
    names = [m.name for m in members_from_sweep(RunConfig(), "lr=0.001,0.0011,0.00100001 seed=0")]
    assert len(set(names)) == 3
    one = members_from_sweep(RunConfig(), "seed=5")
    assert len(one) == 1 and one[0].name == "s5"
    assert sweep_digest(one) != sweep_digest(members_from_sweep(RunConfig(), "seed=6"))


@pytest.mark.parametrize("sweep, words", [
    ("n_latents=256,512", "separate runs"),
    ("t_train=8,16 seed=0", "separate runs"),
    ({"preset": ["ipvae", "igvae"]}, "separate runs"),
    ("batch_size=100,200", "separate runs"),
    ("n_iters_outer=1,2", "separate runs"),
    ("dataset=digits,natural16", "separate runs"),
    ("epochs=1,2", "whole run"),
    ("colour=1,2", "unknown sweep setting"),
    ("", "empty"),
    ([], "empty"),
    ({}, "empty"),
    ("beta_outer=", "no values"),
    ("seed=0,1,0", "twice"),
    ([{"seed": 1}, {"seed": 1}], "twice"),
    ("beta_outer=8,8.0", "twice"),
    ("seed=0 seed=1", "twice"),
    ("lr=fast", "not a number"),
    ("seed=1.5", "whole number"),
    ("lr=inf", "finite"),
    ("beta_outer", "name=value"),
    ("lr=-1", "lr and grad_clip must be positive"),
    ("poisson_kl=approx", "poisson_kl must be"),
    ([3], "mapping"),
    ("[unclosed", "not valid YAML"),
])
def test_bad_sweeps_raise_one_sentence(sweep, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        members_from_sweep(RunConfig(), sweep)
    message = str(info.value)
    assert words in message
    assert "\n" not in message and message.endswith(".")
    assert list(tmp_path.iterdir()) == []  # nothing written
