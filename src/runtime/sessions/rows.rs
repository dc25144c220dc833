//! Rows per pass, sized from the pass budget (`max_pass_bytes`) and each model's bytes per row.

use super::WorkerRuntime;
use crate::runtime::{LoadedModel, RuntimeError};

/// Which kind of pass a row runs through.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pass {
    Forward,
    /// `whole`: the rows depend on each other (DeepLIFT's pairs) and run in one pass.
    Backward {
        whole: bool,
    },
}

impl WorkerRuntime {
    /// Most rows per pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Most rows per backward pass of `model`: `max_batch`, fewer when that many rows would hold
    /// more than `max_pass_bytes` of activations and gradients (a photo model's 64-row backward
    /// pass holds gigabytes; 8 rows run as fast per row).
    pub fn gradient_rows(&self, model: &LoadedModel) -> usize {
        self.gradient_rows_for(model, usize::MAX)
    }

    /// Most rows per forward pass of `model`, by the same budget.
    pub fn forward_rows(&self, model: &LoadedModel) -> usize {
        self.forward_rows_for(model, usize::MAX)
    }

    /// [`Self::gradient_rows`] for input rows of `row_len` values (a text of some tokens).
    pub fn gradient_rows_for(&self, model: &LoadedModel, row_len: usize) -> usize {
        let bytes = self.scaled(model, self.row_bytes(model, Pass::Backward { whole: false }), row_len);
        self.rows_per_pass(model, bytes)
    }

    /// [`Self::forward_rows`] for input rows of `row_len` values.
    pub fn forward_rows_for(&self, model: &LoadedModel, row_len: usize) -> usize {
        let bytes = self.scaled(model, self.row_bytes(model, Pass::Forward), row_len);
        self.rows_per_pass(model, bytes)
    }

    /// Rows per pass for `rows` rows of `row_len` values through a `pass` of `model`, at most
    /// `most` (a caller's limit), and the bytes one row holds there: what [`Self::run_batched`]
    /// cuts by. A pass whose rows depend on each other is never split; the budget still lets it
    /// run alone.
    pub(super) fn pass_rows(
        &self,
        model: &LoadedModel,
        pass: Pass,
        row_len: usize,
        rows: usize,
        most: usize,
    ) -> Result<(usize, u64), RuntimeError> {
        let row_bytes = self.scaled(model, self.row_bytes(model, pass), row_len);
        if let Pass::Backward { whole: true } = pass {
            if rows > 1 && self.store.one_row(model) {
                return Err(RuntimeError::UnsupportedModel {
                    model: model.name.clone(),
                    message: format!(
                        "the graph fixes its batch at one row, and this pass needs its {rows} rows together \
                         (DeepLIFT's input and reference)"
                    ),
                });
            }
            return Ok((rows.max(1), row_bytes));
        }
        Ok((self.rows_per_pass(model, row_bytes).min(most).max(1), row_bytes))
    }

    /// A row's bytes for an input row of `row_len` values, from the bytes probed at the model's
    /// largest row: a text's sequence tensors grow with its tokens linearly (embeddings, hidden
    /// states) or quadratically (attention), so their size at `row_len` is at most the probed one
    /// times `row_len / probed`; the few per-text tensors (pooled embedding, scores) are small.
    fn scaled(&self, model: &LoadedModel, bytes: u64, row_len: usize) -> u64 {
        match self.store.probe_len.get(&model.name) {
            Some(&probed) if probed > 0 && row_len < probed => {
                (u128::from(bytes) * row_len as u128 / probed as u128).max(1) as u64
            }
            _ => bytes,
        }
    }

    fn rows_per_pass(&self, model: &LoadedModel, row_bytes: u64) -> usize {
        if self.store.one_row(model) {
            return 1;
        }
        let budget = self.store.options.max_pass_bytes;
        usize::try_from(budget / row_bytes.max(1))
            .unwrap_or(usize::MAX)
            .clamp(1, self.max_batch)
    }

    /// Bytes one row holds in a pass (0 when the model's shapes are unknown: not budgeted).
    fn row_bytes(&self, model: &LoadedModel, pass: Pass) -> u64 {
        let all = self.store.row_bytes.get(&model.name).copied().unwrap_or(0);
        match pass {
            // The backward estimate counts activations, gradients and masks: about three times
            // what a forward pass holds at its peak.
            Pass::Forward => all / 3,
            Pass::Backward { .. } => all,
        }
    }
}
