"""The Hubel & Wiesel experiment: a bar of light sweeps across a model neuron's receptive
field at many orientations, and its spikes are shown, plotted and heard.

Stimulus (the reference's `hubel_wiesel.ipynb`): on a P x P patch (P the model's patch
side, x right and y up about the centre, in pixels), a bright bar of value `contrast` on a
zero background (0 is the standardised data's mean: the figures and the movie show it
mid-grey), `thickness` x P wide, with its long axis at orientation theta (degrees,
counter-clockwise from horizontal as displayed, 0 <= theta < 360). It sweeps along its
normal (-sin theta, cos theta), i.e. moving towards theta + 90 degrees, from just outside
the patch (centre at -span) to just outside the other side (+span), span = P / sqrt(2) +
width / 2 (outside for every orientation, so that all sweep at the same speed), in
`n_sweep` frames after `n_blank` blank frames. A model pixel holds `contrast` times the
exact fraction of its area the bar covers (anti-aliased; the reference thresholds pixel
centres instead); the figures draw the same bar on S x S sub-pixels (S = ceil(128 / P)).

Inference: one frame per inference step from u_init, the state carried across frames
(never reset), at the evaluation temperature (Poisson 0: exact spike counts; Gaussian 1),
every orientation one row of the same batch. Spikes per frame: the Poisson sample z (an
integer count); Gaussian models have no spikes, so theirs are read out from the rectified
activity max(a(z), 0) by integrate-and-fire (a spike each time the running sum crosses
an integer). Rate per frame: the posterior rate exp(u) (Poisson) or max(a(mu), 0).

A unit's response to an orientation is its spike count over the sweep; its baseline the
count expected from the spike rate of the second half of the blank; evoked = response -
baseline, rectified at 0. Its *preferred orientation (peak)* is the bar orientation with
the most evoked spikes, in [0, 360) (a moving bar has a direction; this is the one
definition the summary, the figures and the movie use), the orthogonal one the
orientation closest to 90 degrees from it. OSI = |sum R e^{2 i theta}| / sum R over the
evoked counts (as `fondtrain.eval.tuning`). A unit is *responsive* when its largest
evoked count reaches `min_spikes`; the default unit is the responsive unit with the
highest OSI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fondtrain import stats as Mx
from fondtrain.config.sweep import member_dir
from fondtrain.errors import UserError
from fondtrain.eval.hubel_wiesel_bars import MovingBars
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE, State


def _number(value) -> float:
    """value as a float; NaN (failing every comparison) for anything that is not a number."""
    try:
        return float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


@dataclass
class HubelWieselOptions:
    """What `hubel_wiesel` does (each is a `fondtrain hubel-wiesel --flag`).

    unit: the model neuron (None: the most orientation-selective responsive unit);
    orientations: degrees in [0, 360) (None: 0, step, 2 step, ... below 360);
    orientation_step: their spacing; n_blank / n_sweep: blank and sweep frames; thickness:
    bar width / patch side; contrast: the bar's pixel value; min_spikes: evoked spikes per
    sweep that make a unit responsive; temp: sampling temperature (None: Poisson 0,
    Gaussian 1); frame_ms: nominal duration of one frame (one inference step);
    slow_down: audio and movie play this many times slower than that; lead: blank frames
    before each sweep in the WAV and the movie; movie: write the movie; out: output folder
    (default RUN/hubel-wiesel; a sweep's member's: RUN/members/MEMBER/hubel-wiesel);
    device: e.g. cpu, cuda (default: cuda if available); seed: seed of the sampling noise.
    """

    unit: int | None = None
    orientations: tuple[float, ...] | None = None
    orientation_step: float = 1.0
    n_blank: int = 300
    n_sweep: int = 400
    thickness: float = 0.2
    contrast: float = 1.0
    min_spikes: int = 10
    temp: float | None = None
    frame_ms: float = 10.0
    slow_down: float = 4.0
    lead: int = 50
    movie: bool = True
    out: str | None = None
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_blank", "n_sweep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise UserError(f"--{name} must be a whole number of at least 2, got {value!r}.")
        if isinstance(self.lead, bool) or not isinstance(self.lead, int) or not 0 <= self.lead <= self.n_blank:
            raise UserError(f"--lead must be a whole number from 0 to --n_blank ({self.n_blank}), got {self.lead!r}.")
        for name in ("orientation_step", "thickness", "contrast", "frame_ms", "slow_down"):
            if not _number(getattr(self, name)) > 0:
                raise UserError(f"--{name} must be a positive number, got {getattr(self, name)!r}.")
        if not _number(self.min_spikes) >= 0:
            raise UserError(f"--min_spikes must be zero or positive, got {self.min_spikes!r}.")
        if self.temp is not None and not _number(self.temp) >= 0:
            raise UserError(f"--temp must be zero or positive, got {self.temp!r}.")
        if self.orientations is None:
            self.orientations = tuple(np.arange(0.0, 360.0, float(self.orientation_step)).tolist())
        values = self.orientations if isinstance(self.orientations, list | tuple) else (self.orientations,)
        try:
            self.orientations = tuple(float(v) % 360.0 for v in values)
        except (TypeError, ValueError):
            raise UserError(f"--orientations must be numbers in degrees, got {self.orientations!r}.") from None
        if len(self.orientations) < 2:
            raise UserError("give at least two --orientations (e.g. --orientations 0,90) to measure tuning.")

    @property
    def frame_audio_s(self) -> float:
        """Seconds one frame lasts in the WAV and the movie."""
        return self.frame_ms * self.slow_down / 1000.0


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def run_frames(model: IterativeVAE, feeder, temp: float, eps: float,
               generators: list[torch.Generator] | None, on_frame) -> None:
    """The inference loop over a movie (the model's one inference engine): frame t is step
    t's input, the state is carried from frame to frame (never reset). on_frame(t, state,
    z) sees the state after step t and its fresh sample z [P, B, K] (what `model.step`
    outputs as z)."""
    device = model.W.device
    frames = [feeder[t].to(device) for t in range(len(feeder))] if device.type != "cpu" else feeder
    batch = torch.empty(feeder.batch_size, model.config.input_dim, device=device)
    for step, out in inference.steps(model, batch, len(feeder), temp, eps, generators=generators,
                                     feeder=frames, outputs=False):
        on_frame(step - 1, out.state, out.z)


class SpikeReadout:
    """Spikes and rates per frame from the state and sample (see the module docstring)."""

    def __init__(self, model: IterativeVAE):
        self.model = model
        self.charge = None

    def spikes(self, z: torch.Tensor) -> torch.Tensor:
        if self.model.is_poisson:
            return z
        drive = self.model.activation(z).clamp(min=0)
        self.charge = drive if self.charge is None else self.charge + drive
        fired = torch.floor(self.charge)
        self.charge = self.charge - fired
        return fired

    def rate(self, state: State) -> torch.Tensor:
        if self.model.is_poisson:
            return torch.exp(state.components[0])
        return self.model.activation(state.components[0]).clamp(min=0)


@dataclass
class SweepRecord:
    """counts [B, K] spikes over the sweep; baseline [K] spikes per frame in the second half
    of the blank (mean over orientations); and, for `unit`, spikes / rate [B, T] per frame."""

    counts: np.ndarray
    baseline: np.ndarray
    unit: int | None = None
    spikes: np.ndarray | None = None
    rate: np.ndarray | None = None


def record_sweeps(model: IterativeVAE, bars: MovingBars, temp: float, eps: float, seed: int,
                  unit: int | None = None) -> SweepRecord:
    """Run the whole movie once (all orientations in one batch) through one model (a
    population of one, `run_files.load_model`) and count spikes; with `unit`, also keep
    that unit's spikes and rates at every frame."""
    if model.n_members != 1:
        raise ValueError(f"the experiment records one model, not {model.n_members} members")
    device = model.W.device
    readout = SpikeReadout(model)
    b, k = bars.batch_size, model.config.n_latents
    counts = torch.zeros(b, k, dtype=torch.float64, device=device)
    blank = torch.zeros(b, k, dtype=torch.float64, device=device)
    traces = {"spikes": [], "rate": []}
    settle = bars.n_blank // 2

    def on_frame(t: int, state: State, z: torch.Tensor) -> None:
        spikes = readout.spikes(z)[0]
        if t >= bars.n_blank:
            counts.add_(spikes.double())
        elif t >= settle:
            blank.add_(spikes.double())
        if unit is not None:
            traces["spikes"].append(spikes[:, unit].cpu())
            traces["rate"].append(readout.rate(state)[0, :, unit].cpu())

    run_frames(model, bars, temp, eps, [torch.Generator(device=device).manual_seed(seed)], on_frame)
    record = SweepRecord(counts.cpu().numpy(), (blank.mean(0) / (bars.n_blank - settle)).cpu().numpy())
    if unit is not None:
        record.unit = unit
        record.spikes = torch.stack(traces["spikes"], 1).numpy()
        record.rate = torch.stack(traces["rate"], 1).numpy()
    return record


