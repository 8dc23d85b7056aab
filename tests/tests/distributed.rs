//! Data parallelism is the single-process step: 2 ranks (threads on the CPU, joined through
//! burn-collective) each training on 2 of a step's 4 packed micro-batches give the losses,
//! gradient norms and final weights of 1 rank training on all 4, for full fine-tuning and
//! LoRA. The micro-batches are the PyTorch trajectories' (rows of uneven trained-token
//! counts), so a mean of the ranks' mean losses would differ from the token-weighted loss.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use burn::backend::{Autodiff, Flex};
use serde_json::Value;
use temper_data::Batch;
use temper_models::CausalLm;
use temper_optim::{AdamW, AdamWConfig};
use temper_tests::trajectory::{self, full_model, lora_model, weights};
use temper_tests::{copy_dir, metrics, scratch, tiny};
use temper_train::{Start, StepOutcome, Topology, checkpoint, trainable_hash};

type A = Autodiff<Flex>;

/// burn-collective keeps one collective per backend type in a process: one test at a time.
static COLLECTIVE: Mutex<()> = Mutex::new(());

const STEPS: usize = 4;
const MICRO_BATCHES: usize = 4;

/// The configuration of the trajectories' optimizer and a constant learning rate.
fn optimizer(reference: &Value) -> AdamW<A> {
    AdamW::new(AdamWConfig {
        weight_decay: reference["weight_decay"].as_f64().unwrap(),
        ..AdamWConfig::default()
    })
}

fn steps(reference: &Value) -> Vec<Vec<Batch>> {
    let batches = trajectory::micro_batches(reference);
    assert!(batches.len() >= STEPS * MICRO_BATCHES);
    batches
        .chunks(MICRO_BATCHES)
        .take(STEPS)
        .map(<[Batch]>::to_vec)
        .collect()
}

const LEARNING_RATE: f64 = 1e-3;
const MAX_GRAD_NORM: Option<f64> = Some(1.0);

fn one_rank(reference: &Value, mut model: CausalLm<A>) -> (CausalLm<A>, Vec<StepOutcome>) {
    let device = Default::default();
    let mut optimizer = optimizer(reference);
    let mut log = Vec::new();
    for batches in steps(reference) {
        let outcome;
        (model, outcome) = temper_train::train_step(
            model,
            &mut optimizer,
            &batches,
            LEARNING_RATE,
            MAX_GRAD_NORM,
            &device,
        )
        .unwrap();
        log.push(outcome);
    }
    (model, log)
}

/// Each of `world_size` ranks takes its consecutive share of every step's micro-batches.
fn ranks(
    reference: &Value,
    model: CausalLm<A>,
    world_size: usize,
) -> Vec<(CausalLm<A>, Vec<StepOutcome>)> {
    let _one_at_a_time = COLLECTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let steps = steps(reference);
    let share = MICRO_BATCHES / world_size;
    let ranks = Topology::local(world_size)
        .join::<Flex>(&[Default::default()])
        .unwrap();
    let trained = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                // Clones share parameter ids, as the ranks of one process do.
                let mut model = model.clone();
                let steps = &steps;
                let r = rank.rank;
                scope.spawn(move || {
                    let device = Default::default();
                    let mut optimizer = optimizer(reference);
                    let mut log = Vec::new();
                    for batches in steps {
                        let outcome;
                        (model, outcome) = temper_train::train_step_on(
                            model,
                            &mut optimizer,
                            &batches[r * share..(r + 1) * share],
                            LEARNING_RATE,
                            MAX_GRAD_NORM,
                            &device,
                            Some(&rank),
                        )
                        .unwrap();
                        log.push(outcome);
                    }
                    assert!(rank.agree(trainable_hash(&model)).unwrap());
                    rank.leave().unwrap();
                    (model, log)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    burn_collective::reset_collective::<Flex>();
    trained
}

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1e-8)
}

