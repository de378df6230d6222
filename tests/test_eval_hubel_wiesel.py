"""`fondtrain hubel-wiesel`: the moving bar, the frame loop, tuning of a hand-built Gabor
unit, the WAV's clicks, the movie's frames, and bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig, save_yaml
from fondtrain.errors import UserError
from fondtrain.eval import hubel_wiesel as H
from fondtrain.eval import hubel_wiesel_media as HM
from fondtrain.model.vae import IterativeVAE

SIDE, THETA0 = 16, 30.0
FAST = dict(n_blank=20, n_sweep=60, lead=5, orientation_step=15.0)


def gabor(side: int, theta_deg: float, freq: float = 0.12, sigma: float = 3.0) -> np.ndarray:
    """An even Gabor whose stripes (ON centre lobe) run along theta (ccw from horizontal,
    y up as displayed), unit norm, [side * side]."""
    c = (side - 1) / 2.0
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    x, y = cols - c, c - rows
    t = math.radians(theta_deg)
    d = -x * math.sin(t) + y * math.cos(t)
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * math.pi * freq * d)
    return (g / np.linalg.norm(g)).ravel()


def gabor_model(theta_deg: float = THETA0, k: int = 4, side: int = SIDE) -> IterativeVAE:
    """An iP-VAE whose unit 0 is a Gabor at theta; the others are orthogonal-ish Gabors
    with tenfold smaller weights (so unit 0 explains the bar)."""
    model = IterativeVAE(ModelConfig(preset="ipvae", input_dim=side * side, n_latents=k, t_train=4))
    with torch.no_grad():
        w = [gabor(side, theta_deg)] + [0.1 * gabor(side, theta_deg + 45.0 * i) for i in range(1, k)]
        model.W[0].copy_(torch.from_numpy(np.stack(w, 1)).float())
    return model.eval()


def save_run(run: Path, model: IterativeVAE, sweep: str = "") -> Path:
    from safetensors.torch import save_file

    config = RunConfig(model=model.config, data=DataConfig(dataset="natural16"), train=TrainConfig(sweep=sweep))
    ckpt = run / "ckpt" / "step-00000001"
    ckpt.mkdir(parents=True)
    save_yaml(config, run / "config.yaml")
    save_yaml(config, ckpt / "config.yaml")
    save_file(model.state_dict(), str(ckpt / "model.safetensors"))
    (ckpt / "COMPLETE").write_text("1\n")
    return run


def angle_diff(a, b, period: float = 360.0):
    return np.abs((np.asarray(a) - b + period / 2) % period - period / 2)


# ----------------------------------------------------------------------------- stimulus
def test_bar_geometry_and_pixels_hold_the_covered_area():
    bars = H.MovingBars(SIDE, [0.0, 90.0, 30.0], n_blank=3, n_sweep=41, thickness=0.2)
    assert len(bars) == 44 and bars.batch_size == 3
    assert bars[0].abs().sum() == 0 and bars[2].abs().sum() == 0  # blank
    assert bars[3].abs().sum() == 0 and bars[43].abs().sum() == 0  # starts and ends outside
    mid = bars[3 + 20].numpy().reshape(3, SIDE, SIDE)  # centre 0: through the middle
    width = 0.2 * SIDE
    assert mid[0].sum() == pytest.approx(width * SIDE, rel=0.05)
    assert np.allclose(mid[0], mid[0][:, :1])  # horizontal bar: constant along rows
    assert np.allclose(mid[1], mid[1][:1, :])  # vertical bar: constant along columns
    # the exact covered area: a 64 x 64 sub-pixel count agrees to its resolution, at
    # every orientation and position; the display frame is the same bar at 8 x 8
    fine = H.MovingBars(SIDE, np.arange(0, 360, 7.5), n_blank=1, n_sweep=9)
    fine.super = 64
    fine._d_display = fine._project(SIDE, 64)
    for t in range(1, 10):
        counted = fine.display(t).reshape(-1, SIDE, 64, SIDE, 64).mean((2, 4)).reshape(-1, SIDE * SIDE)
        assert np.abs(counted - fine[t].numpy()).max() < 0.04
    s = bars.super
    assert np.abs(bars.display(23).reshape(3, SIDE, s, SIDE, s).mean((2, 4)) - mid).max() < 0.3
    # theta = 0 moves up (towards 90 degrees): the bar's row goes from the bottom to the top
    rows = [np.argmax(bars[t].numpy().reshape(3, SIDE, SIDE)[0].sum(1)) for t in (13, 33)]
    assert rows[0] > rows[1]


# ----------------------------------------------------------------------------- frame loop
def test_frame_loop_is_model_step_with_the_state_carried():
    model = gabor_model()
    bars = H.MovingBars(SIDE, [0.0, 30.0, 90.0], n_blank=4, n_sweep=60)
    seen = []
    H.run_frames(model, bars, 0.0, 1.0, [torch.Generator().manual_seed(3)],
                 lambda t, state, z: seen.append(z.clone()))
    gens = [torch.Generator().manual_seed(3)]
    state = model.init_state(3)
    for t in range(len(bars)):
        out = model.step(bars[t], state, 0.0, 0.0, 1.0, t, generators=gens)
        assert torch.equal(out.z, seen[t])
        state = out.state
    assert sum(float(z.sum()) for z in seen) > 0


def test_the_replay_pass_reproduces_the_counts():
    model = gabor_model()
    bars = H.MovingBars(SIDE, np.arange(0, 360, 45.0), n_blank=10, n_sweep=40)
    first = H.record_sweeps(model, bars, 0.0, 1.0, seed=5)
    second = H.record_sweeps(model, bars, 0.0, 1.0, seed=5, unit=0)
    assert np.array_equal(first.counts, second.counts)
    assert np.array_equal(second.spikes[:, 10:].sum(1), first.counts[:, 0])


def test_gaussian_spikes_are_integrate_and_fire_of_the_rectified_activity():
    model = IterativeVAE(ModelConfig(preset="igvae", input_dim=16, n_latents=2))
    readout = H.SpikeReadout(model)
    drive = torch.tensor([[0.4, -1.0], [0.7, 2.5], [-0.3, 0.2], [0.95, 0.3]])
    fired = torch.stack([readout.spikes(row[None])[0] for row in drive])
    running = torch.cumsum(drive.clamp(min=0), 0)
    assert torch.equal(fired.cumsum(0), torch.floor(running + 1e-6))
    assert torch.equal(fired[:, 1], torch.tensor([0.0, 2.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------- tuning
@pytest.mark.parametrize("theta0", [30.0, 120.0])
def test_gabor_unit_prefers_its_orientation(theta0):
    model = gabor_model(theta0)
    orientations = np.arange(0, 360, 15.0)
    bars = H.MovingBars(SIDE, orientations, n_blank=30, n_sweep=120)
    record = H.record_sweeps(model, bars, 0.0, 1.0, seed=0)
    tuning = H.tuning_of(record, orientations, 120, min_spikes=5)
    evoked = tuning.evoked[0]
    best = orientations[np.argmax(evoked)]
    assert min(angle_diff(best, theta0), angle_diff(best, theta0 + 180)) <= 15
    # least near the orthogonal: the orientation (both directions summed) with the fewest
    # spikes, and on average a small fraction of the spikes near the preferred one
    axis = evoked[:12] + evoked[12:]
    assert angle_diff(orientations[np.argmin(axis)], theta0 + 90, 180.0) <= 15
    near_orth = angle_diff(orientations, theta0 + 90, 180.0) <= 15
    near_pref = angle_diff(orientations, theta0, 180.0) <= 15
    assert evoked[near_orth].mean() <= 0.25 * evoked[near_pref].mean()
    assert angle_diff(tuning.preferred[0], theta0, 180.0) <= 15 and tuning.osi[0] > 0.3  # "selective"
    assert H.choose_unit(tuning) == 0


# ----------------------------------------------------------------------------- sound
def detect_clicks(path: Path) -> tuple[int, np.ndarray]:
    """Sample rate and click onsets: a click is a run of non-zero samples (exact zeros
    lie between clicks)."""
    rate, pcm = wavfile.read(path)
    loud = np.flatnonzero(pcm != 0)
    if loud.size == 0:
        return rate, loud
    starts = np.concatenate([[0], np.flatnonzero(np.diff(loud) > 1) + 1])
    return rate, loud[starts]


def test_wav_holds_one_click_per_spike_at_its_time(tmp_path):
    spikes = np.array([0, 1, 0, 3, 0, 0, 2, 0, 1, 40, 0])  # 40: 1 ms apart
    frame_s = 0.04
    path = tmp_path / "s.wav"
    onsets = HM.write_wav(spikes, frame_s, path)
    rate, found = detect_clicks(path)
    assert rate == HM.SAMPLE_RATE and len(found) == spikes.sum() == len(onsets)
    expected = [(t + (j + 0.5) / n) * frame_s * rate for t, n in enumerate(spikes) for j in range(n)]
    assert np.abs(found - np.round(expected)).max() <= 1
    assert wavfile.read(path)[1].shape[0] == round(len(spikes) * frame_s * rate)


# ----------------------------------------------------------------------------- the command
def test_command_writes_every_output_and_the_movie_has_its_frames(tmp_path, capsys):
    import imageio.v2 as imageio

    run = save_run(tmp_path / "run", gabor_model())
    opts = H.HubelWieselOptions(**FAST, orientations=None)
    summary = H.hubel_wiesel(run, options=opts)
    out = run / "hubel-wiesel"
    printed = capsys.readouterr().out
    for name in ("receptive_field.png", "tuning.png", "raster.png", "spikes.wav", "movie.mp4",
                 "hubel_wiesel.npz"):
        assert (out / name).is_file() and name in printed
    assert summary["unit"] == 0 and f"OSI {summary['osi']:.3f}" in printed
    # the clip: lead + sweep frames at the preferred, then at the orthogonal orientation
    n_clip = 2 * (FAST["lead"] + FAST["n_sweep"])
    reader = imageio.get_reader(out / "movie.mp4")
    assert reader.count_frames() == n_clip
    assert reader.get_data(0).shape == (544, 960, 3)
    data = np.load(out / "hubel_wiesel.npz")
    theta = list(data["orientations"])
    rows = [theta.index(summary["preferred_deg"]), theta.index(summary["orth_orientation_deg"])]
    clip = np.arange(FAST["n_blank"] - FAST["lead"], FAST["n_blank"] + FAST["n_sweep"])
    train = np.concatenate([data["spikes"][r, clip] for r in rows])
    _, clicks = detect_clicks(out / "spikes.wav")
    assert len(clicks) == train.sum() == summary["n_clicks"] > 0


def test_one_preferred_orientation_the_peak_named_in_text_titles_and_raster(tmp_path, capsys, keep_figures):
    drawn = keep_figures(HM, "media_figure")
    run = save_run(tmp_path / "run", gabor_model(THETA0 + 7.0))  # between the 15-degree steps
    summary = H.hubel_wiesel(run, options=H.HubelWieselOptions(**FAST, movie=False))
    printed = capsys.readouterr().out
    data = np.load(run / "hubel-wiesel" / "hubel_wiesel.npz")
    peak = float(data["orientations"][np.argmax(data["evoked"][summary["unit"]])])
    assert summary["preferred_deg"] == peak and "peak" in summary["preferred_definition"]
    assert f"preferred orientation (peak) {peak:g} deg" in printed and "vector average" not in printed
    texts = [t.get_text() for fig in drawn for t in [*fig.texts, *(a for ax in fig.axes for a in ax.texts)]]
    texts += [ax.get_title(loc) for fig in drawn for ax in fig.axes for loc in ("left", "center")]
    assert any(f"preferred orientation (peak) {peak:g} deg (dotted)" in t for t in texts)  # tuning title
    assert any(t.startswith(f"- - preferred orientation (peak) {peak:g} deg") for t in texts)  # RF
    assert f"< pref. (peak) {peak:g}" in texts  # raster row
    assert any(t.startswith(f"preferred orientation (peak) {peak:g} deg:") for t in texts)  # its trace


def test_the_movie_shows_the_blank_mid_grey_and_the_bar_brighter():
    model = gabor_model()
    bars = H.MovingBars(SIDE, [30.0, 120.0], n_blank=6, n_sweep=10)
    record = H.record_sweeps(model, bars, 0.0, 1.0, seed=0, unit=0)
    frames = HM.MovieFrames(model.W[0].detach().numpy()[:, 0], bars, record, (0, 1), 2, 0, 10.0)
    box = frames.ax_in.get_window_extent()
    height = frames.fig.canvas.get_width_height()[1]
    rows = slice(int(height - box.y1) + 2, int(height - box.y0) - 2)
    cols = slice(int(box.x0) + 2, int(box.x1) - 2)
    blank = frames.frame(0, ("a", "b"))[rows, cols]  # a lead frame: the patch is blank
    assert np.abs(blank.astype(int) - 128).max() <= 2  # 0, the data's mean, is mid-grey
    middle = frames.frame(2 + 5, ("a", "b"))[rows, cols]  # mid-sweep: the bar crosses the patch
    assert middle.max() >= 250 and middle.min() >= 126  # a bright bar on grey, nothing darker


def test_a_sweep_records_the_member_it_is_asked_for(tmp_path):
    """A population run: --member NAME records that member (its own weights) into
    RUN/members/NAME/hubel-wiesel; without --member, one sentence naming the members."""
    config = ModelConfig(preset="ipvae", input_dim=SIDE * SIDE, n_latents=4, t_train=4)
    population = IterativeVAE(config, [dataclasses.replace(config, seed=s) for s in (0, 1)])
    with torch.no_grad():
        population.W[1].copy_(gabor_model().W[0])  # s1 holds the Gabor unit, s0 its random init
    run = save_run(tmp_path / "run", population, sweep="seed=0,1")
    with pytest.raises(UserError, match="choose one with --member NAME \\(s0, s1\\)"):
        H.hubel_wiesel(run, options=H.HubelWieselOptions(**FAST))
    summary = H.hubel_wiesel(run, options=H.HubelWieselOptions(**FAST, movie=False), member="s1", verbose=False)
    assert summary["unit"] == 0 and summary["osi"] > 0.3
    assert (run / "members" / "s1" / "hubel-wiesel" / "hubel_wiesel.npz").is_file()
    assert not (run / "hubel-wiesel").exists()


def test_gif_when_there_is_no_ffmpeg(tmp_path):
    import imageio.v2 as imageio

    model = gabor_model()
    bars = H.MovingBars(SIDE, [30.0, 120.0], n_blank=6, n_sweep=10)
    record = H.record_sweeps(model, bars, 0.0, 1.0, seed=0, unit=0)
    frames = HM.MovieFrames(model.W[0].detach().numpy()[:, 0], bars, record, (0, 1), 2, 0, 10.0)
    path = HM.write_movie(frames, ("preferred", "orthogonal"), 25.0, tmp_path / "movie.mp4", None, None)
    assert path.suffix == ".gif"
    assert len(imageio.mimread(path)) == len(frames) == 24


def test_bad_input_gets_one_sentence_and_writes_nothing(tmp_path):
    run = save_run(tmp_path / "run", gabor_model())
    out = tmp_path / "out"
    with pytest.raises(UserError, match="--unit 4 does not exist"):
        H.hubel_wiesel(run, options=H.HubelWieselOptions(**FAST, unit=4, out=str(out)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        H.hubel_wiesel(empty, options=H.HubelWieselOptions(**FAST, out=str(out)))
    flat = IterativeVAE(ModelConfig(preset="ipvae", input_dim=200, n_latents=3))
    with pytest.raises(UserError, match="not a square patch"):
        H.hubel_wiesel(save_run(tmp_path / "flat", flat), options=H.HubelWieselOptions(**FAST, out=str(out)))
    with pytest.raises(UserError, match="evoked spikes"):
        H.hubel_wiesel(run, options=H.HubelWieselOptions(**FAST, min_spikes=10**6, out=str(out)))
    with pytest.raises(UserError, match="at least two"):
        H.HubelWieselOptions(orientations=(45,))
    with pytest.raises(UserError, match="--slow_down must be a positive number"):
        H.HubelWieselOptions(slow_down="fast")
    assert not out.exists()
    assert not (run / "hubel-wiesel").exists() and not (tmp_path / "flat" / "hubel-wiesel").exists()
