//! The fused kernels on burn-flex: forward on `Flex`, forward plus a registered backward on
//! `Autodiff<Flex>` (with either checkpoint strategy).
//!
//! Library code is generic over `B: Backend`, and stable Rust has no specialisation, so the
//! callers in `super` ask [`Route::of`] whether `B` is one of these concrete types (a `TypeId`
//! comparison) and then hand their tensors over through [`cast`], which moves a value between
//! two names of the same type.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, DType, TensorData, TensorMetadata, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::{Flex, FlexTensor};

use super::kernels::{self, CrossEntropySums, ScoreMask};

/// Which flex backend `B` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Inference,
    Autodiff,
    AutodiffBalanced,
}

impl Route {
    pub(super) fn of<B: Backend>() -> Option<Route> {
        let id = TypeId::of::<B>();
        if id == TypeId::of::<Flex>() {
            Some(Route::Inference)
        } else if id == TypeId::of::<Autodiff<Flex, NoCheckpointing>>() {
            Some(Route::Autodiff)
        } else if id == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>() {
            Some(Route::AutodiffBalanced)
        } else {
            None
        }
    }
}

/// `value` under another name of its own type. Called only after [`Route::of`] has matched
/// the backend, so a mismatch is a bug in this module.
fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("fused::flex::cast between different types (Route::of matched the wrong backend)")
}

fn float_primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FloatTensor<B> {
    tensor.into_primitive().tensor()
}

fn from_float_primitive<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The tensor with its own row-major buffer (copied only when it is a strided view or a
/// slice of a larger buffer), so that `storage()` is exactly its values.
fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    tensor.to_contiguous()
}

fn new_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Calls `$inference` (on `Flex`) or `$tracked` (on `Autodiff<Flex, C>`, which also registers
/// the backward) with the tensors cast to the route's primitive type and the other arguments
/// as they are, and casts the result back.
macro_rules! dispatch {
    ($route:expr, $inference:ident, $tracked:ident, [$($tensor:expr),+] $(, $arg:expr)*) => {
        match $route {
            Route::Inference => cast($inference($(cast($tensor)),+ $(, $arg)*)),
            Route::Autodiff => cast($tracked::<NoCheckpointing>($(cast($tensor)),+ $(, $arg)*)),
            Route::AutodiffBalanced => {
                cast($tracked::<BalancedCheckpointing>($(cast($tensor)),+ $(, $arg)*))
            }
        }
    };
}

// ----------------------------------------------------------------------------------------
// Masked softmax of attention scores

/// `scores`: `[batch, heads, seq_q, seq_k]`; `mask`: `[batch, 1 or heads, seq_q, seq_k]`.
pub(super) fn masked_softmax<B: Backend>(
    route: Route,
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f32,
) -> Tensor<B, 4> {
    let mask: Option<FlexTensor> = mask.map(|mask| cast(mask.into_primitive()));
    let probs: FloatTensor<B> = dispatch!(
        route,
        softmax_forward,
        tracked_softmax,
        [float_primitive(scores)],
        mask,
        scale
    );
    from_float_primitive(probs)
}

fn softmax_forward(scores: FlexTensor, mask: Option<FlexTensor>, scale: f32) -> FlexTensor {
    let shape = scores.shape();
    let [_, heads, seq_q, seq_k] = [shape[0], shape[1], shape[2], shape[3]];
    let scores = contiguous(&scores);
    let mask = mask.map(|mask| contiguous(&mask));
    let score_mask = mask.as_ref().map(|mask| ScoreMask {
        data: mask.bytes(),
        // A per-head mask is a mask over `batch * heads` rows of one head each.
        heads: if mask.shape()[1] == 1 { heads } else { 1 },
        seq_q,
    });
    let mut probs = vec![0.0; scores.shape().num_elements()];
    kernels::masked_softmax(scores.storage(), score_mask, scale, seq_k, &mut probs);
    new_tensor(probs, shape)
}

fn tracked_softmax<C: CheckpointStrategy>(
    scores: FloatTensor<Autodiff<Flex, C>>,
    mask: Option<FlexTensor>,
    scale: f32,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct MaskedSoftmax;

    impl Backward<Flex, 1> for MaskedSoftmax {
        /// The probabilities and the scale.
        type State = (FlexTensor, f32);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (probs, scale) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let (probs, grad) = (contiguous(&probs), contiguous(&grad));
                let mut grad_scores = vec![0.0; probs.shape().num_elements()];
                let row_len = probs.shape()[3];
                kernels::masked_softmax_backward(
                    probs.storage(),
                    grad.storage(),
                    scale,
                    row_len,
                    &mut grad_scores,
                );
                new_tensor(grad_scores, probs.shape())
            });
        }
    }

    let probs = softmax_forward(scores.primitive.clone(), mask, scale);
    match MaskedSoftmax
        .prepare::<C>([scores.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((probs.clone(), scale), probs),
        OpsKind::UnTracked(prep) => prep.finish(probs),
    }
}