# ----------------------------------------------------------------------------- tuning
PREFERRED = "preferred orientation (peak)"  # its name wherever it is shown


@dataclass
class Tuning:
    """Per unit: evoked [K, B] spike counts, osi / preferred (the peak orientation, degrees
    in [0, 360)) / pref_orth [K], peak [K] largest evoked count, responsive [K] bool."""

    orientations: np.ndarray
    evoked: np.ndarray
    osi: np.ndarray
    preferred: np.ndarray
    pref_orth: np.ndarray
    peak: np.ndarray
    responsive: np.ndarray = field(repr=False)


def tuning_of(record: SweepRecord, orientations: np.ndarray, n_sweep: int, min_spikes: float) -> Tuning:
    """Evoked counts (sweep minus the blank's rate x n_sweep, rectified) and selectivity."""
    evoked = np.clip(record.counts - record.baseline[None] * n_sweep, 0.0, None).T
    orientations = np.asarray(orientations, np.float64)
    theta = torch.from_numpy(orientations)
    osi, _ = Mx.circular_selectivity(torch.from_numpy(evoked), theta)
    # orientation is periodic in 180 degrees: compare pref and orth as orientations
    pref_orth = Mx.pref_orth_index(torch.from_numpy(evoked), theta % 180.0)
    peak = evoked.max(1)
    preferred = orientations[np.argmax(evoked, 1)]
    return Tuning(orientations, evoked, osi.numpy(), preferred, pref_orth.numpy(), peak,
                  peak >= max(min_spikes, 1e-9))


