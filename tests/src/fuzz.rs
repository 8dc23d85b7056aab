//! A seeded mutation fuzzer for every parser of user files: inputs are valid seed files with
//! bytes flipped, deleted, duplicated, spliced and numbers replaced by boundary values. A
//! parser may refuse an input with an error; it may not panic or take longer than
//! [`HANG_SECONDS`]. What fails is written to `tests/fuzz/crashes/<target>/` so it can be
//! committed under `tests/fuzz/regressions/<target>/`, which every test run replays.
//!
//! Coverage-guided fuzzing (`cargo-fuzz`) needs a nightly toolchain that cannot be installed
//! here; this loop runs on stable, in the test suite and from `cargo xtask fuzz`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use temper_data::shuffle::SplitMix64;

use crate::root;

/// How long one input may take before it counts as a hang.
pub const HANG_SECONDS: u64 = 10;

/// A parser under test: its seed files and how to feed it bytes.
pub struct Target {
    pub name: &'static str,
    /// Seed files, relative to the repository root or the asset cache.
    seeds: fn() -> Vec<Vec<u8>>,
    /// Parses `bytes` (written to `scratch`, a private directory, when the parser reads files);
    /// errors are fine, panics are not.
    run: fn(&[u8], &Path),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn files_in(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == extension));
    paths.sort();
    paths
}

fn write(scratch: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// The conversation templates are rendered with.
fn conversation() -> temper_chat::Conversation {
    use temper_chat::Message;
    temper_chat::Conversation::new(vec![
        Message::system("Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello!"),
        Message::user("2+2?"),
        Message::assistant("4"),
    ])
}

/// Every target, in a fixed order.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "records",
            seeds: || {
                let mut paths = files_in("datasets/sample", "jsonl");
                paths.extend(files_in("tests/fixtures/bad_input", "jsonl"));
                read_all(&paths)
            },
            run: |bytes, scratch| {
                let path = write(scratch, "data.jsonl", bytes);
                let _ = temper_data::read_file(&path, &Default::default());
            },
        },
        Target {
            name: "template",
            seeds: || read_all(&files_in("crates/temper-chat/templates", "jinja")),
            run: |bytes, _| {
                let source = String::from_utf8_lossy(bytes);
                if let Ok(template) = temper_chat::ChatTemplate::from_source("fuzz.jinja", source) {
                    let options = temper_chat::RenderOptions::default();
                    let _ =
                        template.render(&conversation(), &options, temper_chat::TrainOn::Assistant);
                }
            },
        },
        Target {
            name: "tokenizer_config",
            seeds: || {
                read_all(&files_in("crates/temper-chat/templates", "jinja"))
                    .into_iter()
                    .map(|source| {
                        let config = serde_json::json!({
                            "bos_token": "<s>",
                            "eos_token": {"content": "</s>"},
                            "chat_template": String::from_utf8_lossy(&source),
                        });
                        config.to_string().into_bytes()
                    })
                    .collect()
            },
            run: |bytes, scratch| {
                let path = write(scratch, "tokenizer_config.json", bytes);
                if let Ok(template) = temper_chat::ChatTemplate::from_tokenizer_config(&path, None)
                {
                    let _ = template.render_text(&conversation(), &Default::default());
                }
            },
        },
        Target {
            name: "run_config",
            seeds: || read_all(&files_in("configs", "toml")),
            run: |bytes, scratch| {
                let path = write(scratch, "run.toml", bytes);
                let _ = temper_train::RunConfig::load(&path, &[]);
            },
        },
        Target {
            name: "gguf",
            seeds: || {
                // The header of the real SmolLM2 GGUF (metadata, byte-level vocabulary, tensor
                // table) and the tokenizer-only Mistral GGUF (a SentencePiece vocabulary).
                let path = crate::asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
                let mut smollm2 = read_all(&[path]).remove(0);
                smollm2.truncate(2 << 20);
                vec![
                    smollm2,
                    read_all(&[crate::asset("mistral/tokenizer.gguf")]).remove(0),
                ]
            },
            run: |bytes, _| {
                if let Ok(file) =
                    temper_models::gguf::GgufFile::parse(Path::new("fuzz.gguf"), bytes.to_vec())
                {
                    let _ = file.model_config();
                    let _ = file.tokenizer_json();
                    let _ = file.special_tokens();
                }
            },
        },
        Target {
            name: "safetensors",
            seeds: || {
                let fixtures = "crates/temper-models/tests/fixtures";
                read_all(&[
                    root().join(fixtures).join("gpt2/model.safetensors"),
                    root().join(fixtures).join("llama_gqa/model.safetensors"),
                ])
            },
            run: |bytes, scratch| {
                let fixtures = root().join("crates/temper-models/tests/fixtures");
                for case in ["gpt2", "llama_gqa"] {
                    let dir = scratch.join(case);
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::copy(
                        fixtures.join(case).join("config.json"),
                        dir.join("config.json"),
                    );
                    write(&dir, "model.safetensors", bytes);
                    let _ = temper_models::CausalLm::<Flex>::from_hf_dir(&dir, &Default::default());
                }
            },
        },
        Target {
            name: "trainer_state",
            seeds: || {
                let state = serde_json::json!({
                    "format": 2, "step": 4, "total_steps": 8,
                    "sampler": {"seed": 7, "epoch": 0, "position": 16},
                    "param_steps": {"transformer.h.0.attn.c_attn.lora.lora_a": 4},
                    "loss": 9.5,
                    "fingerprint": {"train.seed": "7", "data.max_length": "128"}
                });
                vec![state.to_string().into_bytes()]
            },
            run: |bytes, scratch| {
                write(scratch, temper_train::checkpoint::STATE_FILE, bytes);
                let moments = [0.5f32; 4];
                let key = "transformer.h.0.attn.c_attn.lora.lora_a";
                let tensors = [
                    (format!("{key}.exp_avg"), vec![4], &moments[..]),
                    (format!("{key}.exp_avg_sq"), vec![4], &moments[..]),
                ];
                let optimizer = scratch.join(temper_train::checkpoint::OPTIMIZER_FILE);
                let _ = temper_store::write_f32_safetensors(&optimizer, &tensors, None);
                let _ = temper_train::checkpoint::read_state(scratch);
            },
        },
        Target {
            name: "tokenizer_json",
            seeds: || read_all(&[crate::asset("gpt2/tokenizer.json")]),
            run: |bytes, _| {
                let text = String::from_utf8_lossy(bytes);
                if let Ok(tokenizer) = temper_data::Tokenizer::from_json(
                    &text,
                    Path::new("fuzz.json"),
                    &Default::default(),
                ) {
                    let _ = tokenizer.encode("Hello, world! 2+2=4");
                }
            },
        },
    ]
}

