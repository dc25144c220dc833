//! Reference architectures with seeded random weights, built with [`GraphBuilder`]: the shapes of
//! real CNNs and transformers, for gradient checks and benchmarks (no downloads needed).

mod segmenter;

pub use segmenter::{mean_linear, segmenter, SegLayout, SEGMENTER_REACH};
mod detector;

pub use detector::{detector, detector_sized, post_nms_detector, DETECTOR_CELL, DETECTOR_SIDE};
mod concepts;

pub use concepts::stripes;
mod patterns;

pub use patterns::{pattern_conv, pattern_dense, signal_distractor};
mod text_inputs;

pub use text_inputs::text_inputs_classifier;

use super::builder::{Attr, GraphBuilder};
use super::proto::{data_type, ModelProto};

pub mod channels;

/// SplitMix64: small, seeded, reproducible.
struct Weights(u64);

impl Weights {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in [-scale, scale).
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

struct Net {
    g: GraphBuilder,
    w: Weights,
    n: usize,
}

impl Net {
    fn new(name: &str, opset: i64, seed: u64) -> Self {
        Net {
            g: GraphBuilder::new(name, opset),
            w: Weights(seed),
            n: 0,
        }
    }

    fn param(&mut self, dims: &[i64], scale: f32) -> String {
        self.n += 1;
        let count = dims.iter().product::<i64>() as usize;
        let values = self.w.vec(count, scale);
        self.g.constant(&format!("p{}", self.n), dims, &values)
    }

    fn conv(&mut self, x: &str, cin: i64, cout: i64, k: i64, stride: i64, group: i64) -> String {
        // He-style scale keeps activations in range through deep stacks.
        let fan_in = (cin / group) * k * k;
        let w = self.param(&[cout, cin / group, k, k], (6.0 / fan_in as f32).sqrt());
        let b = self.param(&[cout], 0.05);
        let p = k / 2;
        self.g.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(group)),
            ],
        )
    }

    fn bn(&mut self, x: &str, c: i64) -> String {
        let scale: Vec<f32> = (0..c).map(|_| 1.0 + 0.2 * self.w.next()).collect();
        let var: Vec<f32> = (0..c).map(|_| 1.0 + 0.5 * self.w.next().abs()).collect();
        self.n += 1;
        let n = self.n;
        let s = self.g.constant(&format!("bn{n}_scale"), &[c], &scale);
        let b = self.param(&[c], 0.1);
        let m = self.param(&[c], 0.1);
        let v = self.g.constant(&format!("bn{n}_var"), &[c], &var);
        self.g.node(
            "BatchNormalization",
            &[x, &s, &b, &m, &v],
            vec![("epsilon", Attr::Float(1e-5))],
        )
    }

    /// GELU written with Erf, `x * (1 + erf(x / sqrt 2)) / 2`, as exporters emit it before opset
    /// 20; its constants are named after `tag`.
    fn gelu(&mut self, x: &str, tag: &str) -> String {
        let r2 = self
            .g
            .constant(&format!("{tag}_inv_sqrt2"), &[], &[std::f32::consts::FRAC_1_SQRT_2]);
        let half = self.g.constant(&format!("{tag}_half"), &[], &[0.5]);
        let one = self.g.constant(&format!("{tag}_one"), &[], &[1.0]);
        let scaled = self.g.node("Mul", &[x, &r2], vec![]);
        let e = self.g.node("Erf", &[&scaled], vec![]);
        let e = self.g.node("Add", &[&e, &one], vec![]);
        let y = self.g.node("Mul", &[x, &e], vec![]);
        self.g.node("Mul", &[&y, &half], vec![])
    }

    /// `x` times seeded `[cin, cout]` weights (scaled for unit variance), plus a seeded bias when
    /// asked.
    fn linear(&mut self, x: &str, cin: i64, cout: i64, bias: bool) -> String {
        let w = self.param(&[cin, cout], (3.0 / cin as f32).sqrt());
        let b = bias.then(|| self.param(&[cout], 0.05));
        let y = self.g.node("MatMul", &[x, &w], vec![]);
        match b {
            Some(b) => self.g.node("Add", &[&y, &b], vec![]),
            None => y,
        }
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.node("Relu", &[x], vec![])
    }

    fn head(&mut self, x: &str, c: i64, classes: i64) -> String {
        let gap = self.g.node("GlobalAveragePool", &[x], vec![]);
        let flat = self.g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
        let w = self.param(&[c, classes], (6.0 / c as f32).sqrt());
        let b = self.param(&[classes], 0.05);
        self.g.node("Gemm", &[&flat, &w, &b], vec![])
    }

    fn finish(mut self, logits: &str) -> ModelProto {
        let _ = logits;
        self.g.rename_last_output("logits");
        self.g.output_any("logits");
        self.g.build()
    }
}

