//! Outputs kept where ONNX Runtime made them, rather than gathered into one buffer: a job that
//! reads many passes' rows of large outputs a row at a time (TCAV's layer activations and
//! gradients) holds each pass's tensor and reads rows across them, saving a copy of every value.

use super::tensor::Tensor;

/// One output of a pass: as ONNX Runtime made it, or this request's rows copied out of a run
/// shared with others.
#[derive(Debug)]
pub enum Output {
    /// ONNX Runtime's own tensor.
    Ort(ort::value::DynValue),
    /// A copy.
    Copied(Tensor),
}

impl Output {
    /// Its shape and float32 values (`None` for other element types).
    pub fn f32s(&self) -> Option<(Vec<usize>, &[f32])> {
        match self {
            Output::Ort(v) => v
                .try_extract_tensor::<f32>()
                .ok()
                .map(|(shape, data)| (super::batching::dims(shape), data)),
            Output::Copied(t) => t.as_f32().map(|d| (t.shape.clone(), d)),
        }
    }
}

/// A pass's outputs, kept.
pub type Kept = Vec<(String, Output)>;

/// The rows of one float32 output over several passes, each pass's tensor kept as it came.
#[derive(Debug, Default)]
pub struct RowChunks {
    /// Values per row.
    row_len: usize,
    /// Each pass's first row, and its tensor.
    chunks: Vec<(usize, Output)>,
    rows: usize,
}

impl RowChunks {
    /// Adds a pass's rows after the others'. Refused: not float32, no row axis, or rows of
    /// another length than the earlier passes'.
    pub fn push(&mut self, output: Output) -> Result<(), String> {
        let (shape, values) = output.f32s().ok_or("not float32 values")?;
        let rows = *shape.first().ok_or("no row axis")?;
        let row_len = values.len().checked_div(rows).unwrap_or(0);
        if rows * row_len != values.len() || (!self.chunks.is_empty() && row_len != self.row_len) {
            return Err(format!("rows changed length between passes (shape {shape:?})"));
        }
        self.row_len = row_len;
        self.chunks.push((self.rows, output));
        self.rows += rows;
        Ok(())
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows, read in place (each pass's values looked up once, here).
    pub fn view(&self) -> Rows<'_> {
        Rows {
            row_len: self.row_len,
            chunks: self
                .chunks
                .iter()
                .map(|(first, o)| (*first, o.f32s().map_or(&[][..], |(_, v)| v)))
                .collect(),
            rows: self.rows,
        }
    }
}

/// Rows of float32 values, one after another in one or several slices.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    row_len: usize,
    /// Each slice's first row, and its values.
    chunks: Vec<(usize, &'a [f32])>,
    rows: usize,
}

impl<'a> Rows<'a> {
    /// Rows of `row_len` values in one slice.
    pub fn contiguous(values: &'a [f32], row_len: usize) -> Self {
        Rows {
            row_len,
            chunks: vec![(0, values)],
            rows: values.len().checked_div(row_len).unwrap_or(0),
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Row `i` (empty past the end).
    pub fn row(&self, i: usize) -> &'a [f32] {
        if i >= self.rows {
            return &[];
        }
        // The slice holding row i: the last one starting at or before it.
        let at = self.chunks.partition_point(|(first, _)| *first <= i) - 1;
        let (first, values) = self.chunks[at];
        let offset = (i - first) * self.row_len;
        values.get(offset..offset + self.row_len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_across_passes_of_different_sizes() {
        let pass = |first: f32, rows: usize| {
            Output::Copied(Tensor::f32(
                vec![rows, 2],
                (0..rows * 2).map(|i| first + i as f32).collect(),
            ))
        };
        let mut chunks = RowChunks::default();
        chunks.push(pass(0.0, 3)).unwrap();
        chunks.push(pass(6.0, 1)).unwrap();
        let view = chunks.view();
        assert_eq!((view.rows(), view.row_len()), (4, 2));
        let rows: Vec<&[f32]> = (0..5).map(|i| view.row(i)).collect();
        assert_eq!(rows, [&[0.0, 1.0][..], &[2.0, 3.0], &[4.0, 5.0], &[6.0, 7.0], &[]]);
        assert!(chunks
            .push(Output::Copied(Tensor::f32(vec![1, 3], vec![0.0; 3])))
            .is_err());
    }
}