def choose_unit(tuning: Tuning) -> int:
    """The unit with the highest OSI (ties: the larger peak) among the responsive units
    whose peak is at least the median peak of responsive units (as `tuning.most_selective`:
    a unit with a handful of spikes is selective by chance)."""
    idx = np.flatnonzero(tuning.responsive)
    idx = idx[tuning.peak[idx] >= np.median(tuning.peak[idx])]
    order = np.lexsort((-tuning.peak[idx], -np.nan_to_num(tuning.osi[idx])))
    return int(idx[order[0]])


def preferred_and_orthogonal(tuning: Tuning, unit: int) -> tuple[int, int]:
    """Row indices of the preferred orientation (peak: the most evoked spikes) and of the
    orientation closest to 90 degrees from it."""
    theta = tuning.orientations
    pref = int(np.argmax(tuning.evoked[unit]))
    diff = np.abs((theta - theta[pref] - 90.0 + 180.0) % 360.0 - 180.0)
    return pref, int(np.argmin(diff))


# ----------------------------------------------------------------------------- the command
def _side_of(model: IterativeVAE) -> int:
    side = math.isqrt(model.config.input_dim)
    if side * side != model.config.input_dim:
        raise UserError(f"the model's input size {model.config.input_dim} is not a square patch: the "
                        "bar-of-light movie needs square P x P inputs.")
    return side