/// A VGG-style CNN: per stage two 3x3 Conv-ReLU and a 2x2 MaxPool, then two Gemm layers.
pub fn vgg(widths: &[i64], size: i64, classes: i64) -> ModelProto {
    let mut net = Net::new("vgg", 17, 11);
    let mut x = net.g.input("input", &[-1, 3, size, size]);
    let mut c = 3;
    let mut s = size;
    for &w in widths {
        for _ in 0..2 {
            let y = net.conv(&x, c, w, 3, 1, 1);
            x = net.relu(&y);
            c = w;
        }
        x = net.g.node(
            "MaxPool",
            &[&x],
            vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        );
        s /= 2;
    }
    let flat = net.g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))]);
    let features = c * s * s;
    let w1 = net.param(&[features, 64], (6.0 / features as f32).sqrt());
    let b1 = net.param(&[64], 0.05);
    let h = net.g.node("Gemm", &[&flat, &w1, &b1], vec![]);
    let h = net.relu(&h);
    let w2 = net.param(&[classes, 64], (6.0 / 64.0f32).sqrt());
    let b2 = net.param(&[classes], 0.05);
    let y = net.g.node("Gemm", &[&h, &w2, &b2], vec![("transB", Attr::Int(1))]);
    net.finish(&y)
}

/// A ResNet with basic blocks (ResNet-18: `blocks = [2, 2, 2, 2]`, `widths = [64, 128, 256, 512]`,
/// 224x224 input, 1000 classes): BatchNorm, residual Add, MaxPool stem, GlobalAveragePool head.
pub fn resnet(blocks: &[usize], widths: &[i64], size: i64, classes: i64) -> ModelProto {
    let mut net = Net::new("resnet", 17, 12);
    let input = net.g.input("input", &[-1, 3, size, size]);
    let stem = net.conv(&input, 3, widths[0], 7, 2, 1);
    let stem = net.bn(&stem, widths[0]);
    let stem = net.relu(&stem);
    let mut x = net.g.node(
        "MaxPool",
        &[&stem],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    let mut c = widths[0];
    for (stage, (&n, &w)) in blocks.iter().zip(widths).enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let a = net.conv(&x, c, w, 3, stride, 1);
            let a = net.bn(&a, w);
            let a = net.relu(&a);
            let b = net.conv(&a, w, w, 3, 1, 1);
            let b = net.bn(&b, w);
            let shortcut = if stride != 1 || c != w {
                let s = net.conv(&x, c, w, 1, stride, 1);
                net.bn(&s, w)
            } else {
                x.clone()
            };
            let sum = net.g.node("Add", &[&b, &shortcut], vec![]);
            x = net.relu(&sum);
            c = w;
        }
    }
    let y = net.head(&x, c, classes);
    net.finish(&y)
}

/// A MobileNet-style CNN: depthwise separable blocks with BatchNorm, Clip as ReLU6 and HardSwish.
pub fn mobilenet(widths: &[i64], size: i64, classes: i64) -> ModelProto {
    let mut net = Net::new("mobilenet", 17, 13);
    let input = net.g.input("input", &[-1, 3, size, size]);
    let lo = net.g.constant("relu6_lo", &[], &[0.0]);
    let hi = net.g.constant("relu6_hi", &[], &[6.0]);
    let x = net.conv(&input, 3, widths[0], 3, 2, 1);
    let x = net.bn(&x, widths[0]);
    let mut x = net.g.node("Clip", &[&x, &lo, &hi], vec![]);
    let mut c = widths[0];
    for &w in &widths[1..] {
        let dw = net.conv(&x, c, c, 3, 2, c);
        let dw = net.bn(&dw, c);
        let dw = net.g.node("Clip", &[&dw, &lo, &hi], vec![]);
        let pw = net.conv(&dw, c, w, 1, 1, 1);
        let pw = net.bn(&pw, w);
        x = net.g.node("HardSwish", &[&pw], vec![]);
        c = w;
    }
    let y = net.head(&x, c, classes);
    net.finish(&y)
}

