"""The inference engine: every many-step loop (validation, the convergence table, latent
responses) runs through `inference.steps` and agrees with `inference.run` step for step.

The models are populations of one (P = 1): traces are [T, P, ...], and the engine draws
from one generator per member. The evaluation and training loops are imported in their
own tests (this module's engine test does not need them)."""

from __future__ import annotations

import pytest
import torch

from fondtrain.config import ModelConfig, RunConfig
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE

CASES = [("ipvae", 1, 0.0), ("ipvae", 2, 0.3), ("igvae", 1, 1.0), ("igrelu", 2, 1.0)]
N, M = 24, 16


def _model(preset: str, n_inner: int) -> IterativeVAE:
    return IterativeVAE(ModelConfig(preset=preset, input_dim=M, n_latents=12, t_train=4,
                                    n_iters_inner=n_inner, init_scale=0.3))


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, M, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gens(seed: int) -> list[torch.Generator]:
    """One seeded generator per member of a population of one."""
    return [_gen(seed)]


@pytest.fixture
def engine_calls(monkeypatch) -> list:
    """The `record` argument of every call of `inference.steps` (the real engine runs)."""
    calls = []
    real = inference.steps

    def recording(*args, **kwargs):
        calls.append(kwargs.get("record", args[6] if len(args) > 6 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "steps", recording)
    return calls


@pytest.mark.parametrize("preset,n_inner,temp", CASES)
def test_steps_yield_what_run_stacks(preset: str, n_inner: int, temp: float):
    model, x = _model(preset, n_inner), _x()
    grid = [1, 3, 4, 9]
    for same_stream in (True, False):
        traces = inference.run(model, x, 9, temp, 0.7, 2.0, record=grid, generators=_gens(1),
                               same_stream=same_stream)
        yielded = list(inference.steps(model, x, 9, temp, 0.7, 2.0, record=grid,
                                       generators=_gens(1), same_stream=same_stream))
        assert [s for s, _ in yielded] == traces["steps"].tolist() == grid
        for g, (_, out) in enumerate(yielded):
            for key in inference.TRACE_KEYS:
                torch.testing.assert_close(getattr(out, key), traces[key][g], rtol=0, atol=0)
    # the sample-only outputs: the same state and sample, nothing decoded
    bare = list(inference.steps(model, x, 9, temp, record=grid, generators=_gens(1),
                                same_stream=False, outputs=False))
    full = list(inference.steps(model, x, 9, temp, record=grid, generators=_gens(1),
                                same_stream=False))
    for (_, b), (_, f) in zip(bare, full, strict=True):
        assert b.x_hat is None and b.loss is None
        torch.testing.assert_close(b.z, f.z, rtol=0, atol=0)
        torch.testing.assert_close(b.state.components, f.state.components, rtol=0, atol=0)


@pytest.mark.parametrize("preset,n_inner,temp", CASES)
def test_convergence_table_is_the_engines_trajectory(engine_calls, preset: str, n_inner: int,
                                                     temp: float):
    """On a grid (unreported steps draw no output sample) the table equals metrics of
    `run`'s traces at every reported step."""
    from fondtrain.eval.convergence import rank_seed, run_convergence

    model, x = _model(preset, n_inner), _x(1)
    grid, beta = [1, 2, 5, 8], 3.0
    (res,) = run_convergence(model, x, 8, temp=temp, beta=beta, batch_size=N, steps=grid, seed=4)
    assert engine_calls == [grid]
    traces = inference.run(model, x, 8, temp, beta=beta, record=grid,
                           generators=_gens(rank_seed(4, 0)), same_stream=False)
    for g in range(len(grid)):
        x_hat = traces["x_hat"][g].double()
        a = model.activation(traces["z"][g]).double()
        mse = float(((x.double() - x_hat) ** 2).mean())
        assert res.table["mse"][g] == pytest.approx(mse, rel=1e-9)
        assert res.table["frac_zeros"][g] == float((a == 0).double().mean())
        assert res.table["loss"][g] == pytest.approx(float(traces["loss"][g]), rel=1e-5)
        assert res.table["nll"][g] == pytest.approx(float(traces["recon"][g].double().mean()),
                                                    rel=1e-9)
    torch.testing.assert_close(res.x_hat, traces["x_hat"][-1][0, :64], rtol=0, atol=0)


@pytest.mark.parametrize("preset,n_inner,temp", CASES)
def test_latent_responses_are_the_engines_window_mean(engine_calls, preset: str, n_inner: int,
                                                      temp: float):
    from fondtrain.eval.convergence import latent_responses

    model, x = _model(preset, n_inner), _x(2)
    resp = latent_responses(model, x, n_steps=10, window=4, temp=temp, batch_size=N, seed=6)
    assert [list(r) for r in engine_calls] == [[7, 8, 9, 10]]
    traces = inference.run(model, x, 10, temp, record=range(7, 11), generators=_gens(6),
                           same_stream=False)
    total = torch.zeros(1, N, 12)
    for z in traces["z"]:
        total += model.activation(z)
    torch.testing.assert_close(resp, total / 4, rtol=0, atol=0)


class _Batches:
    """Validation batches of a fixed tensor, in the loader's interface (`epoch(e)`)."""

    def __init__(self, x: torch.Tensor, size: int):
        self.x, self.size = x, size
        self.batches_per_epoch = -(-len(x) // size)
        self.n_padded = 0

    def epoch(self, epoch: int):
        for start in range(0, len(self.x), self.size):
            yield {"x": self.x[start:start + self.size]}


@pytest.mark.parametrize("preset,n_inner,temp", [c for c in CASES if c[2] in (0.0, 1.0)])
def test_validation_is_the_engines_last_step(engine_calls, preset: str, n_inner: int,
                                             temp: float):
    """validate: every batch runs t_total steps through the engine (one generator across
    batches); its metrics are those of `run`'s last steps."""
    from accelerate import Accelerator

    from fondtrain.config.schedules import ScheduleValues
    from fondtrain.config.sweep import run_members
    from fondtrain.seeding import stream_seed
    from fondtrain.train.metrics import validate

    model, x = _model(preset, n_inner), _x(3)
    config = RunConfig()
    config.model = model.config
    values = ScheduleValues(*(torch.tensor([v]) for v in (1e-3, 2.0, 0.6, 1.0, 1.0)),
                            warming_up=torch.tensor([False]))  # one value per member
    (metrics,) = validate(model, _Batches(x, 8), config, Accelerator(cpu=True), values,
                          run_members(config))
    t_total = model.config.t_total
    assert engine_calls == [[t_total]] * 3
    gens = _gens(stream_seed(config.train.seed, "validation", 0))  # validate's generator on rank 0
    x_hats, losses = [], []
    for start in range(0, N, 8):
        traces = inference.run(model, x[start:start + 8], t_total, temp, 0.6, 2.0,
                               record=[t_total], generators=gens)
        x_hats.append(traces["x_hat"][-1])
        losses.append(traces["loss"][-1])
    x_hat = torch.cat(x_hats, dim=1)  # [P, N, M]
    assert metrics["val/mse"] == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-6)
