//! The `temper` binary as a user runs it: real files in, exit status and output checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use temper_tests::{asset, root};

fn gpt2_tokenizer() -> PathBuf {
    asset("gpt2/tokenizer.json")
}

/// The JSON a successful command printed.
fn json_output(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn temper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_temper"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

/// Every file of `tests/fixtures/bad_input/` is one kind of bad input; its `.expected` file
/// holds the exact message. The CLI must exit with status 1 and that `FILE:LINE:` message.
#[test]
fn bad_input_exits_1_with_file_line_and_reason() {
    let dir = root().join("tests/fixtures/bad_input");
    let tokenizer = gpt2_tokenizer();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "expected") {
            continue;
        }
        let relative = format!(
            "tests/fixtures/bad_input/{}",
            path.file_name().unwrap().to_str().unwrap()
        );
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        // gemma refuses system messages, which template_rejects.jsonl has.
        let output = temper(&[
            "data",
            "inspect",
            &relative,
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--template",
            "gemma",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{relative}: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "{relative} panicked: {stderr}"
        );
        assert_eq!(
            stderr.strip_prefix("error: ").unwrap_or(&stderr),
            expected,
            "{relative}"
        );
        if !expected.starts_with(&format!("{relative}:")) {
            panic!("{relative}: the message must start with the file name: {expected}");
        }
        checked += 1;
    }
    assert!(checked >= 14, "{checked}");
}

