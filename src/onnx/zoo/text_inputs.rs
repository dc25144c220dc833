//! A text classifier with every input a BERT export may take: int64 `input_ids`,
//! `attention_mask`, `token_type_ids` and `position_ids` `[batch, tokens]`, plus a float
//! `temperature` scalar that divides the logits (a constant side input, which the manifest gives).
//! Its word embedding is stored as an int8 table dequantized in the graph (`Mul(Cast(q), scale)`,
//! one scale per row), as int8 exports store it. The answer is known:
//! - logits `negative` and `positive` count the negative and positive keywords among the attended
//!   tokens, as [`super::keyword_classifier`]'s do;
//! - logit `positions` is the sum of the attended tokens' position ids (`0 + 1 + ... + n - 1` for
//!   an unpadded text of `n` tokens), so a wrong derived input shows in the prediction;
//! - a token type of 1 would add 5 to both keyword values of every token: zeros must be fed;
//! - every logit is divided by `temperature`.

use super::super::builder::{Attr, GraphBuilder};
use super::super::proto::{data_type, ModelProto, TensorProto};

/// Values per token.
const DIM: usize = 4;
/// The dequantization scale: every table value below is a multiple of it.
const SCALE: f32 = 1.0 / 32.0;

/// The model: `vocab` word ids, positions below `max_tokens`, labels `[negative, positive,
/// positions]`.
pub fn text_inputs_classifier(vocab: usize, max_tokens: usize, positive: &[usize], negative: &[usize]) -> ModelProto {
    let mut g = GraphBuilder::new("text_inputs_classifier", 17);
    let ids = g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
    let mask = g.input_typed("attention_mask", data_type::INT64, &[-1, -1]);
    let types = g.input_typed("token_type_ids", data_type::INT64, &[-1, -1]);
    let positions = g.input_typed("position_ids", data_type::INT64, &[-1, -1]);
    let temperature = g.input("temperature", &[]);
    // Word rows: [2 or -1, 2 or -1, 0, seeded noise], as multiples of SCALE in int8.
    let mut q = vec![0i8; vocab * DIM];
    for id in 0..vocab {
        let row = &mut q[id * DIM..(id + 1) * DIM];
        row[0] = if positive.contains(&id) { 64 } else { -32 };
        row[1] = if negative.contains(&id) { 64 } else { -32 };
        row[3] = ((id * 37 % 31) as i8) - 15;
    }
    let scale = g.constant("word_scale", &[vocab as i64, 1], &vec![SCALE; vocab]);
    let qf = g.node("Cast", &["word_q"], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let table = g.node("Mul", &[&qf, &scale], vec![]);
    let words = g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    // Token types: row 1 would push both keyword values up by 5.
    let mut type_rows = vec![0f32; 2 * DIM];
    type_rows[DIM] = 5.0;
    type_rows[DIM + 1] = 5.0;
    let type_table = g.constant("type_embeddings", &[2, DIM as i64], &type_rows);
    let typed = g.node("Gather", &[&type_table, &types], vec![("axis", Attr::Int(0))]);
    // Positions: row p holds p in its third value.
    let mut pos_rows = vec![0f32; max_tokens * DIM];
    for p in 0..max_tokens {
        pos_rows[p * DIM + 2] = p as f32;
    }
    let pos_table = g.constant("position_embeddings", &[max_tokens as i64, DIM as i64], &pos_rows);
    let placed = g.node("Gather", &[&pos_table, &positions], vec![("axis", Attr::Int(0))]);
    let x = g.node("Add", &[&words, &typed], vec![]);
    let x = g.node("Add", &[&x, &placed], vec![]);
    let h = g.node("Relu", &[&x], vec![]);
    let axes = g.constant_i64("mask_axis", &[1], &[2]);
    let m = g.node("Unsqueeze", &[&mask, &axes], vec![]);
    let m = g.node("Cast", &[&m], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let h = g.node("Mul", &[&h, &m], vec![]);
    let tokens_axis = g.constant_i64("tokens_axis", &[1], &[1]);
    let s = g.node("ReduceSum", &[&h, &tokens_axis], vec![("keepdims", Attr::Int(0))]);
    // [negative, positive, positions] = s @ W.
    let mut w = vec![0f32; DIM * 3];
    w[1] = 1.0; // s[0] (positive keywords) -> logit 1
    w[3] = 1.0; // s[1] (negative keywords) -> logit 0
    w[2 * 3 + 2] = 1.0; // s[2] (positions) -> logit 2
    let w = g.constant("readout", &[DIM as i64, 3], &w);
    let y = g.node("MatMul", &[&s, &w], vec![]);
    g.node("Div", &[&y, &temperature], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 3]);
    let mut model = g.build();
    if let Some(graph) = model.graph.as_mut() {
        graph.initializer.push(TensorProto {
            name: Some("word_q".into()),
            dims: vec![vocab as i64, DIM as i64],
            data_type: Some(data_type::INT8),
            raw_data: Some(q.iter().map(|&v| v as u8).collect()),
            ..Default::default()
        });
    }
    model
}
