"""Data check independent of training: the FastICA basis of a data set's patches, Gabor-fitted.

    PYTHONPATH=. python docs/figures/ica_check.py natural16      # or deadleaves16, old16

`old16` is natural16 with the photo list before issue 14 (text, page, coins, brick, clock,
hubble_deep_field and retina included). Prints the Gabor summary as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from sklearn.decomposition import FastICA

from fondtrain.data import photo_sources, sources
from fondtrain.eval.gabor import fit_dictionary

OLD_TRAIN_IMAGES = ("astronaut", "brick", "camera", "chelsea", "china", "clock", "coins",
                    "grass", "hubble_deep_field", "moon", "motorcycle", "page", "retina",
                    "rocket", "text")

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    if name == "old16":
        photo_sources.TRAIN_IMAGES = OLD_TRAIN_IMAGES
        name = "natural16"
    x = sources.load_source(name, seed=0, n_train=20_000, n_val=10).x_train
    ica = FastICA(n_components=100, whiten="unit-variance", random_state=0, max_iter=400, tol=1e-3)
    ica.fit(x.astype(np.float64))
    summary = fit_dictionary(ica.mixing_).summary()  # mixing_: [256, 100] basis functions
    summary["seconds"] = round(time.time() - started, 1)
    print(sys.argv[1], json.dumps(summary))