/// A mutation of `seed`: one to four edits drawn from `rng`, some splicing in `other`.
pub fn mutate(seed: &[u8], other: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    const INTERESTING: [&[u8]; 10] = [
        b"0",
        b"-1",
        b"4294967296",
        b"18446744073709551615",
        b"1e309",
        b"NaN",
        b"\"\"",
        b"null",
        b"[]",
        b"{}",
    ];
    let mut bytes = seed.to_vec();
    let below = |rng: &mut SplitMix64, n: usize| rng.below(n.max(1) as u64) as usize;
    for _ in 0..=below(rng, 4) {
        let at = below(rng, bytes.len());
        let len = 1 + below(rng, 64.min(bytes.len().saturating_sub(at).max(1)));
        let end = (at + len).min(bytes.len());
        match below(rng, 7) {
            0 => {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= 1 << below(rng, 8);
                }
            }
            1 => {
                bytes.drain(at..end);
            }
            2 => {
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            3 => {
                let value = INTERESTING[below(rng, INTERESTING.len())];
                bytes.splice(at..end, value.iter().copied());
            }
            4 => {
                // A number of the input replaced by a boundary value.
                if let Some(start) = bytes[at..].iter().position(u8::is_ascii_digit) {
                    let start = at + start;
                    let digits = bytes[start..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    let value = INTERESTING[below(rng, 5)];
                    bytes.splice(start..start + digits, value.iter().copied());
                }
            }
            5 => {
                let from = below(rng, other.len());
                let piece = &other[from..(from + len).min(other.len())];
                bytes.splice(at..at, piece.iter().copied());
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

/// What went wrong with one input.
#[derive(Debug)]
pub struct Failure {
    pub target: &'static str,
    /// `panic: message` or `hang`.
    pub what: String,
    pub input: Vec<u8>,
}

/// Runs `target` on `input` in its own thread, catching a panic and a hang.
pub fn check(target: &Target, input: &[u8], scratch: &Path) -> Option<Failure> {
    let (sender, receiver) = mpsc::channel();
    let (run, bytes, dir) = (target.run, input.to_vec(), scratch.to_owned());
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&bytes, &dir)));
        let _ = sender.send(outcome.err().map(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        }));
    });
    let what = match receiver.recv_timeout(Duration::from_secs(HANG_SECONDS)) {
        Ok(None) => return None,
        Ok(Some(message)) => format!("panic: {message}"),
        Err(_) => "hang".to_owned(),
    };
    Some(Failure {
        target: target.name,
        what,
        input: input.to_vec(),
    })
}

/// The committed inputs that once failed `target`.
pub fn regressions(target: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("tests/fuzz/regressions").join(target.name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

/// What a fuzzing run did.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub failures: Vec<Failure>,
}

/// Fuzzes `target` for `budget` (or `max_inputs`, whichever ends first) from `seed`,
/// stopping at the first failure. Panics inside targets are silenced while it runs.
pub fn fuzz(target: &Target, seed: u64, budget: Duration, max_inputs: u64) -> Report {
    let scratch = std::env::temp_dir().join(format!(
        "temper-fuzz-{}-{}-{seed}",
        target.name,
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&scratch);
    let seeds = (target.seeds)();
    let mut rng = SplitMix64::new(seed);
    let mut report = Report::default();
    let started = Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    while started.elapsed() < budget && report.inputs < max_inputs {
        let base = &seeds[rng.below(seeds.len() as u64) as usize];
        let other = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(base, other, &mut rng);
        report.inputs += 1;
        if let Some(failure) = check(target, &input, &scratch) {
            report.failures.push(failure);
            break;
        }
    }
    std::panic::set_hook(hook);
    let _ = std::fs::remove_dir_all(&scratch);
    report
}

/// Writes a failing input to `tests/fuzz/crashes/<target>/<hash>` and returns the path.
pub fn save(failure: &Failure) -> std::io::Result<PathBuf> {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&failure.input, &mut hasher);
    let hash = std::hash::Hasher::finish(&hasher);
    let dir = root().join("tests/fuzz/crashes").join(failure.target);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{hash:016x}"));
    std::fs::write(&path, &failure.input)?;
    Ok(path)
}
