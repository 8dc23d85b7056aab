//! Times incremental decoding steps of a GGUF model: `decode_speed FILE.gguf`.

use std::time::Instant;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Int;
use temper_models::CausalLm;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: decode_speed FILE.gguf")?;
    let device = Default::default();
    let (model, _, _) = CausalLm::<Flex>::from_gguf(std::path::Path::new(&path), &device)?;
    let mut cache = model.new_cache();
    let prompt = Tensor::<Flex, 2, Int>::from_ints([[504, 3575, 282, 4649, 314]], &device);
    let started = Instant::now();
    let _ = model.forward_cached(prompt, &mut cache).into_data();
    eprintln!("prompt: {:?}", started.elapsed());
    let steps = 32;
    let started = Instant::now();
    for _ in 0..steps {
        let token = Tensor::<Flex, 2, Int>::from_ints([[198]], &device);
        let _ = model.forward_cached(token, &mut cache).into_data();
    }
    let per_step = started.elapsed() / steps;
    eprintln!(
        "decode step: {per_step:?} ({:.1} tokens/s)",
        1.0 / per_step.as_secs_f64()
    );
    Ok(())
}