// ----------------------------------------------------------------------------------------
// Tanh-approximated GELU

pub(super) fn gelu_tanh<B: Backend, const D: usize>(route: Route, x: Tensor<B, D>) -> Tensor<B, D> {
    let out: FloatTensor<B> = dispatch!(route, gelu_forward, tracked_gelu, [float_primitive(x)]);
    from_float_primitive(out)
}

fn gelu_forward(x: FlexTensor) -> FlexTensor {
    let x = contiguous(&x);
    let mut out = vec![0.0; x.shape().num_elements()];
    kernels::gelu_tanh(x.storage(), &mut out);
    new_tensor(out, x.shape())
}

fn tracked_gelu<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct GeluTanh;

    impl Backward<Flex, 1> for GeluTanh {
        /// The input.
        type State = FlexTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let input = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let (input, grad) = (contiguous(&input), contiguous(&grad));
                let mut grad_input = vec![0.0; input.shape().num_elements()];
                kernels::gelu_tanh_backward(input.storage(), grad.storage(), &mut grad_input);
                new_tensor(grad_input, input.shape())
            });
        }
    }

    let out = gelu_forward(x.primitive.clone());
    match GeluTanh
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.primitive, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ----------------------------------------------------------------------------------------
// LayerNorm

pub(super) fn layer_norm<B: Backend>(
    route: Route,
    input: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f32,
) -> Tensor<B, 3> {
    let out: FloatTensor<B> = dispatch!(
        route,
        layer_norm_inference,
        tracked_layer_norm,
        [
            float_primitive(input),
            float_primitive(weight),
            float_primitive(bias)
        ],
        epsilon
    );
    from_float_primitive(out)
}

fn layer_norm_inference(
    input: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    epsilon: f32,
) -> FlexTensor {
    layer_norm_forward(input, &weight, &bias, epsilon).0
}

/// The output, and each row's mean and reciprocal standard deviation.
fn layer_norm_forward(
    input: FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    epsilon: f32,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (input, weight, bias) = (contiguous(&input), contiguous(weight), contiguous(bias));
    let mut out = vec![0.0; input.shape().num_elements()];
    let (means, rstds) = kernels::layer_norm(
        input.storage(),
        weight.storage(),
        bias.storage(),
        epsilon,
        &mut out,
    );
    let rows = means.len();
    (
        new_tensor(out, input.shape()),
        new_tensor(means, Shape::new([rows])),
        new_tensor(rstds, Shape::new([rows])),
    )
}

