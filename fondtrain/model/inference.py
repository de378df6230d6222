"""The inference engine: every many-step inference loop runs here (validation during
training, evaluation's convergence table, latent responses for tuning and probes, the
benchmarks).

From u_init, `n_steps` model steps (SPEC 3) on the same input x (or a feeder's input of
each step): at step t the state is refined by n_iters_inner updates, then a fresh
sample z' of the new state gives the step's outputs (x_hat = W a(z'), NLL, KL, loss;
SPEC 3.6). The engine yields only the steps a caller records; the others only update
the state (no decode, NLL or KL). Consumers reduce what they need from each yielded
`StepOutput` (a convergence table keeps sums, never [T, N, K]).

Random streams: member i draws from `generators[i]` (None: the model's own generators,
else torch's default generator), in the order a step makes them (update samples, then the
output sample). With `same_stream` (the default) a step that
is not recorded still draws (and drops) its output sample, so that the trajectory is the
same draw whatever is recorded; `same_stream=False` skips it (the fastest: the same
distribution, other random numbers).

    for step, out in steps(model, x, 1000, temp=0.0, record={10, 100, 1000}):
        ...  # out.z [P, B, K], out.x_hat [P, B, M], out.recon [P, B], out.kl [P, B, K], out.loss [P]
    traces = run(model, x, 1000, temp=0.0, record=grid)  # the same, stacked
    out = last_step(model, x, 16, temp=0.0)  # the last step's StepOutput
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from fondtrain.model.vae import IterativeVAE, StepOutput

TRACE_KEYS = ("z", "x_hat", "recon", "kl", "loss")


def eval_temperature(model: IterativeVAE) -> float:
    """The evaluation temperature (SPEC 7): Poisson 0 (exact samples), Gaussian 1. Here,
    below eval/, because a pretrained model's recorded check (fondtrain.runs) uses it too."""
    return 0.0 if model.is_poisson else 1.0


@torch.no_grad()
def steps(model: IterativeVAE, x: Tensor, n_steps: int, temp: float, eps: float | Tensor = 1.0,
          beta: float = 0.0, record: Iterable[int] | None = None,
          generators=None, feeder=None, same_stream: bool = True,
          outputs: bool = True) -> Iterator[tuple[int, StepOutput]]:
    """Run n_steps inference steps from u_init; yield (step, StepOutput) at the recorded
    1-based steps, in order.

    x: [B, M] or [P, B, M], the input of every step, or `feeder` (indexable by the 0-based
    step t -> [B, M] or [P, B, M]; x then only gives the batch size). record: the 1-based steps to yield (None:
    every step). eps: the soft clamps' opening; beta: the KL weight of the loss.
    outputs=False: a recorded step yields its state and fresh sample z only (x_hat,
    recon, kl and loss None): what a time average of the activity needs.
    """
    wanted = None if record is None else {int(s) for s in record}
    state = model.init_state(x.shape[-2])
    for t in range(n_steps):
        inputs = x if feeder is None else feeder[t]
        recorded = wanted is None or t + 1 in wanted
        out = model.step(inputs, state, temp, beta, eps, t, generators=generators,
                         outputs=recorded and outputs)
        state = out.state
        if recorded:
            if not outputs:
                out.z = model.sample(state, temp, None, generators, t)
            yield t + 1, out
        elif same_stream:
            model.sample(state, temp, None, generators, t)


def run(model: IterativeVAE, x: Tensor, n_steps: int, temp: float, eps: float | Tensor = 1.0,
        beta: float = 0.0, record: Iterable[int] | None = None,
        generators=None, feeder=None,
        same_stream: bool = True) -> dict[str, Tensor]:
    """`steps` with the recorded outputs stacked (for analysis and tests; a long run over
    a data set should reduce as it goes instead).

    Records `record` and always the last step. Returns 'z' [T, P, B, K], 'x_hat'
    [T, P, B, M], 'recon' [T, P, B], 'kl' [T, P, B, K], 'loss' [T, P], 'state'
    [T, C, P, B, K] and 'steps' [T] (the 1-based recorded steps).
    """
    record = None if record is None else {*record, n_steps}
    traces: dict[str, list[Tensor]] = {key: [] for key in (*TRACE_KEYS, "state")}
    recorded = []
    for step, out in steps(model, x, n_steps, temp, eps, beta, record, generators, feeder,
                           same_stream):
        recorded.append(step)
        for key in TRACE_KEYS:
            traces[key].append(getattr(out, key))
        traces["state"].append(torch.stack(out.state.components))
    result = {key: torch.stack(values) for key, values in traces.items()}
    result["steps"] = torch.tensor(recorded)
    return result


def last_step(model: IterativeVAE, x: Tensor, n_steps: int, temp: float,
              eps: float | Tensor = 1.0, beta: float = 0.0,
              generators=None, feeder=None,
              same_stream: bool = True) -> StepOutput:
    """`steps` recording only the last step: its StepOutput (what validation reports)."""
    ((_, out),) = steps(model, x, n_steps, temp, eps, beta, [n_steps], generators, feeder,
                        same_stream)
    return out
