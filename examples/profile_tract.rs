//! Per-operator time of a tower in tract: where does the time go?
//!
//! `cargo run --release --example profile_tract -- MODEL.onnx BATCH [ITERS] [--concrete] [--transform NAME]...`
//!
//! Runs the optimised plan ITERS times (after one warm-up) and prints the time per operator kind, with the node
//! count and share, largest first. `--concrete` fixes the batch dimension before optimising (instead of keeping
//! it symbolic), to measure what the symbolic batch costs. Used for the tract analysis in docs/BENCHMARKS.md.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tract_onnx::prelude::tract_data::internal::DimLike;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("MODEL.onnx");
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let iters: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);

    let concrete = args.iter().any(|a| a == "--concrete");

    let model = tract_onnx::onnx().model_for_path(path)?;
    let fact = model.input_fact(0)?.clone();
    let dt = fact.datum_type.concretize().unwrap();
    let mut dims: Vec<usize> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_usize().ok()).unwrap_or(batch))
        .collect();
    dims[0] = batch;
    let t = Instant::now();
    let mut typed = model.into_typed()?;
    if let (true, Some(sym)) = (concrete, typed.symbols.get("batch")) {
        let subs = std::iter::once((sym, TDim::Val(batch as i64))).collect();
        typed = typed.set_symbols(&subs)?;
    }
    for (i, a) in args.iter().enumerate() {
        if a == "--transform" {
            let name = &args[i + 1];
            let tr = tract_onnx::tract_core::transform::get_transform(name)?
                .unwrap_or_else(|| panic!("no transform {name}"));
            tr.transform(&mut typed)?;
            println!("applied {name}");
        }
    }
    let optimized = typed.into_optimized()?;
    println!("optimise: {:?}, {} nodes", t.elapsed(), optimized.nodes.len());
    let plan = optimized.into_runnable()?;
    let input: Tensor = if dt == i64::datum_type() {
        let mut v = vec![0i64; dims.iter().product()];
        let row = dims[1];
        for r in 0..batch {
            v[r * row] = 49406;
            v[r * row + 5] = 49407;
        }
        Tensor::from_shape(&dims, &v)?
    } else {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        Tensor::from_shape(&dims, &v)?
    };
    let want = plan.model().input_fact(0)?.datum_type;
    let input = if want != input.datum_type() {
        input.cast_to_dt(want)?.into_owned()
    } else {
        input
    };
    plan.run(tvec!(input.clone().into_tvalue()))?;
    let mut per_op: HashMap<String, (Duration, usize)> = HashMap::new();
    let mut total = Duration::ZERO;
    let mut best = Duration::MAX;
    for _ in 0..iters {
        let mut state = plan.spawn()?;
        let t = Instant::now();
        state.run_plan_with_eval(tvec!(input.clone().into_tvalue()), |ctx, op_state, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            let e = per_op.entry(node.op().name().to_string()).or_default();
            e.0 += t.elapsed();
            e.1 += 1;
            r
        })?;
        total += t.elapsed();
        best = best.min(t.elapsed());
    }
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    let per_iter = total / iters as u32;
    println!("batch {batch}: {per_iter:?} mean, {best:?} best per run ({iters} runs)");
    for (name, (d, n)) in rows.iter().take(20) {
        let ms = d.as_secs_f64() * 1e3 / iters as f64;
        println!(
            "{name:<28} {ms:>9.2} ms {:>5.1}%  {:>4} nodes",
            100.0 * d.as_secs_f64() / total.as_secs_f64(),
            n / iters
        );
    }
    Ok(())
}