fn same_training(reference: &Value, model: CausalLm<A>) {
    let (single, single_log) = one_rank(reference, model.clone());
    let expected = weights(&single);
    for (r, (model, log)) in ranks(reference, model, 2).into_iter().enumerate() {
        for (step, (ours, theirs)) in log.iter().zip(&single_log).enumerate() {
            assert_eq!(ours.trained_tokens, theirs.trained_tokens, "step {step}");
            assert_eq!(ours.tokens, theirs.tokens, "step {step}");
            assert!(
                close(ours.loss, theirs.loss),
                "rank {r} step {step}: loss {} vs {} on one rank",
                ours.loss,
                theirs.loss
            );
            assert!(
                close(ours.grad_norm, theirs.grad_norm),
                "rank {r} step {step}: gradient norm {} vs {} on one rank",
                ours.grad_norm,
                theirs.grad_norm
            );
        }
        for ((key, _, ours), (_, _, theirs)) in weights(&model).iter().zip(&expected) {
            let mut difference = 0.0;
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                // The key slice of c_attn's bias has a zero gradient in exact arithmetic, so
                // AdamW turns float rounding noise (which depends on the order of the sums)
                // into steps of up to the learning rate there.
                if key.ends_with("attn.c_attn.bias") && (32..64).contains(&i) {
                    let bound = 2.0 * LEARNING_RATE * STEPS as f64;
                    assert!(f64::from(a - b).abs() <= bound, "{key}[{i}]: {a} vs {b}");
                } else {
                    difference += f64::from(a - b).powi(2);
                }
            }
            let difference = difference.sqrt();
            let norm: f64 = theirs
                .iter()
                .map(|b| f64::from(*b).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                difference <= 1e-5 * norm.max(1e-8),
                "rank {r}: {key} differs from one rank's by {difference} (norm {norm})"
            );
        }
    }
}

#[test]
fn two_ranks_train_full_fine_tuning_as_one_rank_on_the_same_rows() {
    let reference = trajectory::reference("trajectory_full.json");
    same_training(&reference, full_model::<A>(&Default::default()));
}

#[test]
fn two_ranks_train_lora_as_one_rank_on_the_same_rows() {
    let reference = trajectory::reference("trajectory_lora.json");
    same_training(&reference, lora_model::<A>(&Default::default()));
}