def hubel_wiesel(run: str | Path | None = None, checkpoint: str | Path | None = None,
                 options: HubelWieselOptions | None = None, verbose: bool = True,
                 member: str | None = None) -> dict:
    """Run the experiment on a run's newest checkpoint (or `checkpoint`; a sweep's member
    `member`), write its figures, WAV and movie, print a summary naming them; returns the
    summary as a dict."""
    from fondtrain.eval.hubel_wiesel_media import write_media
    from fondtrain.model.inference import eval_temperature
    from fondtrain.runs.files import (
        checkpoint_eps,
        load_run,
        member_index,
        one_member,
        output_run_dir,
        resolve_checkpoint,
    )

    opts = options or HubelWieselOptions()
    if run is None and checkpoint is None:
        raise UserError("give a run directory (fondtrain hubel-wiesel runs/NAME) or --checkpoint PATH.")
    target = resolve_checkpoint(checkpoint if checkpoint is not None else run)
    model, _, members = load_run(target)
    index = member_index(members, member, target)
    model = one_member(model, index)
    side = _side_of(model)
    k = model.config.n_latents
    if opts.unit is not None and (isinstance(opts.unit, bool) or not isinstance(opts.unit, int)
                                  or not 0 <= opts.unit < k):
        raise UserError(f"--unit {opts.unit!r} does not exist: the model has units 0 to {k - 1}.")
    # a checkpoint outside any run: beside it; a pretrained model: runs/pretrained-NAME
    base = output_run_dir(run, target) or (target if target.is_dir() else target.parent)
    out_dir = Path(opts.out) if opts.out is not None else member_dir(base, member or "") / "hubel-wiesel"
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device)
    temp = eval_temperature(model) if opts.temp is None else float(opts.temp)
    eps = checkpoint_eps(target, index)
    bars = MovingBars(side, opts.orientations, opts.n_blank, opts.n_sweep, opts.thickness, opts.contrast)
    say = print if verbose else (lambda *a, **kw: None)
    say(f"hubel-wiesel {target}: {model.config.preset}, K={k}, {side}x{side} patch; "
        f"{bars.batch_size} orientations x {bars.n_frames} frames ({opts.n_blank} blank + "
        f"{opts.n_sweep} sweep) at temperature {temp:g}, clamp eps {eps:.3g}, on {device}", flush=True)

    record = record_sweeps(model, bars, temp, eps, opts.seed, unit=opts.unit)
    tuning = tuning_of(record, bars.orientations, opts.n_sweep, opts.min_spikes)
    unit = opts.unit
    if unit is None:
        if not tuning.responsive.any():
            raise UserError(f"no unit fires {opts.min_spikes} or more evoked spikes in a sweep (the "
                            f"most is {tuning.peak.max():.0f}): lower --min_spikes or pick one with --unit.")
        unit = choose_unit(tuning)
        # the same seed and batch replay the same draws: this pass records the chosen unit
        record = record_sweeps(model, bars, temp, eps, opts.seed, unit=unit)
    pref, orth = preferred_and_orthogonal(tuning, unit)
    summary = {
        "checkpoint": str(target), "preset": model.config.preset, "n_latents": k, "side": side,
        "unit": unit, "chosen": opts.unit is None, "osi": Mx.safe_float(tuning.osi[unit]),
        "preferred_deg": float(bars.orientations[pref]),
        "preferred_definition": f"{PREFERRED}: the bar orientation with the most evoked spikes",
        "pref_orth": Mx.safe_float(tuning.pref_orth[unit]),
        "orth_orientation_deg": float(bars.orientations[orth]),
        "spikes_pref": float(record.counts[pref, unit]), "spikes_orth": float(record.counts[orth, unit]),
        "baseline_per_frame": float(record.baseline[unit]),
        "n_responsive": int(tuning.responsive.sum()), "min_spikes": opts.min_spikes,
        "temp": temp, "eps": eps, "n_orientations": bars.batch_size,
        "frame_ms": opts.frame_ms, "slow_down": opts.slow_down,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_media(out_dir, model.W[0].detach().cpu().numpy()[:, unit], bars, record, tuning,
                        pref, orth, opts, summary)
    np.savez_compressed(out_dir / "hubel_wiesel.npz", orientations=bars.orientations,
                        counts=record.counts, baseline=record.baseline, evoked=tuning.evoked,
                        osi=tuning.osi, unit=unit, spikes=record.spikes, rate=record.rate)
    files["data"] = out_dir / "hubel_wiesel.npz"
    summary["files"] = {name: str(path) for name, path in files.items()}
    say(format_summary(summary, out_dir))
    return summary


def format_summary(s: dict, out_dir: Path) -> str:
    """One screen: the unit, its tuning, and the files written."""
    how = (f"the most orientation-selective of the stronger half of {s['n_responsive']} responsive "
           f"units (>= {s['min_spikes']} evoked spikes per sweep)" if s["chosen"] else "given with --unit")
    osi = "-" if s["osi"] is None else f"{s['osi']:.3f}"
    pref_orth = "-" if s["pref_orth"] is None else f"{s['pref_orth']:.3f}"
    lines = [
        f"unit {s['unit']}: {how}",
        f"  OSI {osi}, pref/orth index {pref_orth}",
        f"  {PREFERRED} {s['preferred_deg']:g} deg (the most evoked spikes): {s['spikes_pref']:.0f} "
        f"spikes per sweep; orthogonal {s['orth_orientation_deg']:g} deg: {s['spikes_orth']:.0f}; "
        f"blank {s['baseline_per_frame']:.3g} per frame",
        f"  audio and movie: 1 frame = {s['frame_ms']:g} ms nominal, played {s['slow_down']:g}x slower",
        f"wrote to {out_dir}:",
    ]
    lines += [f"  {name:<8} {Path(path).name}" for name, path in s["files"].items()]
    return "\n".join(lines)
