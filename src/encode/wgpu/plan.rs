//! Lowering a tract graph to kernel launches: tract parses the ONNX file and declutters it (folding constants,
//! turning MatMul/Gemm into `EinSum`, LayerNorm into a mean subtraction and `RmsNorm`); this walks the decluttered
//! graph, every dimension concrete, and writes one [`Step`] per kernel launch of `kernels.wgsl`.
//!
//! Values are *views* of a storage (offset, shape, strides), so reshapes, transposes, axis insertions, slices and
//! constant-index gathers cost nothing; a kernel that needs a contiguous input gets a copy first. Storages are
//! constants (uploaded once), the input, or activations; [`Program::lifetimes`] tells the executor when each
//! activation is last read so their buffers are reused.
//!
//! An op outside the set below is a load error naming the op and node, never a wrong result:
//! Const, Source, binary (add sub mul div max min pow) and unary maps (erf recip sqrt rsqrt square exp abs neg
//! tanh sigmoid ln, exact and tanh GELU, SiLU), Reduce (sum max min argmax argmin mean-of-squares prod), Softmax, RmsNorm, EinSum (f32),
//! AxisOp, Slice, MultiBroadcastTo, TypedConcat, Gather, GatherNd (no batch dims), Conv (groups of 1, NCHW), Cast
//! between integer types or to the same type.

use tract_onnx::prelude::tract_data::internal::DimLike;
use tract_onnx::prelude::{DatumType, Tensor as TractTensor, TypedModel, TypedNode};
use tract_onnx::tract_core::ops;

/// Rank limit of strided kernels (the `copy`, `map` and `zip` parameter blocks hold six dimensions).
const MAX_RANK: usize = 6;

/// What the 32-bit words of a storage hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    /// f32.
    F32,
    /// i32, from any integer type (indices, token ids).
    I32,
}

/// Where a storage's contents come from.
#[derive(Debug)]
pub enum StorageKind {
    /// Uploaded once; `key` identifies the constant across the plans of one tower (node name and a content hash).
    Const { words: Vec<u32>, key: (String, u64) },
    /// The graph's input, written before each run.
    Input,
    /// Written by a step.
    Activation,
}

/// One buffer's worth of words.
#[derive(Debug)]
pub struct Storage {
    /// Size in 32-bit words (at least 1).
    pub words: usize,
    /// Its role.
    pub kind: StorageKind,
}

/// A tensor as a strided window on a storage.
#[derive(Debug, Clone)]
pub struct View {
    /// The storage.
    pub storage: usize,
    /// First word.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides in words.
    pub strides: Vec<usize>,
    /// Element type.
    pub dt: Dt,
}

impl View {
    fn contiguous(storage: usize, shape: &[usize], dt: Dt) -> Self {
        Self {
            storage,
            offset: 0,
            shape: shape.to_vec(),
            strides: row_major(shape),
            dt,
        }
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major and dense: dimensions of size 1 may have any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if size != 1 && stride != expect {
                return false;
            }
            expect *= size;
        }
        true
    }
}

fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Entry points of `kernels.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Strided copy.
    Copy,
    /// Unary map.
    Map,
    /// Binary op with broadcasting.
    Zip,
    /// Reduction over a middle axis.
    Reduce,
    /// Softmax / RMS norm over contiguous rows, one workgroup per row.
    Rows,
    /// Softmax / RMS norm over a middle axis.
    RowsStrided,
    /// Batched strided matrix product.
    Matmul,
    /// The same with f16 weights (B) — needs the adapter's `shader-f16`.
    MatmulW16,
    /// Direct convolution.
    Conv,
    /// Gather along an axis.
    Gather,
    /// GatherND.
    GatherNd,
}

impl Kernel {
    /// Every kernel, in pipeline order.
    pub const ALL: [Kernel; 11] = [
        Kernel::Copy,
        Kernel::Map,
        Kernel::Zip,
        Kernel::Reduce,
        Kernel::Rows,
        Kernel::RowsStrided,
        Kernel::Matmul,
        Kernel::Conv,
        Kernel::Gather,
        Kernel::GatherNd,
        Kernel::MatmulW16,
    ];

    /// The WGSL entry point.
    pub fn entry(self) -> &'static str {
        match self {
            Kernel::Copy => "copy",
            Kernel::Map => "map",
            Kernel::Zip => "zip",
            Kernel::Reduce => "reduce",
            Kernel::Rows => "rows",
            Kernel::RowsStrided => "rows_strided",
            Kernel::Matmul | Kernel::MatmulW16 => "matmul",
            Kernel::Conv => "conv",
            Kernel::Gather => "gather",
            Kernel::GatherNd => "gather_nd",
        }
    }
}

/// Parameter words of one launch (64 words: one 256-byte uniform slot).
pub type Params = [u32; 64];

/// One kernel launch.
#[derive(Debug, Clone)]
pub struct Step {
    /// Which kernel.
    pub kernel: Kernel,
    /// Its parameters.
    pub params: Params,
    /// Storages bound as inputs 1–3 (`None`: a dummy buffer).
    pub inputs: [Option<usize>; 3],
    /// The storage written.
    pub output: usize,
    /// Workgroups in x, y, z.
    pub workgroups: [u32; 3],
    /// The node it comes from, for errors and profiles.
    pub node: String,
}

/// A lowered graph for one batch size.
#[derive(Debug)]
pub struct Program {
    /// Every storage.
    pub storages: Vec<Storage>,
    /// Launches in order.
    pub steps: Vec<Step>,
    /// The input storage and its element type.
    pub input: (usize, Dt),
    /// The output view (contiguous f32).
    pub output: View,
}

impl Program {
    /// For each storage, the last step that reads or writes it (`None`: never used by a step).
    pub fn lifetimes(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.storages.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for s in step.inputs.iter().flatten().chain(std::iter::once(&step.output)) {
                last[*s] = Some(i);
            }
        }
        last
    }
}

struct Lowering<'m> {
    model: &'m TypedModel,
    storages: Vec<Storage>,
    steps: Vec<Step>,
    /// The view of each node's first output, once lowered.
    values: Vec<Option<View>>,
    input: Option<(usize, Dt)>,
}

/// Lowers `model` (decluttered, one input, one f32 output, every dimension concrete). With `f16_weights`, constant
/// matrices read only as the B operand of matrix products (the linear layers' weights) are stored as f16 and read
/// by [`Kernel::MatmulW16`].
pub fn lower(model: &TypedModel, f16_weights: bool) -> anyhow::Result<Program> {
    let mut l = Lowering {
        model,
        storages: Vec::new(),
        steps: Vec::new(),
        values: vec![None; model.nodes.len()],
        input: None,
    };
    for id in model.eval_order()? {
        let node = &model.nodes[id];
        let view = l
            .node(node)
            .map_err(|e| anyhow::anyhow!("node {:?} ({}): {e:#}", node.name, node.op.name()))?;
        l.values[id] = Some(view);
    }
    let out = model.output_outlets()?[0];
    let view = l.value(out.node)?;
    anyhow::ensure!(view.dt == Dt::F32, "the graph output is not f32");
    let output = if view.is_contiguous() {
        view
    } else {
        l.materialize(&view, "output")?
    };
    let input = l.input.ok_or_else(|| anyhow::anyhow!("the graph has no input"))?;
    let mut program = Program {
        storages: l.storages,
        steps: l.steps,
        input,
        output,
    };
    if f16_weights {
        weights_to_f16(&mut program);
    }
    Ok(program)
}

/// Stores as f16 the constants whose only readers are matrix products reading them as B.
fn weights_to_f16(program: &mut Program) {
    let mut only_b = vec![true; program.storages.len()];
    let mut read_as_b = vec![false; program.storages.len()];
    for step in &program.steps {
        for (slot, s) in step.inputs.iter().enumerate() {
            if let Some(s) = *s {
                if step.kernel == Kernel::Matmul && slot == 1 {
                    read_as_b[s] = true;
                } else {
                    only_b[s] = false;
                }
            }
        }
    }
    let mut converted = vec![false; program.storages.len()];
    for (i, storage) in program.storages.iter_mut().enumerate() {
        let StorageKind::Const { words, key } = &mut storage.kind else {
            continue;
        };
        if !(only_b[i] && read_as_b[i]) {
            continue;
        }
        converted[i] = true;
        let halves: Vec<u16> = words
            .iter()
            .map(|w| half::f16::from_f32(f32::from_bits(*w)).to_bits())
            .collect();
        *words = halves
            .chunks(2)
            .map(|pair| u32::from(pair[0]) | (u32::from(pair.get(1).copied().unwrap_or(0)) << 16))
            .collect();
        key.0.push_str("#f16");
        storage.words = words.len().max(1);
    }
    for step in &mut program.steps {
        if step.kernel == Kernel::Matmul && step.inputs[1].is_some_and(|s| converted[s]) {
            step.kernel = Kernel::MatmulW16;
        }
    }
}

fn dt_of(dt: DatumType) -> anyhow::Result<Dt> {
    match dt {
        DatumType::F32 => Ok(Dt::F32),
        DatumType::I64 | DatumType::I32 | DatumType::I16 | DatumType::I8 | DatumType::U8 | DatumType::U16 => {
            Ok(Dt::I32)
        }
        other => anyhow::bail!("{other:?} tensors are not supported"),
    }
}

/// A 1-D launch of `n` threads in workgroups of 256, folded into x·y.
fn grid(n: usize) -> anyhow::Result<[u32; 3]> {
    let groups = n.div_ceil(256).max(1);
    let x = groups.min(65_535);
    let y = groups.div_ceil(x);
    anyhow::ensure!(y <= 65_535, "{n} elements are too many for one launch");
    Ok([x as u32, y as u32, 1])
}

fn word(n: usize) -> anyhow::Result<u32> {
    u32::try_from(n).map_err(|_| anyhow::anyhow!("size {n} does not fit the kernels' 32-bit indices"))
}

/// The shape and strides words of strided kernels: rank (word 1), shape (4..9), strides at `sbase`, offset at `obase`.
fn put_strided(p: &mut Params, shape: &[usize], strides: &[(usize, usize, usize)]) -> anyhow::Result<()> {
    anyhow::ensure!(shape.len() <= MAX_RANK, "rank {} is above {MAX_RANK}", shape.len());
    p[1] = word(shape.len())?;
    for (d, &s) in shape.iter().enumerate() {
        p[4 + d] = word(s)?;
    }
    for &(sbase, d, stride) in strides {
        p[sbase + d] = word(stride)?;
    }
    Ok(())
}

impl Lowering<'_> {
    fn value(&self, node: usize) -> anyhow::Result<View> {
        self.values[node]
            .clone()
            .ok_or_else(|| anyhow::anyhow!("node {node} used before it was lowered"))
    }

    fn input_view(&self, node: &TypedNode, i: usize) -> anyhow::Result<View> {
        let outlet = node.inputs.get(i).ok_or_else(|| anyhow::anyhow!("missing input {i}"))?;
        anyhow::ensure!(outlet.slot == 0, "multi-output nodes are not supported");
        self.value(outlet.node)
    }

    /// A constant input's tensor, if the input is a constant.
    fn input_const(&self, node: &TypedNode, i: usize) -> Option<std::sync::Arc<TractTensor>> {
        let outlet = node.inputs.get(i)?;
        self.model.outlet_fact(*outlet).ok()?.konst.clone()
    }

    fn output_shape(&self, node: &TypedNode) -> anyhow::Result<(Vec<usize>, Dt)> {
        anyhow::ensure!(
            node.outputs.len() == 1,
            "{} outputs; one is supported",
            node.outputs.len()
        );
        let fact = &node.outputs[0].fact;
        let shape = fact
            .shape
            .iter()
            .map(|d| d.to_usize())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow::anyhow!("symbolic output shape {:?}", fact.shape))?;
        Ok((shape, dt_of(fact.datum_type)?))
    }

    fn activation(&mut self, shape: &[usize], dt: Dt) -> View {
        let words = shape.iter().product::<usize>().max(1);
        self.storages.push(Storage {
            words,
            kind: StorageKind::Activation,
        });
        View::contiguous(self.storages.len() - 1, shape, dt)
    }

    fn push(
        &mut self,
        kernel: Kernel,
        params: Params,
        inputs: [Option<usize>; 3],
        output: usize,
        wg: [u32; 3],
        node: &str,
    ) {
        self.steps.push(Step {
            kernel,
            params,
            inputs,
            output,
            workgroups: wg,
            node: node.to_owned(),
        });
    }

    /// A contiguous copy of `v`.
    fn materialize(&mut self, v: &View, node: &str) -> anyhow::Result<View> {
        let out = self.activation(&v.shape, v.dt);
        self.copy_into(v, &out, node)?;
        Ok(out)
    }

    fn contiguous(&mut self, v: View, node: &str) -> anyhow::Result<View> {
        if v.is_contiguous() {
            Ok(v)
        } else {
            self.materialize(&v, node)
        }
    }

    /// Copies `src` into the same-shaped window `dst`.
    fn copy_into(&mut self, src: &View, dst: &View, node: &str) -> anyhow::Result<()> {
        let n = src.len();
        let mut p = [0u32; 64];
        p[0] = word(n)?;
        let mut strides = Vec::new();
        for d in 0..src.shape.len() {
            strides.push((10, d, src.strides[d]));
            strides.push((24, d, dst.strides[d]));
        }
        put_strided(&mut p, &src.shape, &strides)?;
        p[22] = word(src.offset)?;
        p[30] = word(dst.offset)?;
        self.push(
            Kernel::Copy,
            p,
            [Some(src.storage), None, None],
            dst.storage,
            grid(n)?,
            node,
        );
        Ok(())
    }

    fn upload(&mut self, name: &str, t: &TractTensor) -> anyhow::Result<View> {
        let dt = dt_of(t.datum_type())?;
        let words: Vec<u32> = match dt {
            Dt::F32 => {
                let c = t.cast_to::<f32>()?;
                c.try_as_plain_ram()?
                    .as_slice::<f32>()?
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            }
            Dt::I32 => {
                let c = t.cast_to::<i64>()?;
                c.try_as_plain_ram()?
                    .as_slice::<i64>()?
                    .iter()
                    .map(|&x| {
                        i32::try_from(x)
                            .map(|v| v as u32)
                            .map_err(|_| anyhow::anyhow!("integer constant {x} does not fit in i32"))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        let key = (name.to_owned(), content_hash(&words));
        let len = words.len().max(1);
        let mut words = words;
        words.resize(len, 0);
        self.storages.push(Storage {
            words: len,
            kind: StorageKind::Const { words, key },
        });
        Ok(View::contiguous(self.storages.len() - 1, t.shape(), dt))
    }

    fn node(&mut self, node: &TypedNode) -> anyhow::Result<View> {
        use ops::array::{Gather, GatherNd, MultiBroadcastTo, Slice, TypedConcat};
        use ops::binary::TypedBinOp;
        use ops::change_axes::AxisOp;
        use ops::einsum::EinSum;
        use ops::element_wise::ElementWiseOp;
        use ops::konst::Const;
        use ops::nn::{Reduce, RmsNorm, Softmax};
        use ops::source::TypedSource;

        let op = node.op.as_op();
        let name = node.name.as_str();
        if let Some(c) = op.downcast_ref::<Const>() {
            return self.upload(name, c.val());
        }
        let (shape, dt) = self.output_shape(node)?;
        if op.downcast_ref::<TypedSource>().is_some() {
            anyhow::ensure!(self.input.is_none(), "the graph has more than one input");
            self.storages.push(Storage {
                words: shape.iter().product::<usize>().max(1),
                kind: StorageKind::Input,
            });
            let storage = self.storages.len() - 1;
            self.input = Some((storage, dt));
            return Ok(View::contiguous(storage, &shape, dt));
        }
        if let Some(b) = op.downcast_ref::<TypedBinOp>() {
            return self.binary(node, b.0.name(), &shape, dt);
        }
        if let Some(e) = op.downcast_ref::<ElementWiseOp>() {
            return self.unary(node, &e.0.name(), &shape, dt);
        }
        if let Some(axis_op) = op.downcast_ref::<AxisOp>() {
            let v = self.input_view(node, 0)?;
            return self.axis_op(v, axis_op, &shape, name);
        }
        if let Some(e) = op.downcast_ref::<EinSum>() {
            anyhow::ensure!(
                e.q_params.is_none() && e.operating_dt == DatumType::F32,
                "quantised EinSum"
            );
            return self.einsum(node, e, &shape);
        }
        if let Some(r) = op.downcast_ref::<Reduce>() {
            return self.reduce(node, r, &shape, dt);
        }
        if let Some(s) = op.downcast_ref::<Softmax>() {
            anyhow::ensure!(
                s.quant_output_dt.is_none() && matches!(s.kind, ops::nn::SoftmaxKind::Softmax) && s.axes.len() == 1,
                "only a float softmax over one axis is supported"
            );
            return self.rows(node, s.axes[0], 0, 0.0);
        }
        if let Some(r) = op.downcast_ref::<RmsNorm>() {
            let eps = r.eps.cast_to_scalar::<f32>()?;
            return self.rows(node, r.axis, 1, eps);
        }
        if let Some(g) = op.downcast_ref::<Gather>() {
            return self.gather(node, g.axis, &shape, dt);
        }
        if let Some(g) = op.downcast_ref::<GatherNd>() {
            anyhow::ensure!(g.batch_dims == 0, "GatherNd with batch dimensions");
            return self.gather_nd(node, &shape, dt);
        }
        if let Some(c) = op.downcast_ref::<TypedConcat>() {
            let out = self.activation(&shape, dt);
            let mut at = 0;
            for i in 0..node.inputs.len() {
                let src = self.input_view(node, i)?;
                let mut dst = out.clone();
                dst.offset = at * out.strides[c.axis];
                dst.shape[c.axis] = src.shape[c.axis];
                at += src.shape[c.axis];
                self.copy_into(&src, &dst, name)?;
            }
            return Ok(out);
        }
        if let Some(s) = op.downcast_ref::<Slice>() {
            let mut v = self.input_view(node, 0)?;
            let start = s.start.to_usize().map_err(|_| anyhow::anyhow!("symbolic slice"))?;
            v.offset += start * v.strides[s.axis];
            v.shape = shape;
            return Ok(v);
        }
        if op.downcast_ref::<MultiBroadcastTo>().is_some() {
            let v = self.input_view(node, 0)?;
            return Ok(broadcast(&v, &shape));
        }
        if let Some(c) = op.downcast_ref::<ops::cast::Cast>() {
            let v = self.input_view(node, 0)?;
            anyhow::ensure!(v.dt == dt_of(c.to)?, "a cast between float and integer types");
            return Ok(v);
        }
        if let Some(c) = op.downcast_ref::<ops::cnn::Conv>() {
            return self.conv(node, c, &shape);
        }
        anyhow::bail!("the wgpu backend has no kernel for this op")
    }

    fn binary(&mut self, node: &TypedNode, op: &str, shape: &[usize], dt: Dt) -> anyhow::Result<View> {
        let code = match op {
            "Add" => 0,
            "Sub" => 1,
            "Mul" => 2,
            "Div" => 3,
            "Max" => 4,
            "Min" => 5,
            "Pow" => 6,
            other => anyhow::bail!("binary op {other} is not supported"),
        };
        anyhow::ensure!(dt == Dt::F32, "integer arithmetic is not supported");
        let a = broadcast(&self.input_view(node, 0)?, shape);
        let b = broadcast(&self.input_view(node, 1)?, shape);
        let out = self.activation(shape, dt);
        let n = out.len();
        let mut p = [0u32; 64];
        p[0] = word(n)?;
        p[2] = code;
        let mut strides = Vec::new();
        for d in 0..shape.len() {
            strides.push((10, d, a.strides[d]));
            strides.push((16, d, b.strides[d]));
        }
        put_strided(&mut p, shape, &strides)?;
        p[22] = word(a.offset)?;
        p[23] = word(b.offset)?;
        self.push(
            Kernel::Zip,
            p,
            [Some(a.storage), Some(b.storage), None],
            out.storage,
            grid(n)?,
            &node.name,
        );
        Ok(out)
    }

    fn unary(&mut self, node: &TypedNode, op: &str, shape: &[usize], dt: Dt) -> anyhow::Result<View> {
        let code = match op {
            "Erf" => 0,
            "Recip" => 1,
            "Sqrt" => 2,
            "Rsqrt" => 3,
            "Square" => 4,
            "Exp" => 5,
            "Abs" => 6,
            "Neg" => 7,
            "Tanh" => 8,
            "Sigmoid" => 9,
            "Ln" => 10,
            "GeluExact" => 11,
            "Silu" => 12,
            "GeluApproximate" => 13,
            other => anyhow::bail!("unary op {other} is not supported"),
        };
        anyhow::ensure!(dt == Dt::F32, "integer maps are not supported");
        let a = self.input_view(node, 0)?;
        let out = self.activation(shape, dt);
        let n = out.len();
        let mut p = [0u32; 64];
        p[0] = word(n)?;
        p[2] = code;
        let strides: Vec<_> = (0..a.shape.len()).map(|d| (10, d, a.strides[d])).collect();
        put_strided(&mut p, &a.shape, &strides)?;
        p[22] = word(a.offset)?;
        self.push(
            Kernel::Map,
            p,
            [Some(a.storage), None, None],
            out.storage,
            grid(n)?,
            &node.name,
        );
        Ok(out)
    }

    fn axis_op(&mut self, v: View, op: &ops::change_axes::AxisOp, shape: &[usize], node: &str) -> anyhow::Result<View> {
        use ops::change_axes::AxisOp;
        let mut v = v;
        match op {
            AxisOp::Add(at) => {
                v.shape.insert(*at, 1);
                v.strides.insert(*at, 0);
            }
            AxisOp::Rm(at) => {
                v.shape.remove(*at);
                v.strides.remove(*at);
            }
            AxisOp::Move(from, to) => {
                let size = v.shape.remove(*from);
                let stride = v.strides.remove(*from);
                v.shape.insert(*to, size);
                v.strides.insert(*to, stride);
            }
            AxisOp::Reshape(..) => {
                let v = self.contiguous(v, node)?;
                return Ok(View {
                    strides: row_major(shape),
                    shape: shape.to_vec(),
                    ..v
                });
            }
        }
        anyhow::ensure!(v.shape == shape, "axis op gave {:?}, the graph says {shape:?}", v.shape);
        Ok(v)
    }

    /// A two-input f32 `EinSum` as one batched matrix product: axes in A and C are rows (m), in B and C columns
    /// (n), in A and B summed (k), in all three batched; several row or column axes merge when their strides allow,
    /// else the largest is the row axis and the others are batched (with stride 0 in the operand that lacks them).
    fn einsum(&mut self, node: &TypedNode, e: &ops::einsum::EinSum, shape: &[usize]) -> anyhow::Result<View> {
        anyhow::ensure!(node.inputs.len() == 2, "EinSum with {} inputs", node.inputs.len());
        let mut a = self.input_view(node, 0)?;
        let mut b = self.input_view(node, 1)?;
        // Several summed axes must nest in both operands' strides (in A's order); an operand where they do not
        // is copied with them innermost.
        let mut summed: Vec<(usize, usize)> = e
            .axes
            .iter_all_axes()
            .filter(|ax| ax.outputs[0].is_empty() && ax.inputs[0].len() == 1 && ax.inputs[1].len() == 1)
            .map(|ax| (ax.inputs[0][0], ax.inputs[1][0]))
            .filter(|&(pa, _)| a.shape[pa] > 1)
            .collect();
        if summed.len() > 1 {
            summed.sort_unstable();
            let nested = |v: &View, pos: &[usize]| {
                pos.windows(2)
                    .all(|w| v.strides[w[0]] == v.strides[w[1]] * v.shape[w[1]])
            };
            let pa: Vec<usize> = summed.iter().map(|x| x.0).collect();
            let pb: Vec<usize> = summed.iter().map(|x| x.1).collect();
            if !nested(&a, &pa) {
                a = self.with_inner(a, &pa, &node.name)?;
            }
            if !nested(&b, &pb) {
                b = self.with_inner(b, &pb, &node.name)?;
            }
        }
        let out = self.activation(shape, Dt::F32);
        // (size, stride in A, in B, in C; 0 where absent or broadcast), by role.
        let (mut batch, mut ms, mut ns, mut ks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for axis in e.axes.iter_all_axes() {
            let pos = |list: &[usize]| -> anyhow::Result<Option<usize>> {
                anyhow::ensure!(list.len() <= 1, "axis {} repeats in one operand", axis.repr);
                Ok(list.first().copied())
            };
            let (pa, pb, pc) = (pos(&axis.inputs[0])?, pos(&axis.inputs[1])?, pos(&axis.outputs[0])?);
            let size = [pc.map(|p| shape[p]), pa.map(|p| a.shape[p]), pb.map(|p| b.shape[p])]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(1);
            let stride =
                |v: &View, p: Option<usize>| p.map_or(0, |p| if v.shape[p] == size { v.strides[p] } else { 0 });
            let entry = (size, stride(&a, pa), stride(&b, pb), stride(&out, pc), pc.unwrap_or(0));
            if size == 1 {
                continue;
            }
            match (pa.is_some(), pb.is_some(), pc.is_some()) {
                (true, true, true) => batch.push(entry),
                (true, false, true) => ms.push(entry),
                (false, true, true) => ns.push(entry),
                (true, true, false) => ks.push(entry),
                _ => anyhow::bail!("axis {} of size {size} is summed in one operand only", axis.repr),
            }
        }
        type Ax = (usize, usize, usize, usize, usize);
        // Merges axes (in output order) into one when every operand's strides nest; else keeps the largest and
        // moves the rest to the batch.
        let pick = |mut axes: Vec<Ax>, batch: &mut Vec<Ax>, c_order: bool| -> Ax {
            if c_order {
                axes.sort_by_key(|x| x.4);
            }
            let nests = axes.windows(2).all(|w| {
                let (o, i) = (w[0], w[1]);
                o.1 == i.1 * i.0 && o.2 == i.2 * i.0 && o.3 == i.3 * i.0
            });
            match axes.len() {
                0 => (1, 0, 0, 0, 0),
                1 => axes[0],
                _ if nests => {
                    let last = axes[axes.len() - 1];
                    (axes.iter().map(|x| x.0).product(), last.1, last.2, last.3, last.4)
                }
                _ => {
                    axes.sort_by_key(|x| x.0);
                    let largest = axes.pop().unwrap_or((1, 0, 0, 0, 0));
                    batch.extend(axes);
                    largest
                }
            }
        };
        let m = pick(ms, &mut batch, true);
        let n = pick(ns, &mut batch, true);
        // Summed axes in A's order; several must nest in both operands.
        ks.sort_by_key(|x| std::cmp::Reverse(x.1));
        let nests = ks
            .windows(2)
            .all(|w| w[0].1 == w[1].1 * w[1].0 && w[0].2 == w[1].2 * w[1].0);
        anyhow::ensure!(nests || ks.len() <= 1, "summed axes that do not merge");
        let k = match ks.last() {
            Some(last) => (ks.iter().map(|x| x.0).product(), last.1, last.2, 0, 0),
            None => (1, 0, 0, 0, 0),
        };
        anyhow::ensure!(batch.len() <= 4, "{} batch axes (4 at most)", batch.len());
        let batches: usize = batch.iter().map(|x| x.0).product();
        let mut p = [0u32; 64];
        p[0] = word(m.0)?;
        p[1] = word(n.0)?;
        p[2] = word(k.0)?;
        p[3] = word(batches)?;
        for slot in 0..4 {
            let ax = batch.get(slot).copied().unwrap_or((1, 0, 0, 0, 0));
            p[4 + slot] = word(ax.0)?;
            p[8 + slot] = word(ax.1)?;
            p[12 + slot] = word(ax.2)?;
            p[16 + slot] = word(ax.3)?;
        }
        for (i, v) in [m.1, k.1, k.2, n.2, m.3, n.3, a.offset, b.offset, 0]
            .into_iter()
            .enumerate()
        {
            p[20 + i] = word(v)?;
        }
        let wg = [word(n.0.div_ceil(64))?, word(m.0.div_ceil(64))?, word(batches)?];
        anyhow::ensure!(
            wg.iter().all(|&w| w <= 65_535),
            "a matrix product too large for one launch"
        );
        self.push(
            Kernel::Matmul,
            p,
            [Some(a.storage), Some(b.storage), None],
            out.storage,
            wg,
            &node.name,
        );
        Ok(out)
    }

    /// A contiguous copy of `v` whose axes at `inner` (in that order) are innermost, seen in `v`'s axis order.
    fn with_inner(&mut self, v: View, inner: &[usize], node: &str) -> anyhow::Result<View> {
        let perm: Vec<usize> = (0..v.shape.len())
            .filter(|d| !inner.contains(d))
            .chain(inner.iter().copied())
            .collect();
        let permuted = View {
            shape: perm.iter().map(|&d| v.shape[d]).collect(),
            strides: perm.iter().map(|&d| v.strides[d]).collect(),
            ..v.clone()
        };
        let copy = self.materialize(&permuted, node)?;
        let mut strides = vec![0; v.shape.len()];
        for (i, &d) in perm.iter().enumerate() {
            strides[d] = copy.strides[i];
        }
        Ok(View {
            shape: v.shape,
            strides,
            ..copy
        })
    }

    /// `[outer, len, inner]` around `axes` (adjacent) of a contiguous view.
    fn split(shape: &[usize], first: usize, last: usize) -> (usize, usize, usize) {
        let outer = shape[..first].iter().product();
        let len = shape[first..=last].iter().product();
        let inner = shape[last + 1..].iter().product();
        (outer, len, inner)
    }

    fn reduce(&mut self, node: &TypedNode, r: &ops::nn::Reduce, shape: &[usize], dt: Dt) -> anyhow::Result<View> {
        use ops::nn::Reducer;
        let code = match r.reducer {
            Reducer::Sum => 0,
            Reducer::Max => 1,
            Reducer::Min => 2,
            Reducer::ArgMax(false) => 3,
            Reducer::ArgMin(false) => 4,
            Reducer::MeanOfSquares => 5,
            Reducer::Prod => 6,
            other => anyhow::bail!("reducer {other:?} is not supported"),
        };
        let mut axes: Vec<usize> = r.axes.iter().copied().collect();
        axes.sort_unstable();
        let (Some(&first), Some(&last)) = (axes.first(), axes.last()) else {
            anyhow::bail!("a reduction over no axis");
        };
        anyhow::ensure!(last - first + 1 == axes.len(), "a reduction over non-adjacent axes");
        let a = self.input_view(node, 0)?;
        let a = self.contiguous(a, &node.name)?;
        let (outer, len, inner) = Self::split(&a.shape, first, last);
        let out = self.activation(shape, dt);
        let mut p = [0u32; 64];
        p[0] = word(outer * inner)?;
        p[2] = code;
        p[3] = u32::from(a.dt == Dt::I32);
        p[4] = word(len)?;
        p[5] = word(inner)?;
        self.push(
            Kernel::Reduce,
            p,
            [Some(a.storage), None, None],
            out.storage,
            grid(outer * inner)?,
            &node.name,
        );
        Ok(out)
    }

    /// Softmax (`op` 0) or RMS normalisation (`op` 1) over `axis`.
    fn rows(&mut self, node: &TypedNode, axis: usize, op: u32, eps: f32) -> anyhow::Result<View> {
        let a = self.input_view(node, 0)?;
        anyhow::ensure!(a.dt == Dt::F32, "softmax/normalisation of integers");
        let a = self.contiguous(a, &node.name)?;
        let (outer, len, inner) = Self::split(&a.shape, axis, axis);
        let out = self.activation(&a.shape, Dt::F32);
        let mut p = [0u32; 64];
        p[2] = op;
        p[4] = word(len)?;
        p[5] = word(inner)?;
        p[6] = eps.to_bits();
        if inner == 1 {
            p[0] = word(outer)?;
            let x = outer.clamp(1, 65_535);
            let wg = [word(x)?, word(outer.div_ceil(x))?, 1];
            self.push(
                Kernel::Rows,
                p,
                [Some(a.storage), None, None],
                out.storage,
                wg,
                &node.name,
            );
        } else {
            p[0] = word(outer * inner)?;
            let wg = grid(outer * inner)?;
            self.push(
                Kernel::RowsStrided,
                p,
                [Some(a.storage), None, None],
                out.storage,
                wg,
                &node.name,
            );
        }
        Ok(out)
    }

    fn gather(&mut self, node: &TypedNode, axis: usize, shape: &[usize], dt: Dt) -> anyhow::Result<View> {
        let data = self.input_view(node, 0)?;
        // A constant scalar index (`x[:, 0]`, the q/k/v split) is a view.
        if let Some(idx) = self.input_const(node, 1).filter(|t| t.rank() == 0) {
            let i = idx.cast_to_scalar::<i64>()?;
            let size = data.shape[axis] as i64;
            let i = if i < 0 { i + size } else { i };
            anyhow::ensure!((0..size).contains(&i), "index {i} out of range for an axis of {size}");
            let mut v = data;
            v.offset += i as usize * v.strides[axis];
            v.shape.remove(axis);
            v.strides.remove(axis);
            return Ok(v);
        }
        let data = self.contiguous(data, &node.name)?;
        let idx = self.input_view(node, 1)?;
        anyhow::ensure!(idx.dt == Dt::I32, "gather indices are not integers");
        let idx = self.contiguous(idx, &node.name)?;
        let (outer, len, inner) = Self::split(&data.shape, axis, axis);
        let out = self.activation(shape, dt);
        let n = out.len();
        let mut p = [0u32; 64];
        p[0] = word(n)?;
        p[4] = word(outer)?;
        p[5] = word(len)?;
        p[6] = word(inner)?;
        p[7] = word(idx.len())?;
        p[22] = word(idx.offset)?;
        anyhow::ensure!(idx.offset == 0, "a gather with offset indices");
        self.push(
            Kernel::Gather,
            p,
            [Some(data.storage), Some(idx.storage), None],
            out.storage,
            grid(n)?,
            &node.name,
        );
        Ok(out)
    }

    fn gather_nd(&mut self, node: &TypedNode, shape: &[usize], dt: Dt) -> anyhow::Result<View> {
        let data = self.input_view(node, 0)?;
        let data = self.contiguous(data, &node.name)?;
        let idx = self.input_view(node, 1)?;
        anyhow::ensure!(idx.dt == Dt::I32, "gather indices are not integers");
        let idx = self.contiguous(idx, &node.name)?;
        anyhow::ensure!(idx.offset == 0, "a gather with offset indices");
        let r = *idx
            .shape
            .last()
            .ok_or_else(|| anyhow::anyhow!("scalar GatherNd indices"))?;
        anyhow::ensure!(r <= MAX_RANK && r <= data.shape.len(), "GatherNd tuples of {r}");
        let q = idx.len() / r.max(1);
        let inner: usize = data.shape[r..].iter().product();
        let out = self.activation(shape, dt);
        let n = out.len();
        let mut p = [0u32; 64];
        p[0] = word(n)?;
        p[4] = word(q)?;
        p[5] = word(r)?;
        p[6] = word(inner)?;
        for k in 0..r {
            p[8 + k] = word(data.strides[k])?;
            p[14 + k] = word(data.shape[k])?;
        }
        self.push(
            Kernel::GatherNd,
            p,
            [Some(data.storage), Some(idx.storage), None],
            out.storage,
            grid(n)?,
            &node.name,
        );
        Ok(out)
    }

    fn conv(&mut self, node: &TypedNode, c: &ops::cnn::Conv, shape: &[usize]) -> anyhow::Result<View> {
        use ops::cnn::KernelFormat;
        use ops::nn::DataFormat;
        let spec = &c.pool_spec;
        anyhow::ensure!(
            c.group == 1 && c.q_params.is_none() && spec.data_format == DataFormat::NCHW,
            "only float NCHW convolutions without groups are supported"
        );
        anyhow::ensure!(c.kernel_fmt == KernelFormat::OIHW, "kernel format {:?}", c.kernel_fmt);
        let spatial = spec.kernel_shape.len();
        anyhow::ensure!((1..=3).contains(&spatial), "{spatial}-d convolution");
        let x = self.input_view(node, 0)?;
        let x = self.contiguous(x, &node.name)?;
        let w = self.input_view(node, 1)?;
        let w = self.contiguous(w, &node.name)?;
        let bias = self.input_const(node, 2);
        let cout = shape[1];
        let bias_view = match bias {
            Some(b) if b.len() == cout => Some(self.input_view(node, 2)?),
            Some(b) if b.len() == 1 => {
                let v = b.cast_to_scalar::<f32>()?;
                if v == 0.0 {
                    None
                } else {
                    Some(self.upload(
                        &format!("{}.bias", node.name),
                        &TractTensor::from_shape(&[cout], &vec![v; cout])?,
                    )?)
                }
            }
            None if node.inputs.len() < 3 => None,
            _ => anyhow::bail!("a convolution bias that is not a constant of one value per output channel"),
        };
        let in_spatial: Vec<usize> = x.shape[2..].to_vec();
        let padding = spec.computed_padding(&in_spatial);
        let strides = spec.strides();
        let dilations = spec.dilations();
        let pad3 = |v: &[usize], fill: usize| -> Vec<usize> {
            let mut out = vec![fill; 3 - v.len()];
            out.extend_from_slice(v);
            out
        };
        let mut p = [0u32; 64];
        let n = shape.iter().product::<usize>();
        p[0] = word(n)?;
        p[1] = word(x.shape[1])?;
        p[2] = word(cout)?;
        p[3] = u32::from(bias_view.is_some());
        let fields: [(usize, Vec<usize>); 6] = [
            (4, pad3(&in_spatial, 1)),
            (7, pad3(&shape[2..], 1)),
            (10, pad3(&spec.kernel_shape, 1)),
            (13, pad3(&strides, 1)),
            (16, pad3(&padding.iter().map(|d| d.pad_before).collect::<Vec<_>>(), 0)),
            (19, pad3(&dilations, 1)),
        ];
        for (base, values) in fields {
            for (k, v) in values.into_iter().enumerate() {
                p[base + k] = word(v)?;
            }
        }
        let out = self.activation(shape, Dt::F32);
        let inputs = [Some(x.storage), Some(w.storage), bias_view.map(|b| b.storage)];
        self.push(Kernel::Conv, p, inputs, out.storage, grid(n)?, &node.name);
        Ok(out)
    }
}

/// `v` broadcast (numpy rules, aligned right) to `shape`: size-1 dimensions get stride 0.
fn broadcast(v: &View, shape: &[usize]) -> View {
    let pad = shape.len().saturating_sub(v.shape.len());
    let mut strides = vec![0; shape.len()];
    for (d, &size) in shape.iter().enumerate() {
        if d >= pad {
            let src = d - pad;
            strides[d] = if v.shape[src] == 1 && size != 1 {
                0
            } else {
                v.strides[src]
            };
        }
    }
    View {
        storage: v.storage,
        offset: v.offset,
        shape: shape.to_vec(),
        strides,
        dt: v.dt,
    }
}

/// FNV-1a over the words: tells constants of the same node name apart across batch sizes.
fn content_hash(words: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        h ^= u64::from(*w);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