/// The replicas' weight check: every rank learns whether all ranks passed the same value.
#[test]
fn ranks_agree_only_on_equal_values() {
    let _one_at_a_time = COLLECTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let ranks = Topology::local(3)
        .join::<Flex>(&[Default::default()])
        .unwrap();
    let answers: Vec<Vec<bool>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                let r = rank.rank;
                scope.spawn(move || {
                    let hash = 0x0123_4567_89ab_cdef_u64;
                    let answers = vec![
                        rank.agree(hash).unwrap(),
                        // One rank differs in one bit.
                        rank.agree(if r == 2 { hash ^ 1 << 40 } else { hash })
                            .unwrap(),
                        // Different values whose sums equal those of equal ones.
                        rank.agree([1, 3, 2][r]).unwrap(),
                    ];
                    rank.leave().unwrap();
                    answers
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    burn_collective::reset_collective::<Flex>();
    assert!(
        answers.iter().all(|a| *a == [true, false, false]),
        "{answers:?}"
    );
}

/// The train lines of a run's metrics: (loss, gradient norm, trained tokens).
fn trajectory(dir: &std::path::Path) -> Vec<(f64, f64, u64)> {
    metrics(dir)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| {
            (
                line["loss"].as_f64().unwrap(),
                line["grad_norm"].as_f64().unwrap(),
                line["trained_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The tiny recipe (LoRA, packing) over 8 rows a step: 1 rank of 4 micro-batches, or 2 ranks
/// of 2. Dropout is off: ranks draw their own masks.
fn tiny_run(
    dir: &std::path::Path,
    world_size: usize,
    start: Start<'_>,
) -> temper_train::Result<()> {
    let accumulation = 4 / world_size;
    let config = tiny(
        dir,
        &[
            format!("distributed.world_size={world_size}"),
            format!("train.gradient_accumulation_steps={accumulation}"),
            "lora.dropout=0.0".into(),
            "train.max_steps=4".into(),
            "train.save_steps=2".into(),
            "export.merged=false".into(),
        ],
    );
    temper_train::run::<A>(&config, start, &Default::default(), &mut |_| {}).map(|_| ())
}

#[test]
fn a_run_of_two_ranks_follows_one_rank_and_resumes_only_with_two() {
    let _one_at_a_time = COLLECTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (one, two) = (scratch("dp-one"), scratch("dp-two"));
    tiny_run(&one, 1, Start::Fresh).unwrap();
    tiny_run(&two, 2, Start::Fresh).unwrap();
    let expected = trajectory(&one);
    assert_eq!(expected.len(), 4);
    for (step, (ours, theirs)) in trajectory(&two).iter().zip(&expected).enumerate() {
        assert_eq!(ours.2, theirs.2, "trained tokens of step {}", step + 1);
        assert!(
            close(ours.0, theirs.0),
            "loss of step {}: {ours:?} vs {theirs:?}",
            step + 1
        );
        assert!(
            close(ours.1, theirs.1),
            "grad norm of step {}: {ours:?} vs {theirs:?}",
            step + 1
        );
    }
    let lines = metrics(&two);
    assert!(
        lines
            .iter()
            .filter(|line| line["kind"] == "train")
            .all(|line| line["all_reduce_seconds"].as_f64().is_some()),
        "every step reports its all-reduce time"
    );

    // Resumed from step 2 with two ranks: the same steps 3 and 4, bit for bit.
    let checkpoints = checkpoint::list_checkpoints(&two);
    let (_, second) = checkpoints.iter().find(|(step, _)| *step == 2).unwrap();
    let resumed = scratch("dp-resumed");
    copy_dir(second, &resumed.join("checkpoint-000002"));
    let resumed_checkpoint = resumed.join("checkpoint-000002");
    tiny_run(&resumed, 2, Start::Resume(&resumed_checkpoint)).unwrap();
    assert_eq!(trajectory(&resumed), trajectory(&two)[2..]);

    // With one rank the rows of a step would be split otherwise: refused, saying so.
    let error = tiny_run(&scratch("dp-other"), 1, Start::Resume(&resumed_checkpoint))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("distributed.world_size was 2, now 1"),
        "{error}"
    );
    for dir in [one, two, resumed] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A rank that stops (its training failed) stops a rank waiting for it at once, naming it;
/// a rank that never comes is given up after the timeout, named too. Operations left pending
/// hold burn-collective's server threads (a runtime shared by every backend type in a
/// process), so this test runs in a process of its own: this test binary, run again for it.
#[test]
fn a_rank_that_stops_or_never_comes_is_named() {
    const CHILD: &str = "TEMPER_DISTRIBUTED_FAILURE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_rank_that_stops_or_never_comes_is_named"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        return;
    }
    fn first_sum_error<B: burn::tensor::backend::Backend>(
        topology: &Topology,
        second: impl FnOnce(temper_train::Rank<B>),
    ) -> String {
        let device = B::Device::default();
        let mut ranks = topology.join::<B>(std::slice::from_ref(&device)).unwrap();
        second(ranks.pop().unwrap());
        let values = burn::tensor::Tensor::<B, 1>::ones([4], &device);
        ranks.pop().unwrap().sum(values).unwrap_err().to_string()
    }
    let started = std::time::Instant::now();
    let error = first_sum_error::<Flex>(&Topology::local(2), |second| {
        second.stop("its data could not be read");
    });
    assert!(
        error.contains("rank 1 stopped: its data could not be read"),
        "{error}"
    );
    assert!(started.elapsed().as_secs() < 5);

    let topology = Topology {
        timeout: std::time::Duration::from_secs(1),
        ..Topology::local(2)
    };
    let error = first_sum_error::<burn::backend::NdArray>(&topology, |second| {
        // The second rank never issues the all-reduce (and stays joined).
        std::mem::forget(second);
    });
    assert!(
        error.contains("rank 0 waited 1 s in an all-reduce for rank 1 of this node"),
        "{error}"
    );
}