/// A ConvNeXt-style CNN as torchvision exports it: a 4x4 stride-4 stem, per stage a channels-last
/// LayerNorm and a 2x2 stride-2 downsampling Conv (after the first), then blocks of a 7x7 depthwise
/// Conv, a Transpose to channels-last, LayerNormalization, a Linear-GELU-Linear MLP, a layer scale,
/// a Transpose back and the residual Add; the head pools globally, then normalises the 1x1 map
/// channels-last (LayerNorm2d) before the Gemm. `size` a multiple of 4 x 2^(stages - 1).
pub fn convnext(widths: &[i64], size: i64, classes: i64) -> ModelProto {
    let mut net = Net::new("convnext", 17, 18);
    let image = net.g.input("input", &[-1, 3, size, size]);
    let layer_norm_nhwc = |net: &mut Net, x: &str, c: i64, transpose: bool| -> String {
        let scale: Vec<f32> = (0..c).map(|_| 1.0 + 0.1 * net.w.next()).collect();
        net.n += 1;
        let s = net.g.constant(&format!("ln{}_scale", net.n), &[c], &scale);
        let b = net.param(&[c], 0.05);
        let x = match transpose {
            true => net
                .g
                .node("Transpose", &[x], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))]),
            false => x.to_string(),
        };
        let y = net.g.node(
            "LayerNormalization",
            &[&x, &s, &b],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-6))],
        );
        match transpose {
            true => net
                .g
                .node("Transpose", &[&y], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]),
            false => y,
        }
    };
    let stem_w = net.param(&[widths[0], 3, 4, 4], (2.0 / 48.0f32).sqrt());
    let stem_b = net.param(&[widths[0]], 0.05);
    let stem = net.g.node(
        "Conv",
        &[&image, &stem_w, &stem_b],
        vec![
            ("kernel_shape", Attr::Ints(vec![4, 4])),
            ("strides", Attr::Ints(vec![4, 4])),
        ],
    );
    let mut x = layer_norm_nhwc(&mut net, &stem, widths[0], true);
    let mut c = widths[0];
    for (stage, &width) in widths.iter().enumerate() {
        if stage > 0 {
            let normed = layer_norm_nhwc(&mut net, &x, c, true);
            let w = net.param(&[width, c, 2, 2], (2.0 / (4 * c) as f32).sqrt());
            let b = net.param(&[width], 0.05);
            x = net.g.node(
                "Conv",
                &[&normed, &w, &b],
                vec![
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                ],
            );
            c = width;
        }
        // One block per stage.
        let dw = net.conv(&x, c, c, 7, 1, c);
        let nhwc = net
            .g
            .node("Transpose", &[&dw], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))]);
        let normed = layer_norm_nhwc(&mut net, &nhwc, c, false);
        let h = net.linear(&normed, c, 4 * c, true);
        let h = net.gelu(&h, &format!("gelu_stage{stage}"));
        let y = net.linear(&h, 4 * c, c, true);
        let gamma = net.param(&[c], 0.5);
        let y = net.g.node("Mul", &[&y, &gamma], vec![]);
        let y = net
            .g
            .node("Transpose", &[&y], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
        x = net.g.node("Add", &[&x, &y], vec![]);
    }
    let pooled = net.g.node("GlobalAveragePool", &[&x], vec![]);
    let normed = layer_norm_nhwc(&mut net, &pooled, c, true);
    let flat = net.g.node("Flatten", &[&normed], vec![("axis", Attr::Int(1))]);
    let w = net.param(&[c, classes], (6.0 / c as f32).sqrt());
    let b = net.param(&[classes], 0.05);
    let y = net.g.node("Gemm", &[&flat, &w, &b], vec![]);
    net.finish(&y)
}

