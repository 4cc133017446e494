//! A small owned n-dimensional array: the unit that moves between preprocessing, encoders and `.npy` files.
//!
//! Deliberately minimal (shape + contiguous row-major data). The encoders convert it to their engine's own tensor
//! type at the boundary, so nothing else in the crate depends on an inference engine.

use std::fmt;

/// The element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// 32-bit float (images, audio features, depth, thermal, IMU, embeddings).
    F32,
    /// 64-bit signed integer (text token ids).
    I64,
}

impl DType {
    /// The name used in manifests and error messages (`f32`, `i64`).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Row-major element storage.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `i64` elements.
    I64(Vec<i64>),
}

/// An owned, contiguous, row-major n-dimensional array.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// The shape and the element count disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} holds {expected} elements but {actual} were given")]
pub struct ShapeMismatch {
    /// The requested shape.
    pub shape: Vec<usize>,
    /// Elements the shape needs.
    pub expected: usize,
    /// Elements supplied.
    pub actual: usize,
}

impl Tensor {
    /// A tensor from a shape and `f32` data in row-major order.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ShapeMismatch> {
        Self::new(shape, TensorData::F32(data))
    }

    /// A tensor from a shape and `i64` data in row-major order.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self, ShapeMismatch> {
        Self::new(shape, TensorData::I64(data))
    }

    /// A tensor from a shape and data; fails when the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, ShapeMismatch> {
        let expected = shape.iter().product::<usize>();
        let actual = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        if expected != actual {
            return Err(ShapeMismatch {
                shape,
                expected,
                actual,
            });
        }
        Ok(Self { shape, data })
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The `f32` elements, if this is an `f32` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    /// The `i64` elements, if this is an `i64` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same data viewed with another shape of the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, ShapeMismatch> {
        Self::new(shape, self.data)
    }

    /// Splits into its shape and data.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The index (row-major) of the first element that is NaN or infinite, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.data {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::I64(_) => None,
        }
    }

    /// Stacks tensors of identical shape and type along a new leading dimension.
    pub fn stack(items: &[Tensor]) -> Result<Tensor, StackError> {
        let first = items.first().ok_or(StackError::Empty)?;
        let mut shape = Vec::with_capacity(first.shape.len() + 1);
        shape.push(items.len());
        shape.extend_from_slice(&first.shape);
        for (index, t) in items.iter().enumerate() {
            if t.shape != first.shape || t.dtype() != first.dtype() {
                return Err(StackError::Mismatch {
                    index,
                    expected: format!("{} {:?}", first.dtype(), first.shape),
                    actual: format!("{} {:?}", t.dtype(), t.shape),
                });
            }
        }
        let data = match first.dtype() {
            DType::F32 => TensorData::F32(
                items
                    .iter()
                    .flat_map(|t| t.as_f32().unwrap_or_default())
                    .copied()
                    .collect(),
            ),
            DType::I64 => TensorData::I64(
                items
                    .iter()
                    .flat_map(|t| t.as_i64().unwrap_or_default())
                    .copied()
                    .collect(),
            ),
        };
        Tensor::new(shape, data).map_err(|e| StackError::Mismatch {
            index: 0,
            expected: format!("{:?}", e.shape),
            actual: format!("{} elements", e.actual),
        })
    }
}

/// Why [`Tensor::stack`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// Nothing to stack.
    #[error("no tensors to stack")]
    Empty,
    /// An item differs in shape or element type from the first.
    #[error("item {index} is {actual}, but the first item is {expected}")]
    Mismatch {
        /// Position of the offending item.
        index: usize,
        /// Type and shape of the first item.
        expected: String,
        /// Type and shape of the offending item.
        actual: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_rejects_wrong_element_count() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn stack_adds_leading_dimension_and_checks_shapes() {
        let a = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::from_f32(vec![2], vec![3.0, 4.0]).unwrap();
        let s = Tensor::stack(&[a.clone(), b]).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.as_f32().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
        let c = Tensor::from_f32(vec![3], vec![0.0; 3]).unwrap();
        assert!(matches!(
            Tensor::stack(&[a, c]),
            Err(StackError::Mismatch { index: 1, .. })
        ));
    }

    #[test]
    fn first_non_finite_finds_nan() {
        let t = Tensor::from_f32(vec![3], vec![0.0, f32::NAN, 1.0]).unwrap();
        assert_eq!(t.first_non_finite(), Some(1));
    }
}