#[test]
fn skipped_records_are_counted_by_reason() {
    let dir = std::env::temp_dir().join(format!("temper-cli-skip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mixed.jsonl");
    std::fs::write(
        &file,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \"\"}\nnot json\n{\"instruction\": \"d\", \"output\": \"e\"}\n",
    )
    .unwrap();
    let output = temper(&[
        "data",
        "inspect",
        file.to_str().unwrap(),
        "--tokenizer",
        gpt2_tokenizer().to_str().unwrap(),
        "--skip-errors",
        "--json",
    ]);
    let json = json_output(&output);
    assert_eq!(json["report"]["examples"], 2);
    assert_eq!(
        json["report"]["skipped"],
        serde_json::json!({"invalid_json": 1, "empty_response": 1})
    );
    assert_eq!(json["report"]["empty_outputs"], 1);
    assert_eq!(
        json["examples"][0]["trained_text"],
        serde_json::json!(["b<|endoftext|>"])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fuel stops templates that run too long; the allocator's budget stops those that build
/// text without bound, such as a string doubled in a loop (a terabyte by the end).
#[test]
fn a_template_that_builds_text_without_bound_exits_1_naming_it() {
    let dir = std::env::temp_dir().join(format!("temper-cli-bomb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("bomb.jinja");
    std::fs::write(
        &template,
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    )
    .unwrap();
    let messages = dir.join("chat.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "Hi"}]"#).unwrap();
    let output = temper(&[
        "template",
        "render",
        "--template",
        template.to_str().unwrap(),
        "--messages",
        messages.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bomb.jinja: one render took more than 1024 MiB of memory"),
        "{stderr}"
    );
}

#[test]
fn template_render_json_gives_byte_spans() {
    let dir = std::env::temp_dir().join(format!("temper-cli-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chat.json");
    std::fs::write(
        &file,
        r#"[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Héllo!"}]"#,
    )
    .unwrap();
    let output = temper(&[
        "template",
        "render",
        "--template",
        "chatml",
        "--messages",
        file.to_str().unwrap(),
        "--json",
    ]);
    let json = json_output(&output);
    let text = json["text"].as_str().unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHéllo!<|im_end|>\n"
    );
    let trained: Vec<&str> = json["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["trained"] == true)
        .map(|s| &text[s["start"].as_u64().unwrap() as usize..s["end"].as_u64().unwrap() as usize])
        .collect();
    assert_eq!(trained, ["Héllo!<|im_end|>\n"]);
    assert_eq!(json["spans"][0]["role"], "user");

    let output = temper(&[
        "template",
        "render",
        "--template",
        "no-such-template",
        "--messages",
        file.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("unknown chat template `no-such-template`")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prepare_writes_rows_and_reports_throughput() {
    let dir = std::env::temp_dir().join(format!("temper-cli-prepare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rows = dir.join("rows.jsonl");
    let output = temper(&[
        "data",
        "prepare",
        "datasets/tasks/test.alpaca.jsonl",
        "--tokenizer",
        gpt2_tokenizer().to_str().unwrap(),
        "--max-length",
        "256",
        "--packing",
        "--json",
        "--output",
        rows.to_str().unwrap(),
    ]);
    let stats = json_output(&output);
    assert_eq!(stats["examples"], 200);
    let written = std::fs::read_to_string(&rows).unwrap();
    assert_eq!(
        written.lines().count() as u64,
        stats["packs"].as_u64().unwrap()
    );
    assert!(!temper_store::partial_path(&rows).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn smollm2() -> PathBuf {
    asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn generate_streams_an_answer_from_a_gguf_chat_model() {
    let output = temper(&[
        "generate",
        "--model",
        smollm2().to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-new-tokens",
        "20",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "The capital of France is Paris.");
    assert!(
        stderr.contains("stopped by end-of-sequence token"),
        "{stderr}"
    );
}

#[test]
fn score_reports_logprobs_nll_and_perplexity() {
    let output = temper(&[
        "score",
        "--model",
        smollm2().to_str().unwrap(),
        "--text",
        "The capital of France is Paris.",
        "--json",
    ]);
    let json = json_output(&output);
    let tokens = json["tokens"].as_array().unwrap();
    let logprobs: Vec<f64> = json["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(logprobs.len() + 1, tokens.len());
    assert!(logprobs.iter().all(|&l| l < 0.0));
    let nll = json["nll"].as_f64().unwrap();
    assert!((nll + logprobs.iter().sum::<f64>()).abs() < 1e-9);
    assert!(
        (json["perplexity"].as_f64().unwrap() - (nll / logprobs.len() as f64).exp()).abs() < 1e-9
    );

    let ids: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let by_ids = temper(&[
        "score",
        "--model",
        smollm2().to_str().unwrap(),
        "--tokens",
        &ids.join(","),
        "--json",
    ]);
    let by_ids: serde_json::Value = serde_json::from_slice(&by_ids.stdout).unwrap();
    assert_eq!(
        by_ids["nll"], json["nll"],
        "--tokens scores the same ids the same way"
    );

    let bad = temper(&[
        "score",
        "--model",
        smollm2().to_str().unwrap(),
        "--tokens",
        "1,99999999",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("token id 99999999 is outside the vocabulary")
    );
}

#[test]
fn a_missing_or_foreign_model_is_a_clear_error() {
    let output = temper(&["score", "--model", "nope/model.gguf", "--text", "x"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("error: nope/model.gguf: No such file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = temper(&["score", "--model", "README.md", "--text", "x"]);
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("expected a model directory or a .gguf file")
    );
}

#[test]
fn token_ids_need_no_tokenizer() {
    // A directory as `save_pretrained` of a model alone writes it: no tokenizer files.
    let model = root().join("crates/temper-models/tests/fixtures/llama_gqa");
    assert!(!model.join("tokenizer.json").exists());
    let model = model.to_str().unwrap();
    let scored = json_output(&temper(&[
        "score", "--model", model, "--tokens", "1,17,42", "--json",
    ]));
    assert_eq!(scored["logprobs"].as_array().map(Vec::len), Some(2));
    // Text does need one, and the error says so.
    let output = temper(&["score", "--model", model, "--text", "hello"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("the model directory has no tokenizer.json"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The estimate of what a step holds is checked against the memory left (capped here with
/// `TEMPER_MEMORY_LIMIT`) before anything is written.
#[test]
fn a_step_that_cannot_fit_in_memory_is_refused_with_its_estimate() {
    let dir = std::env::temp_dir().join(format!("temper-cli-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = tiny_train(&dir)
        .env("TEMPER_MEMORY_LIMIT", "64M")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a training step needs about ")
            && stderr.contains(" (weights ")
            && stderr.contains("and this machine has 0.07 GB left"),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing was written");
}

#[test]
fn prepare_never_writes_over_its_input_or_an_existing_file_unasked() {
    let dir = std::env::temp_dir().join(format!("temper-cli-own-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("train.jsonl");
    std::fs::copy(root().join("datasets/tasks/test.alpaca.jsonl"), &input).unwrap();
    let original = std::fs::read(&input).unwrap();
    let tokenizer = gpt2_tokenizer();
    let prepare = |output: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "data",
            "prepare",
            input.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend(extra);
        temper(&args)
    };
    let refused = prepare(&input, &["--overwrite"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("which this command reads"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read(&input).unwrap(), original);

    let rows = dir.join("rows.jsonl");
    std::fs::write(&rows, "keep me").unwrap();
    let refused = prepare(&rows, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read_to_string(&rows).unwrap(), "keep me");
    assert!(prepare(&rows, &["--overwrite"]).status.success());
    assert_ne!(std::fs::read_to_string(&rows).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_writes_every_example_and_a_summary_and_never_overwrites_them() {
    let dir = std::env::temp_dir().join(format!("temper-cli-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("before");
    let model = smollm2();
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "datasets/tasks/test.messages.jsonl",
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--samples",
        "2",
        "--json",
        "--output",
        out.to_str().unwrap(),
    ];
    let summary = json_output(&temper(&args));
    assert_eq!(summary["examples"], 3);
    assert_eq!(summary["samples_per_example"], 2);
    assert_eq!(summary["plain_asked"], 3, "asked without the template too");
    assert!(summary["loss"].as_f64().unwrap() > 0.0);
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["reference"], "180");
    assert_eq!(lines[0]["samples"].as_array().unwrap().len(), 2);
    assert!(lines[0]["metrics"]["format"]["runaway"].is_boolean());
    let markdown = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(markdown.contains("| exact match |"), "{markdown}");

    // A second run into the same directory is refused and changes nothing.
    let again = temper(&args);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("results.jsonl"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        results
    );

    // The same evaluation compared with itself: nothing changed.
    let compared = temper(&[
        "eval",
        "--compare",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(compared.status.success());
    assert!(String::from_utf8_lossy(&compared.stdout).starts_with("0 example(s) changed"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A port for a multi-node run's orchestrator on localhost, whose next two (the nodes' data
/// services) are free as well.
fn free_ports() -> u16 {
    // The tests of this file run at once: none gets a port another one was given.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 65000
            && !given.iter().any(|&other| other.abs_diff(port) <= 2)
            && (1..=2).all(|k| std::net::TcpListener::bind(("127.0.0.1", port + k)).is_ok())
        {
            given.push(port);
            return port;
        }
    }
}

/// `temper train` of the tiny recipe into `dir`, without dropout (data-parallel ranks draw
/// their own) and without the merged export.
fn tiny_train(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_temper"));
    command.current_dir(root()).args([
        "train",
        "--config",
        "configs/tiny-smoke.toml",
        "--set",
        &format!("train.output_dir={}", dir.display()),
        "--set",
        &format!("model.tokenizer={}", gpt2_tokenizer().display()),
        "--set",
        "lora.dropout=0.0",
        "--set",
        "export.merged=false",
    ]);
    command
}

/// [`tiny_train`] as node `node` of 2 (one rank each) at `port`.
fn node(dir: &std::path::Path, node: usize, port: u16, extra: &[&str]) -> Command {
    let mut command = tiny_train(dir);
    command.args([
        "--world-size",
        "2",
        "--nodes",
        "2",
        "--node-rank",
        &node.to_string(),
        "--coordinator",
        &format!("127.0.0.1:{port}"),
    ]);
    command.args(extra);
    command
}

fn spawn(mut command: Command) -> std::process::Child {
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn train_losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["kind"] == "train")
        .map(|line| line["loss"].as_f64().unwrap())
        .collect()
}

/// Two processes on localhost, joined through node 0's orchestrator, train as one process
/// of one rank on the same rows (4 micro-batches a step there, 2 on each node here); node 1
/// writes nothing.
#[test]
fn two_processes_train_as_one() {
    let base = std::env::temp_dir().join(format!("temper-cli-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (one, two, other) = (base.join("one"), base.join("two"), base.join("node1"));
    let output = tiny_train(&one)
        .args(["--set", "train.gradient_accumulation_steps=4"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let port = free_ports();
    let first = spawn(node(&two, 0, port, &[]));
    let second = spawn(node(&other, 1, port, &[]));
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    for output in [&first, &second] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (expected, ours) = (train_losses(&one), train_losses(&two));
    assert_eq!(ours.len(), expected.len());
    for (step, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "step {}: {a} vs {b}",
            step + 1
        );
    }
    assert!(String::from_utf8_lossy(&second.stdout).contains("node 1: rank 0 on node 0 writes"));
    assert!(!other.exists(), "node 1 wrote nothing");
    let _ = std::fs::remove_dir_all(&base);
}

/// Killing one node mid-run stops the other within the collective timeout, naming the rank
/// it lost, and leaves only whole checkpoints.
#[test]
fn a_killed_node_stops_the_other_naming_its_rank() {
    let base = std::env::temp_dir().join(format!("temper-cli-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (dir, other) = (base.join("run"), base.join("node1"));
    let extra = [
        "--set",
        "train.max_steps=1000",
        "--set",
        "train.save_steps=3",
        "--set",
        "distributed.timeout_seconds=20",
    ];
    let port = free_ports();
    let mut first = spawn(node(&dir, 0, port, &extra));
    let mut second = spawn(node(&other, 1, port, &extra));
    let started = std::time::Instant::now();
    while std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map_or(true, |text| text.lines().count() < 4)
    {
        let ended = first.try_wait().unwrap().is_some() || second.try_wait().unwrap().is_some();
        if ended || started.elapsed().as_secs() >= 300 {
            let _ = (first.kill(), second.kill());
            let (first, second) = (first.wait_with_output(), second.wait_with_output());
            panic!(
                "the nodes did not start training:\n{}\n{}",
                String::from_utf8_lossy(&first.unwrap().stderr),
                String::from_utf8_lossy(&second.unwrap().stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    second.kill().unwrap();
    let _ = second.wait();
    let killed = std::time::Instant::now();
    let output = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        killed.elapsed().as_secs() < 40,
        "node 0 stopped after {:?}",
        killed.elapsed()
    );
    assert!(stderr.contains("rank 1 (node 1)"), "{stderr}");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            assert!(name.starts_with("checkpoint-"), "{name} left behind");
            assert!(path.join("trainer_state.json").is_file(), "{name} is whole");
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
