"""What the Hubel & Wiesel experiment shows: receptive field, tuning curve, raster, the
spikes as clicks (WAV) and a movie of bar, spikes and rate (MP4 with the clicks, or GIF).

Time: frame t is inference step t; a frame lasts `frame_ms` nominal milliseconds and, in
the WAV and the movie, `slow_down` times longer. The WAV and the movie play the same clip:
for the preferred and then the orthogonal orientation, the last `lead` blank frames and the
sweep. A frame's n spikes become n clicks spread evenly over it (the model has no time
finer than a frame), the j-th at (j + 1/2) / n of the frame.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from scipy import ndimage
from scipy.io import wavfile

from fondtrain.eval.hubel_wiesel import PREFERRED

DPI = 100
SAMPLE_RATE = 44_100
# each click: a 2 kHz cosine decaying with time constant 0.15 ms, 0.5 ms long (22 samples),
# so that clicks stay apart up to (frame length / 0.5 ms) spikes per frame (80 at 40 ms)
CLICK_S, CLICK_TAU_S = 5e-4, 1.5e-4
MOVIE_SIZE = (9.6, 5.44)  # inches at DPI: 960 x 544 px, a multiple of 16 for H.264
RF_CMAP = "RdBu_r"  # ON (positive weight) red, OFF blue, zero white


def media_figure(width: float, height: float) -> Figure:
    """A figure at this module's DPI: the movie's frames need exact pixel sizes."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_media_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def upsampled_rf(w: np.ndarray, side: int, factor: int) -> np.ndarray:
    """The dictionary column w [P*P] as a [P*factor, P*factor] image (cubic spline; for
    display only: the model sees P x P pixels)."""
    return ndimage.zoom(w.reshape(side, side).astype(np.float64), factor, order=3, mode="nearest")


def _orientation_line(ax, theta_deg: float, size: int, **style) -> None:
    """A line through the centre of a size x size image along orientation theta (ccw from
    horizontal, y up as displayed)."""
    c, r = (size - 1) / 2.0, 0.48 * size
    t = np.deg2rad(theta_deg)
    ax.plot([c - r * np.cos(t), c + r * np.cos(t)], [c + r * np.sin(t), c - r * np.sin(t)], **style)


