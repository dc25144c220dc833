#!/usr/bin/env python3
"""Makes models/movie-reviews: a small bag-of-words sentiment classifier, bundled so that `make run`
serves a text model (the tests build their own; `make minilm` adds a real transformer).

Data: the 10,605 movie-review snippets of Hutto and Gilbert (ICWSM 2014: mean human ratings from -4
to 4) in the source archive of the PyPI package `vaderSentiment` 3.3.2 (MIT), positive above 0,
negative below, the 37 neutral ones left out; every fifth snippet held out. Tokenizer: BERT's
lower-casing normaliser and pre-tokenizer, the 2,000 commonest training words (WordLevel, others
[UNK]), `[CLS] ... [SEP]` around every text, written with the `tokenizers` package. Model: a
logistic regression on the tokens' mean (Newton's method, L2), written as ONNX: an embedding lookup
(Gather) whose two columns are -w/2 and w/2, the mean over the attended tokens, and the bias, so
that the two logits' softmax is the regression's probability. Output: models/movie-reviews/
(model.onnx, model.toml, tokenizer.json, README.md with the held-out accuracy). Run
`make text-model`.
"""

import collections
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from vader_snippets import snippets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "movie-reviews")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = 2000
L2 = 1e-6


def tokenizer_of(vocab):
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    t.add_special_tokens(SPECIALS)
    return t


def fit(x, y):
    """Newton's method on the L2-regularised log loss; returns (w, b)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], L2 * len(x))
    reg[-1] = 0
    for _ in range(30):
        p = 1 / (1 + np.exp(-xb @ w))
        step = np.linalg.solve((xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg), xb.T @ (p - y) + reg * w)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w[:-1], w[-1]


def main():
    texts, labels = snippets()
    test = np.arange(len(texts)) % 5 == 0
    words = pre_tokenizers.BertPreTokenizer()
    lower = normalizers.BertNormalizer(lowercase=True)
    counts = collections.Counter(
        w for t, held in zip(texts, test) if not held for w, _ in words.pre_tokenize_str(lower.normalize_str(t))
    )
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w, _ in counts.most_common(WORDS):
        vocab.setdefault(w, len(vocab))
    tokenizer = tokenizer_of(vocab)
    x = np.zeros((len(texts), len(vocab)))
    for i, e in enumerate(tokenizer.encode_batch(texts)):
        for token in e.ids:
            x[i, token] += 1.0 / len(e.ids)
    w, b = fit(x[~test], labels[~test])
    accuracy = float((((x[test] @ w + b) > 0) == (labels[test] > 0.5)).mean())
    train = float((((x[~test] @ w + b) > 0) == (labels[~test] > 0.5)).mean())

    table = np.stack([-w / 2, w / 2], axis=1).astype(np.float32)
    bias = np.array([-b / 2, b / 2], np.float32)
    nodes = [
        helper.make_node("Gather", ["word_embeddings", "input_ids"], ["embedded"], name="embeddings", axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["embedded", "mask_3d"], ["masked"], name="mask_apply"),
        helper.make_node("ReduceSum", ["masked", "tokens_axis"], ["summed"], name="sum", keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "tokens_axis"], ["count"], name="count", keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["mean"], name="mean"),
        helper.make_node("Add", ["mean", "bias"], ["logits"], name="logits"),
    ]
    inits = [
        numpy_helper.from_array(table, "word_embeddings"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "tokens_axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "movie_reviews",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"]) for n in ["input_ids", "attention_mask"]],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="explaind scripts/make_text_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(OUT, exist_ok=True)
    onnx.save(model, os.path.join(OUT, "model.onnx"))
    tokenizer.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "model.toml"), "w") as f:
        f.write(
            'task = "text-classification"\n'
            'description = "Bag-of-words sentiment of movie-review snippets (VADER\'s ground truth), for trying text methods"\n'
            'scores = "logits"\nlabels = ["negative", "positive"]\n'
            '[text]\ntokenizer = "tokenizer.json"\nmax_length = 64\n'
        )
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "# movie-reviews\n\n"
            "Made by `scripts/make_text_model.py` (`make text-model`). A logistic regression on the mean of a "
            f"text's tokens (the {WORDS} commonest training words, WordLevel, BERT's lower-casing normaliser and "
            "pre-tokenizer; [CLS] and [SEP] around the text), written as an embedding lookup and a mean so that "
            "explaind's gradient methods cut it at its embeddings.\n\n"
            "Data: the movie-review snippets of Hutto and Gilbert (ICWSM 2014) from the source archive of the PyPI "
            "package `vaderSentiment` 3.3.2 (MIT): positive if the mean human rating is above 0, negative below "
            f"({int(labels.sum())} positive, {int(len(labels) - labels.sum())} negative).\n\n"
            f"Held-out accuracy (every fifth snippet, {int(test.sum())}): **{accuracy:.3f}** (training {train:.3f}). "
            "`make minilm` adds all-MiniLM-L6-v2 with a head on the same data (0.777).\n"
        )
    print(f"held-out accuracy {accuracy:.3f} on {int(test.sum())} snippets (training {train:.3f}); wrote {OUT}")


if __name__ == "__main__":
    main()
