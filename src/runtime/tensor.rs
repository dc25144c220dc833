//! Owned tensors copied out of ONNX Runtime, so results outlive the session run.

/// An owned tensor: shape plus row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: TensorData,
}

/// The element types explaind reads back from models.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32 values.
    F32(Vec<f32>),
    /// int64 values (class labels of ONNX-ML classifiers, for example).
    I64(Vec<i64>),
}

impl Tensor {
    /// A float32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// The float values, if this is a float tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    /// Values widened to f64, whatever the element type.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Number of rows along the first axis (1 for scalars).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row along the first axis.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Rows `start..end` along the first axis.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let n = self.row_len();
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = end - start;
        }
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[start * n..end * n].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[start * n..end * n].to_vec()),
        };
        Tensor { shape, data }
    }

    /// Concatenates tensors along the first axis; all must share element type and row shape.
    pub fn concat_rows(parts: Vec<Tensor>) -> Option<Tensor> {
        let mut iter = parts.into_iter();
        let mut out = iter.next()?;
        for p in iter {
            if p.shape.get(1..) != out.shape.get(1..) {
                return None;
            }
            match (&mut out.data, p.data) {
                (TensorData::F32(a), TensorData::F32(b)) => a.extend(b),
                (TensorData::I64(a), TensorData::I64(b)) => a.extend(b),
                _ => return None,
            }
            out.shape[0] += p.shape[0];
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_and_concat_round_trip() {
        let t = Tensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let parts = vec![t.slice_rows(0, 1), t.slice_rows(1, 3)];
        assert_eq!(parts[1].shape, vec![2, 2]);
        assert_eq!(Tensor::concat_rows(parts).unwrap(), t);
    }
}