/// A transformer encoder classifier on embeddings `[batch, tokens, dim]`: learned positions,
/// multi-head self-attention (MatMul, Softmax), LayerNormalization, an Erf-GELU feed-forward layer,
/// and the first token (Gather) into a Gemm classifier. With `token_ids`, the input is int64 token
/// ids looked up in an embedding table (Gather), and the embeddings are the tensor `embeddings`.
pub fn transformer(tokens: i64, dim: i64, heads: i64, classes: i64, token_ids: Option<i64>) -> ModelProto {
    let mut net = Net::new("transformer", 17, 14);
    let x = match token_ids {
        None => net.g.input("input", &[-1, tokens, dim]),
        Some(vocab) => {
            let ids = net.g.input_typed("input_ids", data_type::INT64, &[-1, tokens]);
            // Its own generator, so the rest of the weights match the embeddings-input variant.
            let values = Weights(99).vec((vocab * dim) as usize, 1.0);
            let table = net.g.constant("embedding_table", &[vocab, dim], &values);
            let e = net.g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
            net.g.rename_last_output("embeddings");
            let _ = e;
            "embeddings".to_string()
        }
    };
    encoder_classifier(net, &x, (tokens, dim, heads), 1, classes)
}

/// A BERT-style text classifier: int64 `input_ids` and `attention_mask` `[batch, tokens]` of any
/// length up to `max_tokens`; a word-embedding lookup (Gather), learned positions sliced to the
/// length, `layers` encoder layers whose attention ignores masked tokens (`(1 - mask) * -10000`
/// added to the scores, as BERT does), and the first token into a Gemm.
pub fn text_transformer(
    vocab: i64,
    max_tokens: i64,
    (dim, heads, layers): (i64, i64, usize),
    classes: i64,
) -> ModelProto {
    let mut net = Net::new("text_transformer", 17, 16);
    let ids = net.g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
    let mask = net.g.input_typed("attention_mask", data_type::INT64, &[-1, -1]);
    let table = net.param(&[vocab, dim], 1.0);
    let words = net.g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    let pos = net.param(&[max_tokens, dim], 0.1);
    let shape = net.g.node("Shape", &[&ids], vec![]);
    let one = net.g.constant_i64("seq_axis", &[1], &[1]);
    let two = net.g.constant_i64("seq_end", &[1], &[2]);
    let zero = net.g.constant_i64("seq_start", &[1], &[0]);
    let length = net.g.node("Slice", &[&shape, &one, &two], vec![]);
    let positions = net.g.node("Slice", &[&pos, &zero, &length, &zero], vec![]);
    let mut x = net.g.node("Add", &[&words, &positions], vec![]);
    // BERT's extended mask: [batch, 1, 1, tokens], 0 where attended, -10000 where masked.
    let axes = net.g.constant_i64("mask_axes", &[2], &[1, 2]);
    let m = net.g.node("Unsqueeze", &[&mask, &axes], vec![]);
    let m = net
        .g
        .node("Cast", &[&m], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let unit = net.g.constant("mask_one", &[], &[1.0]);
    let big = net.g.constant("mask_big", &[], &[-10000.0]);
    let inverted = net.g.node("Sub", &[&unit, &m], vec![]);
    let bias = net.g.node("Mul", &[&inverted, &big], vec![]);
    for layer in 0..layers {
        x = encoder_layer(&mut net, &x, (-1, dim, heads), layer, Some(&bias));
    }
    let first = net.g.constant_i64("first_token", &[], &[0]);
    let cls = net.g.node("Gather", &[&x, &first], vec![("axis", Attr::Int(1))]);
    let wc = net.param(&[dim, classes], (6.0 / dim as f32).sqrt());
    let bc = net.param(&[classes], 0.05);
    let y = net.g.node("Gemm", &[&cls, &wc, &bc], vec![]);
    net.finish(&y)
}

/// A text classifier whose right answer is known: labels `[negative, positive]`, logits the
/// count of `negative` and of `positive` token ids in the attended tokens. Every token's
/// embedding (`dim` >= 2) goes through a Relu: positive ids have 2 in their first value,
/// negative ids in their second, every other token -1 in both (so it adds nothing, and its
/// gradient is zero); the rest of each embedding is seeded noise.
pub fn keyword_classifier(vocab: usize, dim: usize, positive: &[usize], negative: &[usize]) -> ModelProto {
    let mut net = Net::new("keyword_classifier", 17, 17);
    let ids = net.g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
    let mask = net.g.input_typed("attention_mask", data_type::INT64, &[-1, -1]);
    let mut table = net.w.vec(vocab * dim, 0.5);
    for id in 0..vocab {
        let row = &mut table[id * dim..id * dim + 2];
        row.copy_from_slice(&[-1.0, -1.0]);
        if positive.contains(&id) {
            row[0] = 2.0;
        }
        if negative.contains(&id) {
            row[1] = 2.0;
        }
    }
    let table = net.g.constant("word_embeddings", &[vocab as i64, dim as i64], &table);
    let e = net.g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    let h = net.g.node("Relu", &[&e], vec![]);
    let axes = net.g.constant_i64("mask_axis", &[1], &[2]);
    let m = net.g.node("Unsqueeze", &[&mask, &axes], vec![]);
    let m = net
        .g
        .node("Cast", &[&m], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let h = net.g.node("Mul", &[&h, &m], vec![]);
    let tokens_axis = net.g.constant_i64("tokens_axis", &[1], &[1]);
    let s = net
        .g
        .node("ReduceSum", &[&h, &tokens_axis], vec![("keepdims", Attr::Int(0))]);
    // logits = [negative count, positive count] = s @ W with W's first two rows swapped in.
    let mut w = vec![0f32; dim * 2];
    w[1] = 1.0; // s[0] (positive) -> logit 1
    w[2] = 1.0; // s[1] (negative) -> logit 0
    let w = net.g.constant("readout", &[dim as i64, 2], &w);
    let y = net.g.node("MatMul", &[&s, &w], vec![]);
    net.finish(&y)
}

/// A BERT-style WordPiece `tokenizer.json` (lower-casing, `[CLS] ... [SEP]`) over `vocab`, whose
/// first five tokens must be `[PAD] [UNK] [CLS] [SEP] [MASK]`; ids are positions in `vocab`.
pub fn wordpiece_tokenizer(vocab: &[&str]) -> serde_json::Value {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// A vision transformer classifier on images `[batch, 3, size, size]`: `patch x patch` patches
/// embedded by a strided Conv, flattened to tokens, a learned class token in front, then the
/// `layers` encoder layers and the classifier of [`transformer`] (positions, attention, the class
/// token into a Gemm). Tokens: `(size / patch)^2 + 1`.
pub fn vit(size: i64, patch: i64, (dim, heads, layers): (i64, i64, usize), classes: i64) -> ModelProto {
    let mut net = Net::new("vit", 17, 15);
    let image = net.g.input("input", &[-1, 3, size, size]);
    let grid = size / patch;
    let patches = grid * grid;
    let w = net.param(&[dim, 3, patch, patch], (2.0 / (3 * patch * patch) as f32).sqrt());
    let b = net.param(&[dim], 0.05);
    let e = net.g.node(
        "Conv",
        &[&image, &w, &b],
        vec![
            ("kernel_shape", Attr::Ints(vec![patch, patch])),
            ("strides", Attr::Ints(vec![patch, patch])),
        ],
    );
    let flat_shape = net.g.constant_i64("patch_flat", &[3], &[0, dim, patches]);
    let flat = net.g.node("Reshape", &[&e, &flat_shape], vec![]);
    let tokens = net
        .g
        .node("Transpose", &[&flat], vec![("perm", Attr::Ints(vec![0, 2, 1]))]);
    // The class token, expanded to the batch as exporters write it.
    let cls = net.param(&[1, 1, dim], 0.5);
    let shape = net.g.node("Shape", &[&image], vec![]);
    let zero = net.g.constant_i64("batch_axis", &[1], &[0]);
    let batch = net.g.node("Gather", &[&shape, &zero], vec![("axis", Attr::Int(0))]);
    let rest = net.g.constant_i64("cls_rest", &[2], &[1, dim]);
    let cls_shape = net.g.node("Concat", &[&batch, &rest], vec![("axis", Attr::Int(0))]);
    let cls = net.g.node("Expand", &[&cls, &cls_shape], vec![]);
    let x = net.g.node("Concat", &[&cls, &tokens], vec![("axis", Attr::Int(1))]);
    encoder_classifier(net, &x, (patches + 1, dim, heads), layers, classes)
}

/// One encoder layer over `x [batch, tokens, dim]` and a classifier on its first token.
/// Encoder layers over `x [batch, tokens, dim]` (learned positions added first) and a classifier
/// on the first token.
fn encoder_classifier(
    mut net: Net,
    x: &str,
    (tokens, dim, heads): (i64, i64, i64),
    layers: usize,
    classes: i64,
) -> ModelProto {
    let pos = net.param(&[tokens, dim], 0.1);
    let mut x = net.g.node("Add", &[x, &pos], vec![]);
    for layer in 0..layers {
        x = encoder_layer(&mut net, &x, (tokens, dim, heads), layer, None);
    }
    let first = net.g.constant_i64("first_token", &[], &[0]);
    let cls = net.g.node("Gather", &[&x, &first], vec![("axis", Attr::Int(1))]);
    let wc = net.param(&[dim, classes], (6.0 / dim as f32).sqrt());
    let bc = net.param(&[classes], 0.05);
    let y = net.g.node("Gemm", &[&cls, &wc, &bc], vec![]);
    net.finish(&y)
}

/// One post-norm encoder layer: multi-head self-attention (MatMul, Softmax), a residual and
/// LayerNormalization, an Erf-GELU feed-forward layer, a residual and LayerNormalization. Constants
/// of layers after the first carry the layer's number. A `tokens` of -1 leaves the sequence
/// length to the input; `mask_bias` (`[batch, 1, 1, tokens]`) is added to the attention scores.
fn encoder_layer(
    net: &mut Net,
    x: &str,
    (tokens, dim, heads): (i64, i64, i64),
    layer: usize,
    mask_bias: Option<&str>,
) -> String {
    let suffix = if layer == 0 { String::new() } else { format!("_{layer}") };
    let dh = dim / heads;
    let split_heads = |net: &mut Net, t: &str| {
        let shape = net
            .g
            .constant_i64(&format!("heads_shape_{t}{suffix}"), &[4], &[0, tokens, heads, dh]);
        let r = net.g.node("Reshape", &[t, &shape], vec![]);
        net.g
            .node("Transpose", &[&r], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))])
    };
    let scale = (1.0 / (dim as f32).sqrt()).sqrt();
    let wq = net.param(&[dim, dim], scale * 1.7);
    let wk = net.param(&[dim, dim], scale * 1.7);
    let wv = net.param(&[dim, dim], scale * 1.7);
    let q = net.g.node("MatMul", &[x, &wq], vec![]);
    let k = net.g.node("MatMul", &[x, &wk], vec![]);
    let v = net.g.node("MatMul", &[x, &wv], vec![]);
    let (q, k, v) = (split_heads(net, &q), split_heads(net, &k), split_heads(net, &v));
    let kt = net
        .g
        .node("Transpose", &[&k], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
    let scores = net.g.node("MatMul", &[&q, &kt], vec![]);
    let denom = net
        .g
        .constant(&format!("attn_scale{suffix}"), &[], &[(dh as f32).sqrt()]);
    let mut scores = net.g.node("Div", &[&scores, &denom], vec![]);
    if let Some(bias) = mask_bias {
        scores = net.g.node("Add", &[&scores, bias], vec![]);
    }
    let attn = net.g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
    let ctx = net.g.node("MatMul", &[&attn, &v], vec![]);
    let ctx = net
        .g
        .node("Transpose", &[&ctx], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
    let merged_shape = net
        .g
        .constant_i64(&format!("merged_shape{suffix}"), &[3], &[0, tokens, dim]);
    let ctx = net.g.node("Reshape", &[&ctx, &merged_shape], vec![]);
    let wo = net.param(&[dim, dim], scale * 1.7);
    let o = net.g.node("MatMul", &[&ctx, &wo], vec![]);
    let res = net.g.node("Add", &[x, &o], vec![]);
    let ln_scale: Vec<f32> = (0..dim).map(|_| 1.0 + 0.1 * net.w.next()).collect();
    let ln1_s = net.g.constant(&format!("ln1_scale{suffix}"), &[dim], &ln_scale);
    let ln1_b = net.param(&[dim], 0.1);
    let h = net.g.node(
        "LayerNormalization",
        &[&res, &ln1_s, &ln1_b],
        vec![("axis", Attr::Int(-1))],
    );
    let f = net.linear(&h, dim, 2 * dim, true);
    let gelu = net.gelu(&f, &format!("gelu{suffix}"));
    let f2 = net.linear(&gelu, 2 * dim, dim, false);
    let res2 = net.g.node("Add", &[&h, &f2], vec![]);
    let ln2_s = net.g.constant(&format!("ln2_scale{suffix}"), &[dim], &ln_scale);
    let ln2_b = net.param(&[dim], 0.1);
    net.g.node(
        "LayerNormalization",
        &[&res2, &ln2_s, &ln2_b],
        vec![("axis", Attr::Int(-1))],
    )
}