def plot_rf(w: np.ndarray, side: int, factor: int, unit: int, preferred: float, path: Path) -> Path:
    fig = media_figure(8.0, 3.9)
    lim = float(np.abs(w).max()) or 1.0
    axes = [fig.add_axes((0.02, 0.06, 0.36, 0.74)), fig.add_axes((0.42, 0.06, 0.36, 0.74))]
    axes[0].imshow(w.reshape(side, side), cmap=RF_CMAP, vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0].set_title(f"as the model has it ({side} x {side} px)", fontsize=9)
    image = axes[1].imshow(upsampled_rf(w, side, factor), cmap=RF_CMAP, vmin=-lim, vmax=lim)
    axes[1].set_title(f"upsampled x{factor} (cubic), display only", fontsize=9)
    _orientation_line(axes[1], preferred, side * factor, color="k", ls="--", lw=1)
    axes[1].text(2, side * factor - 4, f"- - {PREFERRED} {preferred:g} deg", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_axes((0.81, 0.06, 0.022, 0.74))
    fig.colorbar(image, cax=cax).set_label("weight (red ON, blue OFF)", fontsize=8)
    fig.suptitle(f"unit {unit}: receptive field = its dictionary column W[:, {unit}]", fontsize=11)
    return save_media_figure(fig, path)


def plot_tuning(orientations: np.ndarray, counts: np.ndarray, baseline: float, n_sweep: int,
                osi: float | None, preferred: float, unit: int, path: Path) -> Path:
    """Spikes per sweep against bar orientation, polar and linear; counts [B] (raw)."""
    order = np.argsort(orientations)
    theta, r = orientations[order], counts[order]
    fig = media_figure(10.0, 4.2)
    polar = fig.add_axes((0.04, 0.12, 0.3, 0.68), projection="polar")
    closed = np.append(theta, theta[0] + 360.0)
    polar.plot(np.deg2rad(closed), np.append(r, r[0]), color="C3", lw=1.5, marker=".", ms=3)
    polar.plot(np.linspace(0, 2 * np.pi, 181), np.full(181, baseline * n_sweep), "k--", lw=0.8)
    polar.set_title("spikes per sweep (polar)", fontsize=9, pad=14)
    polar.tick_params(labelsize=7)
    polar.set_rlabel_position(112.5)  # radial labels off the horizontal, where tuning peaks often lie
    ax = fig.add_axes((0.45, 0.14, 0.52, 0.64))
    ax.plot(theta, r, color="C3", lw=1.5, marker=".", ms=4, label="sweep")
    ax.axhline(baseline * n_sweep, color="k", ls="--", lw=0.8, label="blank rate x sweep length")
    ax.axvline(preferred, color="0.5", lw=0.8, ls=":")
    ax.set_xlim(0, 360)
    ax.set_xticks(np.arange(0, 361, 45))
    ax.set_xlabel("bar orientation (deg, counter-clockwise from horizontal; the bar moves towards +90)",
                  fontsize=8)
    ax.set_ylabel(f"spikes per sweep ({n_sweep} frames)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    osi_text = "-" if osi is None else f"{osi:.2f}"
    fig.suptitle(f"unit {unit}: orientation tuning to a moving bar, OSI {osi_text}, "
                 f"{PREFERRED} {preferred:g} deg (dotted)", fontsize=11)
    return save_media_figure(fig, path)


def _spike_stems(ax, frames: np.ndarray, spikes: np.ndarray, color: str) -> None:
    hit = spikes > 0
    ax.vlines(frames[hit], 0, spikes[hit], color=color, lw=0.8)


def plot_raster(bars, spikes: np.ndarray, rate: np.ndarray, pref: int, orth: int, unit: int,
                path: Path) -> Path:
    """Spike counts of every orientation (rows) over frames, and spikes and rate at the
    preferred and orthogonal orientations. spikes, rate [B, T]."""
    theta = bars.orientations
    order = np.argsort(theta)
    frames = np.arange(spikes.shape[1]) - bars.n_blank
    fig = media_figure(10.0, 8.0)
    ax = fig.add_axes((0.08, 0.5, 0.74, 0.42))
    top = max(1.0, float(spikes.max()))
    # rows in orientation order, each as tall as its spacing (orientations may be uneven)
    edges = np.concatenate([[theta[order][0]], (theta[order][1:] + theta[order][:-1]) / 2, [theta[order][-1]]])
    edges[0] -= (edges[1] - edges[0])
    edges[-1] += (edges[-1] - edges[-2])
    # square-root colour scale: single spikes stay visible beside bursts of many
    image = ax.pcolormesh(np.append(frames - 0.5, frames[-1] + 0.5), edges, spikes[order], cmap="Greys",
                          norm=PowerNorm(0.5, vmin=0, vmax=top), shading="flat", rasterized=True)
    ax.set_ylim(edges[-1], edges[0])
    for row, color, name in ((pref, "C3", "pref. (peak)"), (orth, "C0", "orth.")):
        ax.annotate(f"< {name} {theta[row]:g}", xy=(frames[-1], theta[row]), xytext=(4, 0),
                    textcoords="offset points", color=color, fontsize=8, va="center",
                    annotation_clip=False)
    ax.axvline(0, color="C2", lw=0.8)
    ax.set_ylabel("bar orientation (deg)", fontsize=9)
    ax.set_xlabel("frame from sweep onset (green; before it the patch is blank)", fontsize=8)
    cax = fig.add_axes((0.935, 0.5, 0.012, 0.42))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("spikes per frame", fontsize=8)
    for i, (row, color, name) in enumerate(((pref, "C3", PREFERRED), (orth, "C0", "orthogonal"))):
        a = fig.add_axes((0.08, 0.25 - 0.18 * i, 0.74, 0.13))
        _spike_stems(a, frames, spikes[row], "0.25")
        # the posterior rate is the expected count per frame: the same axis as the spikes
        a.plot(frames, rate[row], color=color, lw=1.0, alpha=0.8)
        a.set_xlim(frames[0], frames[-1])
        a.set_ylim(0, max(top, float(rate[[pref, orth]].max())) * 1.05)
        a.axvline(0, color="C2", lw=0.8)
        a.set_ylabel("spikes / frame", fontsize=8)
        a.set_title(f"{name} {theta[row]:g} deg: {spikes[row, bars.n_blank:].sum():.0f} spikes in the sweep; "
                    "grey: spikes per frame, colour: posterior rate (expected spikes per frame)",
                    fontsize=8, loc="left")
        if i == 1:
            a.set_xlabel("frame from sweep onset (1 frame = 1 inference step)", fontsize=8)
        else:
            a.set_xticklabels([])
    fig.suptitle(f"unit {unit}: spikes per frame at every orientation (raster) and at two of them",
                 fontsize=11)
    return save_media_figure(fig, path)


# ----------------------------------------------------------------------------- sound
def click_times(spikes: np.ndarray, frame_s: float) -> np.ndarray:
    """Seconds of every spike of the train spikes [T] (counts per frame), in order."""
    counts = np.clip(np.asarray(spikes).round().astype(np.int64), 0, None)
    frame = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(len(frame)) - np.repeat(np.cumsum(counts) - counts, counts)  # index within its frame
    return (frame + (j + 0.5) / np.maximum(counts[frame], 1)) * frame_s


def write_wav(spikes: np.ndarray, frame_s: float, path: Path) -> np.ndarray:
    """The spike train [T] as a 16-bit mono WAV of clicks (exact zeros between them);
    returns the click onsets in samples."""
    n = int(round(len(spikes) * frame_s * SAMPLE_RATE))
    t = np.arange(int(round(CLICK_S * SAMPLE_RATE))) / SAMPLE_RATE
    click = 0.8 * np.cos(2 * np.pi * 2000.0 * t) * np.exp(-t / CLICK_TAU_S)
    audio = np.zeros(n + len(click))
    onsets = np.round(click_times(spikes, frame_s) * SAMPLE_RATE).astype(int)
    # explicit (not broadcast) values: numpy 2.4's ufunc.at mis-reads broadcast ones
    np.add.at(audio, (onsets[:, None] + np.arange(len(click))).ravel(), np.tile(click, len(onsets)))
    pcm = (np.clip(audio[:n], -1.0, 1.0) * 32767).astype(np.int16)
    wavfile.write(path, SAMPLE_RATE, pcm)
    return onsets


# ----------------------------------------------------------------------------- movie
def clip_frames(bars, lead: int) -> np.ndarray:
    """Frame indices of one orientation's part of the clip: `lead` blank frames, the sweep."""
    return np.arange(bars.n_blank - lead, bars.n_frames)


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


class MovieFrames:
    """Draws the movie's frames: the bar over the RF, the model's input, and the spikes and
    rate up to the current frame. Each `frame(...)` returns an [H, W, 3] uint8 image."""

    def __init__(self, w, bars, record, rows, lead: int, unit: int, frame_ms: float):
        self.bars, self.rows, self.lead = bars, rows, lead
        self.frames = clip_frames(bars, lead)
        self.x = self.frames - bars.n_blank
        self.spikes = record.spikes[list(rows)][:, self.frames]
        self.rate = record.rate[list(rows)][:, self.frames]
        side, factor = bars.side, bars.super
        self.fig = fig = media_figure(*MOVIE_SIZE)
        lim = float(np.abs(w).max()) or 1.0
        ax_rf = fig.add_axes((0.66, 0.42, 0.32, 0.48))
        ax_rf.imshow(upsampled_rf(w, side, factor), cmap=RF_CMAP, vmin=-lim, vmax=lim)
        self.bar_image = ax_rf.imshow(np.zeros((side * factor, side * factor, 4)))
        ax_rf.set_title(f"bar over the RF (upsampled x{factor}, display only)", fontsize=8)
        self.ax_in = ax_in = fig.add_axes((0.74, 0.06, 0.16, 0.28))
        # symmetric about 0, the standardised data's mean: the blank patch is mid-grey, as the
        # model sees it (average luminance, not black), and the bar brighter
        self.input_image = ax_in.imshow(np.zeros((side, side)), cmap="gray", vmin=-bars.contrast,
                                        vmax=bars.contrast, interpolation="nearest")
        ax_in.set_title(f"model input ({side} x {side} px; grey = 0, the data's mean)", fontsize=8)
        for ax in (ax_rf, ax_in):
            ax.set_xticks([])
            ax.set_yticks([])
        self.ax_spk = fig.add_axes((0.07, 0.55, 0.55, 0.33))
        self.ax_rate = fig.add_axes((0.07, 0.12, 0.55, 0.33))
        top = max(1.0, float(self.spikes.max()))
        (self.stems,) = self.ax_spk.plot([], [], color="0.2", lw=1.2)
        (self.rate_line,) = self.ax_rate.plot([], [], color="C3", lw=1.5)
        for ax in (self.ax_spk, self.ax_rate):
            ax.set_xlim(self.x[0], self.x[-1])
            ax.axvline(0, color="C2", lw=0.8)
        self.ax_spk.set_ylim(0, top * 1.1)
        self.ax_rate.set_ylim(0, max(1e-9, float(self.rate.max())) * 1.1)
        self.ax_spk.set_ylabel("spikes per frame", fontsize=9)
        self.ax_rate.set_ylabel("posterior rate (spikes / frame)", fontsize=9)
        self.ax_rate.set_xlabel(f"frame from sweep onset (green), 1 frame = {frame_ms:g} ms nominal",
                                fontsize=9)
        self.title = fig.text(0.35, 0.95, "", fontsize=11, ha="center")
        self.unit = unit
        # blitting: draw the static parts once, then only the artists that change
        self.changing = (self.bar_image, self.input_image, self.stems, self.rate_line, self.title)
        for artist in self.changing:
            artist.set_animated(True)
        fig.canvas.draw()
        self.background = fig.canvas.copy_from_bbox(fig.bbox)

    def __len__(self) -> int:
        return len(self.rows) * len(self.frames)

    def frame(self, i: int, names: tuple[str, ...]) -> np.ndarray:
        seg, j = divmod(i, len(self.frames))
        row, t = self.rows[seg], self.frames[j]
        theta = self.bars.orientations[row]
        hi = self.bars.display(t, [row])[0] > 0
        overlay = np.zeros((*hi.shape, 4))
        overlay[hi] = (1.0, 0.85, 0.0, 0.45)
        self.bar_image.set_data(overlay)
        self.input_image.set_data(self.bars[t][row].numpy().reshape(self.bars.side, self.bars.side))
        x, s = self.x[: j + 1], self.spikes[seg, : j + 1]
        hit = s > 0
        stems = np.stack([x[hit], x[hit], np.full(hit.sum(), np.nan)], 1).ravel()
        heights = np.stack([np.zeros(hit.sum()), s[hit], np.full(hit.sum(), np.nan)], 1).ravel()
        self.stems.set_data(stems, heights)
        self.rate_line.set_data(x, self.rate[seg, : j + 1])
        n_spikes = int(s.sum())
        self.title.set_text(f"unit {self.unit}, bar at {theta:g} deg, the {names[seg]}: "
                            f"frame {self.x[j]:+d}, {n_spikes} spikes so far")
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        for artist in self.changing:
            self.fig.draw_artist(artist)
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def write_movie(frames: MovieFrames, names: tuple[str, ...], fps: float, path: Path,
                wav: Path | None, ffmpeg: str | None) -> Path:
    """MP4 (H.264, with the WAV muxed in when given) through ffmpeg, else a GIF."""
    import imageio.v2 as imageio

    if ffmpeg is None:
        gif = path.with_suffix(".gif")
        with imageio.get_writer(gif, mode="I", duration=1000.0 / fps, loop=0) as writer:
            for i in range(len(frames)):
                writer.append_data(frames.frame(i, names))
        return gif
    silent = path.with_name(f".{path.stem}-video.mp4")
    with imageio.get_writer(silent, fps=fps, codec="libx264", pixelformat="yuv420p", quality=8,
                            macro_block_size=16, ffmpeg_log_level="error") as writer:
        for i in range(len(frames)):
            writer.append_data(frames.frame(i, names))
    if wav is None:
        os.replace(silent, path)
        return path
    muxed = path.with_name(f".{path.stem}-muxed.mp4")
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(silent), "-i", str(wav), "-c:v", "copy",
                    "-c:a", "aac", "-b:a", "128k", str(muxed)], check=True)
    os.replace(muxed, path)
    silent.unlink()
    return path


