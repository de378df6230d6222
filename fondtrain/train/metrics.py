"""Metrics the training loop logs: on the training batch (cheap, every log_every steps)
and a quick validation pass (every eval_every steps and at the end).

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
    """0-d device tensors (reduced across ranks by the caller) from one cycle's output."""
    device = out.loss.device
    ss_res, ss_tot = sum_squares(out.last_x, out.last_x_hat)  # pooled R^2, kept on the device
    scalars = {
        "train/loss": out.step_losses.mean(),
        "train/recon": out.recon.mean(),
        "train/kl": out.kl.mean(),
        "train/r2": 1.0 - ss_res.sum() / ss_tot.sum(),
        "train/zeros": (model.activation(out.last_z) == 0).float().mean(),
        "train/grad_norm": torch.as_tensor(grad_norm, dtype=torch.float32, device=device),
    }
    for name in ("lr", "beta", "temp", "eps"):
        scalars[f"sched/{name}"] = torch.tensor(getattr(values, name), device=device)
    return {k: v.detach().float().reshape(()) for k, v in scalars.items()}


@torch.no_grad()
def validate(model, val_loader, config, accelerator, values, max_batches: int = 8, members=None):
    """Inference for t_total steps at evaluation temperature (Poisson 0, Gaussian 1) on up
    to max_batches validation batches per rank; metrics at the last step, over all ranks.

    `values` are the schedule values in force (ScheduleValues): the soft clamps use the
    current eps and the loss the current beta, as the reference validates with the
    layer's eps buffer as training left it (eps = 1 after the first ~10% of a run).

    Sparsity is measured on the activity a(z) (relu for igrelu), as the reference does.
    Uses its own generator so that validation never moves the training RNG (a resumed run
    must draw the same noise as an uninterrupted one).

    A population (`members`, the sweep's Members; values `PopulationValues`): every member
    at once, each with its own validation generator; returns one metrics dict per member.
    """
    device = accelerator.device
    rank = accelerator.process_index
    if members is None:
        generator = torch.Generator(device=device).manual_seed(
            stream_seed(config.train.seed, "validation", rank))
    else:
        generator = [torch.Generator(device=device).manual_seed(
            stream_seed(m.config.train.seed, "validation", rank)) for m in members]
    temp = 0.0 if model.is_poisson else 1.0
    xs, x_hats, zs, losses = [], [], [], []
    n_steps = config.model.t_total
    used = 0
    for batch in val_loader.epoch(0):
        if used >= max_batches:
            break
        used += 1
        x = batch["x"].to(device)
        out = last_step(model, x, n_steps, temp, values.eps, values.beta, generator=generator)
        xs.append(x)
        # a population's [P, B, ...] with the batch first, to concatenate and gather on it
        x_hats.append(out.x_hat if members is None else out.x_hat.transpose(0, 1))
        z = model.activation(out.z)
        zs.append(z if members is None else z.transpose(0, 1))
        losses.append(out.loss.reshape(1, -1))
    x, x_hat, z = (accelerator.gather(torch.cat(v)) for v in (xs, x_hats, zs))
    loss = accelerator.gather(torch.cat(losses)).mean(0)
    if used == val_loader.batches_per_epoch and val_loader.n_padded:
        # the whole split was used: its wrapped-around repeats are the gather's last rows
        x, x_hat, z = (v[:-val_loader.n_padded] for v in (x, x_hat, z))
    if members is None:
        return _validation_metrics(x, x_hat, z, loss[0])
    return [_validation_metrics(x, x_hat[:, i], z[:, i], loss[i]) for i in range(len(members))]


def _validation_metrics(x, x_hat, z, loss) -> dict[str, float]:
    """Validation metrics of one model: x, x_hat [N, M], activity z [N, K], loss []."""
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
