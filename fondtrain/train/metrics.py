"""Metrics the training loop logs, one value per member: on the training batch (cheap,
every log_every steps) and a quick validation pass (every eval_every steps and at the end).

The formulas (R^2 three ways, sparseness) are fondtrain.stats', shared with
`fondtrain eval`.
"""

from __future__ import annotations

import torch

from fondtrain.model.inference import last_step
from fondtrain.seeding import stream_seed
from fondtrain.stats import (
    fraction_zeros,
    lifetime_sparseness,
    population_sparseness,
    r2_three_ways,
    sum_squares,
)


def batch_metrics(out, model, values, grad_norm) -> dict[str, torch.Tensor]:
    """Each member's metrics of the cycle `out` (last_x [B, M] or [P, B, M], last_x_hat
    [P, B, M], step_losses [n_steps, P], ...) and the schedule values in force: [P] device
    tensors (averaged or gathered over the ranks by the caller)."""
    device = out.loss.device
    ss_res, ss_tot = sum_squares(out.last_x, out.last_x_hat)  # [P, B], [B] or [P, B]
    scalars = {
        "train/loss": out.step_losses.mean(0),
        "train/recon": out.recon.mean(0),
        "train/kl": out.kl.mean(0),
        "train/r2": 1.0 - ss_res.sum(-1) / ss_tot.expand_as(ss_res).sum(-1),
        "train/zeros": (model.activation(out.last_z) == 0).float().mean((-2, -1)),
        "train/grad_norm": grad_norm,
    }
    for name in ("lr", "beta", "temp", "eps"):
        scalars[f"sched/{name}"] = getattr(values, name)
    if model.is_poisson:
        scalars["sched/n_exp_first"] = model.n_exp[:, 0]
        scalars["sched/n_exp_last"] = model.n_exp[:, -1]
    return {k: torch.as_tensor(v).detach().to(device=device, dtype=torch.float32).reshape(-1)
            for k, v in scalars.items()}


@torch.no_grad()
def validate(model, val_loader, config, collectives, values, members, max_batches: int = 8) -> list[dict[str, float]]:
    """Inference for t_total steps at evaluation temperature (Poisson 0, Gaussian 1) on up
    to max_batches validation batches per rank; metrics at the last step, over the ranks
    of `collectives` (an Accelerator, or a rank's own when members are split). One dict
    per member of `members` (the run's `Member`s this rank holds).

    `values` are the schedule values in force (ScheduleValues): the soft clamps use the
    current eps and the loss the current beta, as the reference validates with the
    layer's eps buffer as training left it (eps = 1 after the first ~10% of a run).

    Sparsity is measured on the activity a(z) (relu for igrelu), as the reference does.
    Each member draws from its own validation generator, so that validation never moves
    the training noise (a resumed run draws the same as an uninterrupted one).
    """
    device = collectives.device
    rank = collectives.process_index
    generators = [torch.Generator(device=device).manual_seed(stream_seed(m.config.train.seed, "validation", rank))
                  for m in members]
    temp = 0.0 if model.is_poisson else 1.0
    xs, x_hats, zs, losses = [], [], [], []
    used = 0
    for batch in val_loader.epoch(0):
        if used >= max_batches:
            break
        used += 1
        x = batch["x"].to(device)
        out = last_step(model, x, config.model.t_total, temp, values.eps, values.beta, generators=generators)
        xs.append(x)
        # [P, B, ...] with the batch first, to concatenate and gather on it
        x_hats.append(out.x_hat.transpose(0, 1))
        zs.append(model.activation(out.z).transpose(0, 1))
        losses.append(out.loss.reshape(1, -1))
    x, x_hat, z = (collectives.gather(torch.cat(v)) for v in (xs, x_hats, zs))
    loss = collectives.gather(torch.cat(losses)).mean(0)
    if used == val_loader.batches_per_epoch and val_loader.n_padded:
        # the whole split was used: its wrapped-around repeats are the gather's last rows
        x, x_hat, z = (v[:-val_loader.n_padded] for v in (x, x_hat, z))
    return [_validation_metrics(x, x_hat[:, i], z[:, i], loss[i]) for i in range(len(members))]


def _validation_metrics(x, x_hat, z, loss) -> dict[str, float]:
    """Validation metrics of one member: x, x_hat [N, M], activity z [N, K], loss []."""
    r2 = r2_three_ways(x, x_hat)
    return {
        "val/loss": float(loss),
        "val/mse": float(((x - x_hat) ** 2).mean()),
        "val/r2_pooled": r2["r2_pooled"],
        "val/r2_median": r2["r2_median"],
        "val/r2_mean": r2["r2_mean"],
        "val/zeros": fraction_zeros(z),
        "val/lifetime_sparseness": float(lifetime_sparseness(z).mean()),
        "val/population_sparseness": float(population_sparseness(z).mean()),
    }
