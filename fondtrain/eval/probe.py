"""Linear probe: how much label information the inferred latents carry (SPEC 7).

Features are each unit's mean activity over the last `window` inference steps
(`convergence.latent_responses`) at the evaluation temperature. A multinomial logistic
regression (scikit-learn, L2, C = 1, features standardised on the train split) is fitted
on the data set's train split and scored on its held-out split: the fixed split of the
source (`digits`: sklearn's stratified 80/20 with random_state = 0, 1437 / 360 samples;
MNIST: the 60k train / 10k t10k files, each capped at `max_samples`). The same probe
on the raw pixels the model sees is the baseline. Data of another patch size are resized
to the model's (see `fondtrain.eval.data`).
"""

from __future__ import annotations

import numpy as np
import torch

from fondtrain.eval.convergence import latent_responses
from fondtrain.eval.data import EvalData, fit_to_model, limit_rows
from fondtrain.eval.dist import Ranks
from fondtrain.model.vae import IterativeVAE
from fondtrain.seeding import stream_seed


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, c: float = 1.0, max_iter: int = 2000, seed: int = 0) -> float:
    """Test accuracy of a standardised multinomial logistic regression, features [N, D]."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    # one BLAS thread: these problems are small, and threads competing with other work
    # on the machine made a 0.1 s fit take 5 s
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
        return float(clf.score(np.asarray(test_x, np.float64), np.asarray(test_y)))


def features(model: IterativeVAE, x: np.ndarray, n_steps: int, window: int, ranks: Ranks,
             batch_size: int = 2048, seed: int = 0, eps: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Every member's latent responses [P, N, K] to all rows of x, each rank doing its
    part (gathered)."""
    local = torch.from_numpy(np.ascontiguousarray(x[ranks.part(len(x))], dtype=np.float32))
    feats = latent_responses(model, local, n_steps, window, batch_size=batch_size,
                             device=ranks.device, seed=stream_seed(seed, "probe", ranks.rank), eps=eps)
    rows_first = feats.transpose(0, 1).contiguous().to(ranks.device)  # [n, P, K]: rows are gathered
    return ranks.gather_rows(rows_first).transpose(0, 1).cpu()


def linear_probe(model: IterativeVAE, data: EvalData, n_steps: int, window: int,
                 ranks: Ranks, batch_size: int = 2048, max_samples: int | None = 10_000,
                 seed: int = 0, eps: float | torch.Tensor = 1.0) -> list[dict] | None:
    """Probe accuracies of each member's latents and of the pixels on a labelled data set:
    the features of every member from one batched inference, then one probe per member
    (the pixel baseline is fitted once).

    Returns one dict per member, {'latent_acc', 'pixel_acc', 'chance', 'n_train',
    'n_test', 'n_classes', 'n_steps', 'window', 'data'} (on the main process; None
    elsewhere).
    """
    if data.y_train is None or data.y_val is None:
        raise ValueError(f"data set {data.name} has no labels")
    data = fit_to_model(data, model.config.input_dim)
    x_tr, y_tr = limit_rows(data.x_train, data.y_train, max_samples)
    x_te, y_te = limit_rows(data.x_val, data.y_val, max_samples)
    f_tr = features(model, x_tr, n_steps, window, ranks, batch_size, seed, eps)
    f_te = features(model, x_te, n_steps, window, ranks, batch_size, seed + 1, eps)
    if not ranks.is_main:
        return None
    counts = np.bincount(y_te)
    shared = {
        "pixel_acc": probe_accuracy(x_tr, y_tr, x_te, y_te, seed=seed),
        "chance": float(counts.max() / counts.sum()),
        "n_train": int(len(x_tr)),
        "n_test": int(len(x_te)),
        "n_classes": int(len(np.unique(y_tr))),
        "n_steps": int(n_steps),
        "window": int(min(window, n_steps)),
        "data": data.meta.get("resized", "as is"),
    }
    return [{"latent_acc": probe_accuracy(tr.numpy(), y_tr, te.numpy(), y_te, seed=seed), **shared}
            for tr, te in zip(f_tr, f_te, strict=True)]
