"""Inference convergence over many steps (SPEC 7), batched over a whole data set.

From `u_init`, at the evaluation temperature (Poisson 0: exact counts; Gaussian 1), the
state is refined for n_steps (default 1000) on each input. Reconstructions and metrics
are computed only on the reported steps (a log grid), and only sums over samples are
kept, never [T, N, K]: per reported step the sums of squared errors, per-sample R^2,
SS_res and SS_tot, zero counts, sum a and sum a^2 per unit (lifetime sparseness),
per-sample population sparseness, NLL, loss and KL. The per-sample R^2 values are kept
([G, N], G reported steps) for the median.

What "the output of step t" means: the model's own step (SPEC 3.6): after the update, a
fresh sample z' from the new state, x_hat = W a(z'), NLL and KL(q(new) || q(prior = the
state before the step)); the loss is (NLL + beta sum_k KL) * 256 / M with beta =
beta_outer (the end-of-training weight) and the model's configured Poisson KL form;
both Poisson KL forms are reported as `kl_reference` and `kl_exact` (Gaussian: `kl`).
Activity means a(z') (z' itself for ipvae / igvae, relu(z') exp(log_gain) for igrelu);
zeros and sparseness are measured on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fondtrain import stats as Mx
from fondtrain.eval.dist import Ranks
from fondtrain.eval.progress import Progress
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE
from fondtrain.seeding import stream_seed


def sampling_generators(model: IterativeVAE, seed: int, device: torch.device | str) -> list[torch.Generator]:
    """The sampling generators of an evaluation: one per member, each seeded with `seed`,
    so that member i draws exactly the noise of its evaluation alone."""
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(model.n_members)]


@dataclass
class ConvergenceSums:
    """Running sums over samples for each member p and reported step g (float64, on the
    device).

    scalars [P, G, len(FIELDS)]; unit_sums [P, G, 2, K] (sum a, sum a^2 per unit);
    r2 [P, G, n] per-sample R^2 (list of per-batch blocks until `tables`).
    """

    steps: list[int]
    fields: tuple[str, ...]
    scalars: Tensor
    unit_sums: Tensor
    r2_blocks: list[Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, steps: list[int], poisson: bool, n_latents: int, device,
              n_members: int) -> ConvergenceSums:
        kl = ("kl_reference", "kl_exact") if poisson else ("kl",)
        fields = ("n", "sse", "r2_sum", "ss_res", "ss_tot", "zeros", "population",
                  "nll", "loss", *kl)
        g = len(steps)
        return cls(steps, fields,
                   torch.zeros(n_members, g, len(fields), dtype=torch.float64, device=device),
                   torch.zeros(n_members, g, 2, n_latents, dtype=torch.float64, device=device))

    def add(self, g: int, model: IterativeVAE, x: Tensor, out, beta: float | Tensor) -> Tensor:
        """Accumulate the output `out` (a StepOutput) of reported step g on the inputs
        x [B, M]; beta: the loss's KL weight, a float or one per member [P]. Returns the
        per-sample R^2 [P, B]."""
        a = model.activation(out.z).double()  # [P, B, K]
        recon, kl = out.recon.double(), out.kl  # [P, B], [P, B, K]
        ss_res, ss_tot = Mx.sum_squares(x.double(), out.x_hat.double())  # [P, B], [B]
        ss_tot = ss_tot.expand_as(ss_res)
        r2 = 1.0 - ss_res / (ss_tot + Mx.FLOAT32_EPS)
        scale = 256.0 / model.config.input_dim
        if model.is_poisson:
            forms = model.kl_both_forms(out.state, out.prior)
            kls = (forms["reference"], forms["exact"])
        else:
            kls = (kl,)
        beta_col = torch.as_tensor(beta, dtype=torch.float64, device=a.device).reshape(-1, 1)
        loss = (recon + beta_col * kl.sum(-1).double()) * scale
        n = torch.full(ss_res.shape[:1], float(x.shape[0]), dtype=torch.float64, device=a.device)
        values = [
            n, ss_res.sum(-1), r2.sum(-1), ss_res.sum(-1), ss_tot.sum(-1),
            (a == 0).sum((-2, -1)).double(), Mx.population_sparseness(a).sum(-1), recon.sum(-1),
            loss.sum(-1), *[k.sum(-1).double().sum(-1) for k in kls],
        ]
        self.scalars[:, g] += torch.stack(values, dim=-1)
        self.unit_sums[:, g, 0] += a.sum(-2)
        self.unit_sums[:, g, 1] += a.pow(2).sum(-2)
        return r2

    def merged(self, other: ConvergenceSums) -> ConvergenceSums:
        """The sums of two disjoint sets of rows (what the reduction over ranks computes)."""
        return ConvergenceSums(self.steps, self.fields, self.scalars + other.scalars,
                               self.unit_sums + other.unit_sums, self.r2_blocks + other.r2_blocks)

    def tables(self, ranks: Ranks, input_dim: int) -> list[dict[str, list[float]]]:
        """Reduce over ranks and turn the sums into each member's per-step table (plain
        lists)."""
        scalars = ranks.sum(self.scalars)
        unit_sums = ranks.sum(self.unit_sums)
        p, g = scalars.shape[:2]
        local_r2 = (torch.cat(self.r2_blocks, dim=-1) if self.r2_blocks
                    else torch.zeros(p, g, 0, dtype=torch.float64))
        r2_all = ranks.gather_rows(local_r2.permute(2, 0, 1).contiguous()).permute(1, 2, 0)  # [P, G, N]
        return [self._table(scalars[i], unit_sums[i], r2_all[i], input_dim) for i in range(p)]

    def _table(self, scalars: Tensor, unit_sums: Tensor, r2_all: Tensor,
               input_dim: int) -> dict[str, list[float]]:
        """One member's table from its reduced sums [G, F], [G, 2, K] and R^2 [G, N]."""
        col = {name: scalars[:, i] for i, name in enumerate(self.fields)}
        n = col["n"]
        k = unit_sums.shape[-1]
        lifetime = torch.stack([Mx.sparseness_from_sums(unit_sums[g, 0], unit_sums[g, 1],
                                                        int(n[g])).mean()
                                for g in range(len(self.steps))])
        out = {
            "step": list(self.steps),
            "mse": (col["sse"] / (n * input_dim)).tolist(),
            "r2_mean": (col["r2_sum"] / n).tolist(),
            "r2_pooled": (1.0 - col["ss_res"] / col["ss_tot"]).tolist(),
            "r2_median": [Mx.median(r2_all[g]) for g in range(len(self.steps))],
            "frac_zeros": (col["zeros"] / (n * k)).tolist(),
            "lifetime_sparseness": lifetime.tolist(),
            "population_sparseness": (col["population"] / n).tolist(),
            "nll": (col["nll"] / n).tolist(),
            "loss": (col["loss"] / n).tolist(),
        }
        for name in self.fields[9:]:
            out[name] = (col[name] / n).tolist()
        out["_mean_activity"] = (unit_sums[-1, 0] / n[-1]).tolist()  # usage at the last step
        out["_n_samples"] = int(n[-1])  # the reduced count: every row exactly once
        return out


