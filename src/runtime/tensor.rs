//! Owned tensors copied out of ONNX Runtime, so results outlive the session run.

/// An owned tensor: shape plus row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: TensorData,
}

/// The element types explaind feeds models and reads back from them.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32 values.
    F32(Vec<f32>),
    /// int64 values (class labels of ONNX-ML classifiers, integer features, token ids).
    I64(Vec<i64>),
    /// int32 values.
    I32(Vec<i32>),
    /// bool values (masks).
    Bool(Vec<bool>),
    /// uint8 values (bytes).
    U8(Vec<u8>),
}

/// Values of one element type, borrowed: what a pass reads in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// int64 values.
    I64(&'a [i64]),
    /// int32 values.
    I32(&'a [i32]),
    /// bool values.
    Bool(&'a [bool]),
    /// uint8 values.
    U8(&'a [u8]),
}

/// The element types a graph input may take: float32, the integers and bool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    /// float32.
    Float32,
    /// int64.
    Int64,
    /// int32.
    Int32,
    /// bool.
    Bool,
    /// uint8.
    Uint8,
}

impl ElementType {
    /// The type of the ONNX element type name (`float32`, `int64`, ... as
    /// [`crate::onnx::proto::data_type::name`] writes them); `None` for the types explaind does not feed.
    pub fn of_name(name: &str) -> Option<Self> {
        Some(match name {
            "float32" => Self::Float32,
            "int64" => Self::Int64,
            "int32" => Self::Int32,
            "bool" => Self::Bool,
            "uint8" => Self::Uint8,
            _ => return None,
        })
    }

    /// Its name, as the graph's summary writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Int64 => "int64",
            Self::Int32 => "int32",
            Self::Bool => "bool",
            Self::Uint8 => "uint8",
        }
    }

    /// The range of whole numbers the type holds exactly (bool: 0 and 1); `None` for float32.
    pub fn integer_range(self) -> Option<(f64, f64)> {
        match self {
            Self::Float32 => None,
            // f32 holds every integer up to 2^24 exactly: the values explaind's methods move are f32.
            Self::Int64 | Self::Int32 => Some((-16_777_216.0, 16_777_216.0)),
            Self::Bool => Some((0.0, 1.0)),
            Self::Uint8 => Some((0.0, 255.0)),
        }
    }

    /// `values` (f32, as explaind's methods make them) in this type: integers rounded to the
    /// nearest and held within the type's range, bool true where non-zero.
    pub fn cast(self, values: &[f32]) -> TensorData {
        let (lo, hi) = self.integer_range().unwrap_or((f64::MIN, f64::MAX));
        let whole = |v: f32| f64::from(v).round().clamp(lo, hi);
        match self {
            Self::Float32 => TensorData::F32(values.to_vec()),
            Self::Int64 => TensorData::I64(values.iter().map(|&v| whole(v) as i64).collect()),
            Self::Int32 => TensorData::I32(values.iter().map(|&v| whole(v) as i32).collect()),
            Self::Bool => TensorData::Bool(values.iter().map(|&v| v != 0.0).collect()),
            Self::Uint8 => TensorData::U8(values.iter().map(|&v| whole(v) as u8).collect()),
        }
    }

    /// `n` zeros (false) of this type.
    pub fn zeros(self, n: usize) -> TensorData {
        match self {
            Self::Float32 => TensorData::F32(vec![0.0; n]),
            Self::Int64 => TensorData::I64(vec![0; n]),
            Self::Int32 => TensorData::I32(vec![0; n]),
            Self::Bool => TensorData::Bool(vec![false; n]),
            Self::Uint8 => TensorData::U8(vec![0; n]),
        }
    }
}

impl TensorData {
    /// The values, borrowed.
    pub fn view(&self) -> Values<'_> {
        match self {
            TensorData::F32(v) => Values::F32(v),
            TensorData::I64(v) => Values::I64(v),
            TensorData::I32(v) => Values::I32(v),
            TensorData::Bool(v) => Values::Bool(v),
            TensorData::U8(v) => Values::U8(v),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `more`; false (nothing appended) when its element type differs.
    pub fn extend_from(&mut self, more: Values) -> bool {
        match (self, more) {
            (TensorData::F32(a), Values::F32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), Values::I64(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), Values::I32(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), Values::Bool(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), Values::U8(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// `rows` copies of these values, one after another (a constant's row for each row of a pass).
    pub fn repeated(&self, rows: usize) -> TensorData {
        fn rep<T: Clone>(v: &[T], rows: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len().saturating_mul(rows));
            for _ in 0..rows {
                out.extend_from_slice(v);
            }
            out
        }
        match self {
            TensorData::F32(v) => TensorData::F32(rep(v, rows)),
            TensorData::I64(v) => TensorData::I64(rep(v, rows)),
            TensorData::I32(v) => TensorData::I32(rep(v, rows)),
            TensorData::Bool(v) => TensorData::Bool(rep(v, rows)),
            TensorData::U8(v) => TensorData::U8(rep(v, rows)),
        }
    }
}

impl<'a> Values<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::U8(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Values<'a> {
        match *self {
            Values::F32(v) => Values::F32(&v[start..end]),
            Values::I64(v) => Values::I64(&v[start..end]),
            Values::I32(v) => Values::I32(&v[start..end]),
            Values::Bool(v) => Values::Bool(&v[start..end]),
            Values::U8(v) => Values::U8(&v[start..end]),
        }
    }

    /// An empty owned buffer of this element type, with room for `n` values.
    pub fn empty_like(&self, n: usize) -> TensorData {
        match self {
            Values::F32(_) => TensorData::F32(Vec::with_capacity(n)),
            Values::I64(_) => TensorData::I64(Vec::with_capacity(n)),
            Values::I32(_) => TensorData::I32(Vec::with_capacity(n)),
            Values::Bool(_) => TensorData::Bool(Vec::with_capacity(n)),
            Values::U8(_) => TensorData::U8(Vec::with_capacity(n)),
        }
    }
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
            _ => None,
        }
    }

    /// Values widened to f64, whatever the element type.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
            TensorData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
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
        let mut data = self.data.view().empty_like((end - start) * n);
        data.extend_from(self.data.view().slice(start * n, end * n));
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
            if !out.data.extend_from(p.data.view()) {
                return None;
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

    #[test]
    fn integer_and_bool_inputs_get_the_f32_values_rounded_and_held_in_range() {
        let v = [2.4f32, -0.6, 300.0, 0.0];
        assert_eq!(ElementType::Int64.cast(&v), TensorData::I64(vec![2, -1, 300, 0]));
        assert_eq!(ElementType::Uint8.cast(&v), TensorData::U8(vec![2, 0, 255, 0]));
        assert_eq!(
            ElementType::Bool.cast(&v),
            TensorData::Bool(vec![true, true, true, false])
        );
        let row = TensorData::I32(vec![1, 0]);
        assert_eq!(row.repeated(2), TensorData::I32(vec![1, 0, 1, 0]));
        let mut buffer = row.view().empty_like(2);
        assert!(buffer.extend_from(row.view()) && !buffer.extend_from(Values::F32(&[1.0])));
    }
}