def write_media(out_dir: Path, w: np.ndarray, bars, record, tuning, pref: int, orth: int, opts,
                summary: dict, ffmpeg: str | None | bool = True) -> dict[str, Path]:
    """Every figure, the WAV and (opts.movie) the movie of one unit, into out_dir.
    ffmpeg: True finds imageio-ffmpeg's (GIF without it), None forces the GIF."""
    unit = record.unit
    osi, preferred = summary["osi"], summary["preferred_deg"]
    files = {
        "rf": plot_rf(w, bars.side, bars.super, unit, preferred, out_dir / "receptive_field.png"),
        "tuning": plot_tuning(bars.orientations, record.counts[:, unit], float(record.baseline[unit]),
                              bars.n_sweep, osi, preferred, unit, out_dir / "tuning.png"),
        "raster": plot_raster(bars, record.spikes, record.rate, pref, orth, unit, out_dir / "raster.png"),
    }
    rows = (pref, orth)
    clip = clip_frames(bars, opts.lead)
    train = np.concatenate([record.spikes[r, clip] for r in rows])
    files["audio"] = out_dir / "spikes.wav"
    write_wav(train, opts.frame_audio_s, files["audio"])
    summary["n_clicks"] = int(train.round().sum())
    if opts.movie:
        exe = _ffmpeg() if ffmpeg is True else ffmpeg
        frames = MovieFrames(w, bars, record, rows, opts.lead, unit, opts.frame_ms)
        names = (PREFERRED, "orthogonal")
        files["movie"] = write_movie(frames, names, 1.0 / opts.frame_audio_s, out_dir / "movie.mp4",
                                     files["audio"], exe)
        stale = out_dir / ("movie.gif" if files["movie"].suffix == ".mp4" else "movie.mp4")
        if stale.exists():
            stale.unlink()
    return files