def rank_seed(seed: int, rank: int) -> int:
    """Seed of a rank's sampling generator (different noise on every rank)."""
    return stream_seed(seed, "eval_sampler", rank)


@dataclass
class ConvergenceResult:
    """One member's per-step table (identical on every rank) and a few local
    final-step arrays for figures: x, x_hat [n_keep, M]; activity [n_local_kept, K] (this
    rank's samples); usage [K], each unit's mean activity at the last step."""

    table: dict[str, list[float]]
    usage: Tensor
    x: Tensor
    x_hat: Tensor
    activity: Tensor
    n_samples: int


@torch.no_grad()
def accumulate_convergence(model: IterativeVAE, x: Tensor, n_steps: int, temp: float,
                           beta: float | Tensor, steps: list[int], batch_size: int = 2048,
                           device: torch.device | str = "cpu", seed: int = 0, n_keep: int = 64,
                           max_activity_rows: int = 20_000,
                           eps: float | Tensor = 1.0) -> tuple[ConvergenceSums, dict[str, Tensor]]:
    """Inference on the rows x [n, M] of one process: the sums for the reported `steps`
    (1-based) and, for figures, the first n_keep inputs / reconstructions and the final
    activity of up to max_activity_rows rows ({'x' [n_keep, M], 'x_hat' [P, n_keep, M],
    'activity' [P, n_act, K]}, on the cpu), every member at once (beta and eps: a float or
    one per member [P]).

    Steps that are not reported draw no output sample (`same_stream=False`)."""
    if steps[-1] != n_steps:
        raise ValueError("the last step must be reported")
    report = {s: g for g, s in enumerate(steps)}  # 1-based step -> grid row
    p, k, m = model.n_members, model.config.n_latents, model.config.input_dim
    sums = ConvergenceSums.empty(steps, model.is_poisson, k, device, p)
    generators = sampling_generators(model, seed, device)
    extras = {"x": torch.zeros(0, m), "x_hat": torch.zeros(p, 0, m)}
    activity = []
    n_act = 0
    progress = Progress("convergence", -(-x.shape[0] // batch_size) * n_steps)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, torch.float32)
        block = torch.empty(p, len(steps), xb.shape[0], dtype=torch.float64, device=device)
        for step, out in inference.steps(model, xb, n_steps, temp, eps, beta, record=steps,
                                         generators=generators, same_stream=False):
            block[:, report[step]] = sums.add(report[step], model, xb, out, beta)
            progress.at(start // batch_size * n_steps + step)
        sums.r2_blocks.append(block)
        if start == 0:
            extras["x"], extras["x_hat"] = xb[:n_keep].cpu(), out.x_hat[:, :n_keep].cpu()
        if n_act < max_activity_rows:
            activity.append(model.activation(out.z[:, : max_activity_rows - n_act]).float().cpu())
            n_act += activity[-1].shape[1]
    extras["activity"] = torch.cat(activity, dim=1) if activity else torch.zeros(p, 0, k)
    return sums, extras


def run_convergence(model: IterativeVAE, x: Tensor, n_steps: int = 1000, temp: float | None = None,
                    beta: float | Tensor | None = None, batch_size: int = 2048,
                    steps: list[int] | None = None, ranks: Ranks | None = None, seed: int = 0,
                    n_keep: int = 64, max_activity_rows: int = 20_000,
                    eps: float | Tensor = 1.0) -> list[ConvergenceResult]:
    """Run inference on this rank's rows of x [N, M] (all ranks call it with the whole x).

    Returns the table over the log grid of reported steps (`steps`, default
    `metrics.log_grid(n_steps, [t_total])`), reduced over ranks. The last step must be a
    reported one (it feeds the figures). Every member in one batched inference (beta
    default: each member's beta_outer), one ConvergenceResult per member.
    """
    ranks = ranks or Ranks()
    temp = inference.eval_temperature(model) if temp is None else float(temp)
    if beta is None:
        beta = torch.tensor([m.beta_outer for m in model.members], dtype=torch.float64)
    steps = steps or Mx.log_grid(n_steps, [model.config.t_total])
    if steps[-1] != n_steps:
        raise ValueError("the last step must be reported")
    local = x[ranks.part(x.shape[0])]
    sums, extras = accumulate_convergence(model, local, n_steps, temp, beta, steps, batch_size,
                                          ranks.device, rank_seed(seed, ranks.rank), n_keep,
                                          max_activity_rows, eps)
    results = []
    for i, table in enumerate(sums.tables(ranks, model.config.input_dim)):
        usage = torch.tensor(table.pop("_mean_activity"))
        n_samples = table.pop("_n_samples")
        results.append(ConvergenceResult(table=table, usage=usage, x=extras["x"],
                                         x_hat=extras["x_hat"][i], activity=extras["activity"][i],
                                         n_samples=n_samples))
    return results


@torch.no_grad()
def latent_responses(model: IterativeVAE, x: Tensor, n_steps: int, window: int,
                     temp: float | None = None, batch_size: int = 2048,
                     device: torch.device | str = "cpu", seed: int = 0,
                     eps: float | Tensor = 1.0) -> Tensor:
    """Mean activity a(z) over the last `window` of n_steps inference steps of every
    member at once, [P, N, K] (cpu).

    The "response" of a unit to a stimulus (bar of light) and the features of the linear
    probe: the time average of the samples, i.e. an estimate of the firing rate at the
    end of inference (z are fresh samples of each step's new state, as `model.step`).
    Steps before the window draw no output sample (`same_stream=False`).
    """
    temp = inference.eval_temperature(model) if temp is None else float(temp)
    window = max(1, min(window, n_steps))
    generators = sampling_generators(model, seed, device)
    p, k = model.n_members, model.config.n_latents
    out = []
    progress = Progress("latent responses", -(-x.shape[0] // batch_size) * n_steps)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, torch.float32)
        total = torch.zeros(p, xb.shape[0], k, device=device)
        for step, step_out in inference.steps(model, xb, n_steps, temp, eps,
                                              record=range(n_steps - window + 1, n_steps + 1),
                                              generators=generators, same_stream=False,
                                              outputs=False):
            total += model.activation(step_out.z)
            progress.at(start // batch_size * n_steps + step)
        out.append((total / window).cpu())
    return torch.cat(out, dim=-2) if out else torch.zeros(p, 0, k)