fn tracked_layer_norm<C: CheckpointStrategy>(
    input: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    bias: FloatTensor<Autodiff<Flex, C>>,
    epsilon: f32,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct LayerNorm;

    impl Backward<Flex, 3> for LayerNorm {
        /// Input, weight, row means, row reciprocal standard deviations.
        type State = (FlexTensor, FlexTensor, FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (input, weight, means, rstds) = ops.state;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let input = contiguous(&input);
            let mut grad_input = vec![0.0; input.shape().num_elements()];
            let (grad_weight, grad_bias) = kernels::layer_norm_backward(
                input.storage(),
                contiguous(&weight).storage(),
                means.storage(),
                rstds.storage(),
                grad.storage(),
                &mut grad_input,
            );
            let [input_node, weight_node, bias_node] = ops.parents;
            let d = grad_weight.len();
            if let Some(node) = input_node {
                grads.register::<Flex>(node.id, new_tensor(grad_input, input.shape()));
            }
            if let Some(node) = weight_node {
                grads.register::<Flex>(node.id, new_tensor(grad_weight, Shape::new([d])));
            }
            if let Some(node) = bias_node {
                grads.register::<Flex>(node.id, new_tensor(grad_bias, Shape::new([d])));
            }
        }
    }

    let (out, means, rstds) = layer_norm_forward(
        input.primitive.clone(),
        &weight.primitive,
        &bias.primitive,
        epsilon,
    );
    match LayerNorm
        .prepare::<C>([input.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            prep.finish((input.primitive, weight.primitive, means, rstds), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ----------------------------------------------------------------------------------------
// RMSNorm

pub(super) fn rms_norm<B: Backend>(
    route: Route,
    input: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    epsilon: f32,
) -> Tensor<B, 3> {
    let out: FloatTensor<B> = dispatch!(
        route,
        rms_norm_inference,
        tracked_rms_norm,
        [float_primitive(input), float_primitive(weight)],
        epsilon
    );
    from_float_primitive(out)
}

fn rms_norm_inference(input: FlexTensor, weight: FlexTensor, epsilon: f32) -> FlexTensor {
    rms_norm_forward(input, &weight, epsilon).0
}

/// The output and each row's reciprocal root mean square.
fn rms_norm_forward(
    input: FlexTensor,
    weight: &FlexTensor,
    epsilon: f32,
) -> (FlexTensor, FlexTensor) {
    let (input, weight) = (contiguous(&input), contiguous(weight));
    let mut out = vec![0.0; input.shape().num_elements()];
    let rstds = kernels::rms_norm(input.storage(), weight.storage(), epsilon, &mut out);
    let rows = rstds.len();
    (
        new_tensor(out, input.shape()),
        new_tensor(rstds, Shape::new([rows])),
    )
}

fn tracked_rms_norm<C: CheckpointStrategy>(
    input: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    epsilon: f32,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct RmsNorm;

    impl Backward<Flex, 2> for RmsNorm {
        /// Input, weight, row reciprocal root mean squares.
        type State = (FlexTensor, FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (input, weight, rstds) = ops.state;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let input = contiguous(&input);
            let mut grad_input = vec![0.0; input.shape().num_elements()];
            let grad_weight = kernels::rms_norm_backward(
                input.storage(),
                contiguous(&weight).storage(),
                rstds.storage(),
                grad.storage(),
                &mut grad_input,
            );
            let [input_node, weight_node] = ops.parents;
            let d = grad_weight.len();
            if let Some(node) = input_node {
                grads.register::<Flex>(node.id, new_tensor(grad_input, input.shape()));
            }
            if let Some(node) = weight_node {
                grads.register::<Flex>(node.id, new_tensor(grad_weight, Shape::new([d])));
            }
        }
    }

    let (out, rstds) = rms_norm_forward(input.primitive.clone(), &weight.primitive, epsilon);
    match RmsNorm
        .prepare::<C>([input.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((input.primitive, weight.primitive, rstds), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ----------------------------------------------------------------------------------------
// SwiGLU

pub(super) fn swiglu<B: Backend>(
    route: Route,
    gate: Tensor<B, 3>,
    up: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let out: FloatTensor<B> = dispatch!(
        route,
        swiglu_inference,
        tracked_swiglu,
        [float_primitive(gate), float_primitive(up)]
    );
    from_float_primitive(out)
}

fn swiglu_inference(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
    swiglu_forward(&gate, &up)
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (gate, up) = (contiguous(gate), contiguous(up));
    let mut out = vec![0.0; gate.shape().num_elements()];
    kernels::swiglu(gate.storage(), up.storage(), &mut out);
    new_tensor(out, gate.shape())
}

fn tracked_swiglu<C: CheckpointStrategy>(
    gate: FloatTensor<Autodiff<Flex, C>>,
    up: FloatTensor<Autodiff<Flex, C>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct Swiglu;

    impl Backward<Flex, 2> for Swiglu {
        /// Gate and up projections.
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (gate, up) = (contiguous(&ops.state.0), contiguous(&ops.state.1));
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let n = gate.shape().num_elements();
            let (mut grad_gate, mut grad_up) = (vec![0.0; n], vec![0.0; n]);
            kernels::swiglu_backward(
                gate.storage(),
                up.storage(),
                grad.storage(),
                &mut grad_gate,
                &mut grad_up,
            );
            let [gate_node, up_node] = ops.parents;
            if let Some(node) = gate_node {
                grads.register::<Flex>(node.id, new_tensor(grad_gate, gate.shape()));
            }
            if let Some(node) = up_node {
                grads.register::<Flex>(node.id, new_tensor(grad_up, up.shape()));
            }
        }
    }

    let out = swiglu_forward(&gate.primitive, &up.primitive);
    match Swiglu
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ----------------------------------------------------------------------------------------
// Rotary position embedding

/// `x`: `[batch, seq_len, heads, head_dim]`; `cos`/`sin`: `[batch, seq_len, head_dim]`
/// (constants: no gradient flows to them).
pub(super) fn rope<B: Backend>(
    route: Route,
    x: Tensor<B, 4>,
    cos: Tensor<B, 3>,
    sin: Tensor<B, 3>,
) -> Tensor<B, 4> {
    let (cos, sin) = (untracked(route, cos), untracked(route, sin));
    let out: FloatTensor<B> = dispatch!(
        route,
        rope_forward,
        tracked_rope,
        [float_primitive(x)],
        &cos,
        &sin
    );
    from_float_primitive(out)
}

fn rope_forward(x: FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> FlexTensor {
    rope_apply(&x, cos, sin, false)
}

/// The rotation (or with `transpose`, its transpose) of a `[batch, seq_len, heads, head_dim]`
/// tensor.
fn rope_apply(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, transpose: bool) -> FlexTensor {
    let (x, cos, sin) = (contiguous(x), contiguous(cos), contiguous(sin));
    let head_dim = x.shape()[3];
    let mut out = vec![0.0; x.shape().num_elements()];
    kernels::rope(
        x.storage(),
        cos.storage(),
        sin.storage(),
        head_dim,
        transpose,
        &mut out,
    );
    new_tensor(out, x.shape())
}

fn tracked_rope<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    cos: &FlexTensor,
    sin: &FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct Rope;

    impl Backward<Flex, 1> for Rope {
        /// cos and sin.
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (cos, sin) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                rope_apply(&grad, &cos, &sin, true)
            });
        }
    }

    let out = rope_forward(x.primitive, cos, sin);
    match Rope
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos.clone(), sin.clone()), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The flex values of a tensor on any route, without its autodiff tracking.
fn untracked<B: Backend, const D: usize>(route: Route, tensor: Tensor<B, D>) -> FlexTensor {
    let primitive = float_primitive(tensor);
    match route {
        Route::Inference => cast(primitive),
        Route::Autodiff => {
            cast::<_, FloatTensor<Autodiff<Flex, NoCheckpointing>>>(primitive).primitive
        }
        Route::AutodiffBalanced => {
            cast::<_, FloatTensor<Autodiff<Flex, BalancedCheckpointing>>>(primitive).primitive
        }
    }
}
// ----------------------------------------------------------------------------------------
// Cross-entropy rows (no autodiff: the loss computes its own gradient)

pub(super) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    grad_scale: Option<f32>,
) -> (CrossEntropySums, Option<Tensor<B, 2>>) {
    let logits: FlexTensor = cast(float_primitive(logits));
    let vocab = logits.shape()[1];
    match grad_scale {
        Some(scale) => {
            // Copies only when the logits are shared or strided.
            let mut data = logits.into_data();
            let values = data
                .as_mut_slice::<f32>()
                .expect("is_f32 was checked by the caller");
            let sums = kernels::cross_entropy_backward_in_place(values, labels, vocab, scale);
            let grad: FloatTensor<B> = cast(FlexTensor::from_data(data));
            (sums, Some(from_float_primitive(grad)))
        }
        None => {
            let logits = contiguous(&logits);
            (
                kernels::cross_entropy(logits.storage(), labels, vocab),
                None,
            )
        }
    }
}

/// Whether a tensor is one the kernels handle: `f32` values.
pub(super) fn is_f32<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    tensor.dtype() == DType::F32
}

// ----------------------------------------------------------------------------------------
// Products with 16-bit weights (inference only)

/// The buffer of an f16 weight `[k, n]` kept as the transpose of a row-major `[n, k]` buffer
/// (as [`crate::CausalLm::with_f16_weights`] keeps it); `None` for any other layout.
fn f16_rows(weight: &FlexTensor, k: usize) -> Option<&[half::f16]> {
    let layout = weight.layout();
    let n = layout.shape()[1];
    (layout.strides() == [1, k as isize] && layout.start_offset() == 0)
        .then(|| &weight.storage::<half::f16>()[..n * k])
}

/// `input` (`[m, k]`, f32) times `weight` (`[k, n]`, f16 kept as [`f16_rows`] reads it): few
/// rows by the 16-bit kernel, more by `gemm` on the weight widened to f32 (on the host, F16C
/// where the CPU has it). `None` for a weight in another layout.
pub(super) fn f16_weight_matmul<B: Backend>(
    input: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    kernel_rows: usize,
) -> Option<Tensor<B, 2>> {
    let [m, k] = input.dims();
    let n = weight.dims()[1];
    let weight: FlexTensor = cast(float_primitive(weight));
    let rows = f16_rows(&weight, k)?;
    if m > kernel_rows {
        let mut wide = vec![0.0; n * k];
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(rows, &mut wide);
        let wide: Tensor<B, 2> = from_float_primitive(cast::<FlexTensor, FloatTensor<B>>(
            new_tensor(wide, Shape::new([n, k])),
        ));
        return Some(input.matmul(wide.transpose()));
    }
    let input = contiguous(&cast(float_primitive(input)));
    let mut out = vec![0.0; m * n];
    kernels::matmul_f16_weight(input.storage::<f32>(), rows, m, k, &mut out);
    Some(from_float_primitive(cast::<FlexTensor, FloatTensor<B>>(
        new_tensor(out, Shape::new([m, n])),
    )))
}
