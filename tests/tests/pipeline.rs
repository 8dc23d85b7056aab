//! The data pipeline end to end with real tokenizers (GPT-2 byte-level BPE and Mistral's
//! SentencePiece BPE, fetched by `cargo xtask assets`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use temper_chat::{ChatTemplate, Conversation, Message, TrainOn};
use temper_data::example::{RenderedExample, render_record, tokenize_rendered};
use temper_data::records::{Record, Sample};
use temper_data::{
    DataConfig, Filter, Format, Location, Pack, Position, PrepareOptions, SpecialTokenNames,
    Tokenizer, collate, prepare, prepare_with,
};
use temper_tests::{asset, root};

/// Where a record written in a test comes from.
fn inline() -> Location {
    Location {
        file: Arc::from(Path::new("inline")),
        position: Position::Line(1),
    }
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(&asset("gpt2/tokenizer.json"), &SpecialTokenNames::default()).unwrap()
}

fn mistral() -> Tokenizer {
    Tokenizer::from_file(
        &asset("mistral/tokenizer.json"),
        &SpecialTokenNames::default(),
    )
    .unwrap()
}

/// The decoded trained tokens of an example, run by run.
fn trained_text(tokenizer: &Tokenizer, ids: &[u32], mask: &[bool]) -> String {
    let trained: Vec<u32> = ids
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(id, _)| *id)
        .collect();
    tokenizer.decode(&trained)
}

#[test]
fn gpt2_tokenizer_from_tiktoken_assets_matches_openai_ids() {
    let tokenizer = gpt2();
    assert_eq!(tokenizer.encode("Hello world!").unwrap().0, [15496, 995, 0]);
    assert_eq!(tokenizer.eos.id, 50256);
    assert_eq!(tokenizer.pad_id, 50256, "GPT-2 has no pad token: EOS pads");
}

#[test]
fn alpaca_trains_exactly_the_output_and_eos() {
    let tokenizer = gpt2();
    let config = DataConfig {
        max_length: 512,
        ..DataConfig::default()
    };
    let prepared = prepare_with(
        &root().join("datasets/tasks/train.alpaca.jsonl").into(),
        Some(&temper_data::load_template("alpaca", &tokenizer).unwrap()),
        &tokenizer,
        &config,
        PrepareOptions {
            keep_records: usize::MAX,
            ..PrepareOptions::default()
        },
    )
    .unwrap();
    assert_eq!(prepared.examples.len(), 2000);
    assert_eq!(prepared.records.len(), 2000);
    for (record, example) in prepared
        .records
        .iter()
        .zip(prepared.examples.iter())
        .take(200)
    {
        let example = example.to_example();
        let Sample::Chat(conversation) = &record.sample else {
            panic!("alpaca records are chats")
        };
        let output = conversation
            .messages
            .last()
            .unwrap()
            .content
            .clone()
            .unwrap();
        assert_eq!(
            trained_text(&tokenizer, &example.input_ids, &example.loss_mask),
            format!("{output}<|endoftext|>")
        );
        // Trained tokens are one contiguous run at the end.
        let first = example.loss_mask.iter().position(|&m| m).unwrap();
        assert!(
            example.loss_mask[first..].iter().all(|&m| m),
            "{}",
            record.at
        );
    }
}

#[test]
fn chat_turns_train_answers_and_end_of_turn_with_one_bos() {
    // Mistral's tokenizer adds <s>, and so does the mistral template: keep one.
    let tokenizer = mistral();
    let template = ChatTemplate::builtin("mistral")
        .unwrap()
        .with_special_tokens(Some("<s>".into()), Some("</s>".into()));
    let conversation = Conversation::new(vec![
        Message::user("What is the capital of France?"),
        Message::assistant("The capital of France is Paris."),
        Message::user("And of Italy?"),
        Message::assistant("Rome."),
    ]);
    let record = Record {
        at: inline(),
        format: Format::Messages,
        sample: Sample::Chat(conversation),
    };
    let rendered = render_record(&record, Some(&template), TrainOn::Assistant).unwrap();
    assert!(rendered.text.starts_with("<s> [INST]"));
    let example = tokenize_rendered(&rendered, &tokenizer, 1).unwrap();
    assert_eq!(example.input_ids[0], 1);
    assert_ne!(example.input_ids[1], 1, "BOS appears once");
    let runs: Vec<String> = runs(&example.input_ids, &example.loss_mask)
        .iter()
        .map(|ids| tokenizer.decode(ids))
        .collect();
    assert_eq!(runs, ["The capital of France is Paris.</s>", "Rome.</s>"]);
}

fn runs(ids: &[u32], mask: &[bool]) -> Vec<Vec<u32>> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut previous = false;
    for (id, &m) in ids.iter().zip(mask) {
        if m && !previous {
            runs.push(Vec::new());
        }
        if m {
            runs.last_mut().unwrap().push(*id);
        }
        previous = m;
    }
    runs
}

#[test]
fn chatml_with_a_tokenizer_that_lacks_its_tokens_still_masks_by_bytes() {
    // GPT-2 does not know <|im_end|>: it is split into pieces, and all of them are trained.
    let tokenizer = gpt2();
    let template = ChatTemplate::builtin("chatml").unwrap();
    let conversation =
        Conversation::new(vec![Message::user("Hi"), Message::assistant("Hello there")]);
    let record = Record {
        at: inline(),
        format: Format::Messages,
        sample: Sample::Chat(conversation),
    };
    let example = tokenize_rendered(
        &render_record(&record, Some(&template), TrainOn::Assistant).unwrap(),
        &tokenizer,
        1,
    )
    .unwrap();
    assert_eq!(
        trained_text(&tokenizer, &example.input_ids, &example.loss_mask),
        "Hello there<|im_end|>\n"
    );
}

#[test]
fn text_and_completion_examples_end_with_a_trained_eos() {
    let tokenizer = gpt2();
    let text = RenderedExample {
        text: "plain text".into(),
        trained: std::iter::once(0..10).collect(),
        append_eos: true,
    };
    let example = tokenize_rendered(&text, &tokenizer, 1).unwrap();
    assert_eq!(example.input_ids.last(), Some(&50256));
    assert!(example.loss_mask.iter().all(|&m| m));

    let record = Record {
        at: inline(),
        format: Format::PromptCompletion,
        sample: Sample::Completion {
            prompt: "Q: 2+2?\nA:".into(),
            completion: " 4".into(),
        },
    };
    let example = tokenize_rendered(
        &render_record(&record, None, TrainOn::Assistant).unwrap(),
        &tokenizer,
        1,
    )
    .unwrap();
    assert_eq!(
        trained_text(&tokenizer, &example.input_ids, &example.loss_mask),
        " 4<|endoftext|>"
    );
}

#[test]
fn gpt2_padding_with_eos_keeps_the_trained_eos() {
    let tokenizer = gpt2();
    let config = DataConfig {
        max_length: 512,
        ..DataConfig::default()
    };
    let prepared = prepare(
        &root()
            .join("datasets/sample/sft_chapter.alpaca.jsonl")
            .into(),
        &tokenizer,
        &config,
    )
    .unwrap();
    let rows: Vec<Pack> = (0..4).map(|row| prepared.row(row)).collect();
    let batch = collate(&rows.iter().collect::<Vec<_>>(), tokenizer.pad_id, Some(8));
    for row in 0..batch.batch_size {
        let cells = row * batch.seq_len..(row + 1) * batch.seq_len;
        let last_real = cells
            .clone()
            .rev()
            .find(|&i| batch.segment_ids[i] != 0)
            .unwrap();
        assert_eq!(batch.input_ids[last_real], 50256);
        assert!(
            batch.loss_mask[last_real],
            "the EOS that ends the answer is trained"
        );
        assert!(
            cells
                .filter(|&i| batch.segment_ids[i] == 0)
                .all(|i| !batch.loss_mask[i] && batch.input_ids[i] == 50256)
        );
    }
}

#[test]
fn packed_rows_hold_the_same_examples_as_unpacked_ones() {
    let tokenizer = gpt2();
    let path = root().join("datasets/tasks/train.messages.jsonl");
    let padded = prepare(
        &path.clone().into(),
        &tokenizer,
        &DataConfig {
            max_length: 256,
            template: Some("chatml".into()),
            ..DataConfig::default()
        },
    )
    .unwrap();
    let packed = prepare(
        &path.clone().into(),
        &tokenizer,
        &DataConfig {
            max_length: 256,
            template: Some("chatml".into()),
            packing: true,
            ..DataConfig::default()
        },
    )
    .unwrap();
    assert!(
        packed.rows.len() * 3 < padded.rows.len(),
        "packing saves rows: {} vs {}",
        packed.rows.len(),
        padded.rows.len()
    );
    assert!(
        packed.packing_efficiency() > 0.95,
        "{}",
        packed.packing_efficiency()
    );
    let mut seen = vec![false; padded.examples.len()];
    for row in (0..packed.rows.len()).map(|row| packed.row(row)) {
        assert!(row.len() <= 256);
        for (k, &index) in row.examples.iter().enumerate() {
            let span = row.boundaries[k]..row.boundaries[k + 1];
            assert_eq!(
                row.input_ids[span.clone()],
                padded.examples.get(index).input_ids[..]
            );
            assert_eq!(
                row.loss_mask[span.clone()],
                padded.examples.get(index).to_example().loss_mask[..]
            );
            assert_eq!(
                row.position_ids[span.clone()],
                (0..span.len() as u32).collect::<Vec<_>>()[..]
            );
            seen[index] = true;
        }
    }
    assert!(
        seen.iter().all(|&s| s),
        "every example is packed exactly once"
    );
}

#[test]
fn every_shipped_dataset_prepares() {
    let tokenizer = gpt2();
    for (file, template) in [
        ("datasets/tasks/train.alpaca.jsonl", None),
        ("datasets/tasks/test.messages.jsonl", Some("chatml")),
        ("datasets/sample/sft_chapter.alpaca.json", None),
        ("datasets/sample/sft_chapter.messages.jsonl", Some("zephyr")),
        ("datasets/sample/sharegpt.jsonl", Some("llama3")),
        ("datasets/sample/prompt_completion.jsonl", None),
        ("datasets/sample/text.jsonl", None),
    ] {
        let config = DataConfig {
            template: template.map(str::to_owned),
            max_length: 1024,
            ..DataConfig::default()
        };
        let prepared = prepare(&root().join(file).into(), &tokenizer, &config)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!prepared.examples.is_empty(), "{file}");
        assert!(
            prepared.skipped.is_empty(),
            "{file}: {:?}",
            prepared.skipped
        );
        assert!(prepared.trained_tokens() > 0);
    }
}

/// The fast byte-level BPE encoder must give exactly what `tokenizers` gives: same ids, same
/// offsets, on every shipped dataset (rendered with its template) and on whitespace, quotes
/// and Unicode edge cases.
#[test]
fn fast_path_matches_tokenizers() {
    let tokenizer = gpt2();
    assert!(
        tokenizer.uses_fast_path(),
        "GPT-2's tokenizer.json is plain byte-level BPE"
    );
    let mut texts: Vec<String> = [
        "Hello world!",
        "a  \nb",
        "  leading",
        "trailing  ",
        "\t\t x",
        "x\r\n\r\ny",
        "it's don't I'M we'Ve they'll he'd",
        "'s's''s",
        "12345 678.9 1,000",
        "Ⅻ ² ½ ٣",
        "é e\u{301} naïve café",
        "東京の天気は？ 한국어 Привет",
        "🌧\u{fe0f} 👨\u{200d}👩\u{200d}👧",
        "   \n\n\n   ",
        "<|endoftext|>inside<|endoftext|><|endoftext|> text",
        "a<|endoftext",
        "\u{a0}nbsp\u{2003}em\u{3000}ideo",
        "x\u{0}y\u{7f}z",
        "$$$ ??? !!! ...",
        "tab\tsep\tvalues\n",
        "mixed123abc 123abc abc123",
    ]
    .map(str::to_owned)
    .to_vec();
    for file in [
        "datasets/tasks/train.alpaca.jsonl",
        "datasets/tasks/train.messages.jsonl",
        "datasets/sample/sft_chapter.messages.jsonl",
        "datasets/sample/sharegpt.jsonl",
        "datasets/sample/text.jsonl",
    ] {
        let config = DataConfig {
            template: Some("chatml".into()),
            ..DataConfig::default()
        };
        let read = temper_data::read_file(&root().join(file), &Default::default()).unwrap();
        let template =
            temper_data::pipeline::resolve_template(&config, &tokenizer, &read.records, None)
                .unwrap();
        for record in &read.records {
            texts.push(
                render_record(record, template.as_ref(), TrainOn::Assistant)
                    .unwrap()
                    .text,
            );
        }
    }
    let conversations: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("crates/temper-chat/tests/fixtures/parity/conversations.json"),
        )
        .unwrap(),
    )
    .unwrap();
    collect_strings(&conversations, &mut texts);
    assert!(texts.len() > 4000);
    for text in &texts {
        let fast = tokenizer.encode(text).unwrap();
        let reference = tokenizer.encode_reference(text).unwrap();
        assert_eq!(fast, reference, "{text:?}");
    }
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => out.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[test]
fn quality_filters_drop_and_count_duplicates_empty_outputs_and_long_examples() {
    let dir = std::env::temp_dir().join(format!("temper-filters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("filters.jsonl");
    let long = "word ".repeat(200);
    let records = [
        r#"{"instruction": "Name the quick brown fox that jumps over the lazy dog near the river bank on a sunny morning while the farmer watches from the old wooden fence by the red barn", "output": "Rex"}"#.to_owned(),
        r#"{"instruction": "Name the quick brown fox that jumps over the lazy dog near the river bank on a sunny morning while the farmer watches from the old wooden fence by the red barn", "output": "Rex"}"#.to_owned(),
        r#"{"instruction": "Name the quick brown fox that jumps over the lazy dog near the river bank on a sunny morning while the farmer watches from the old wooden fence by the red barn today", "output": "Rex"}"#.to_owned(),
        r#"{"instruction": "Say nothing", "output": ""}"#.to_owned(),
        format!(r#"{{"instruction": "{long}", "output": "ok"}}"#),
        r#"{"instruction": "Add 2 and 3", "output": "5"}"#.to_owned(),
    ];
    std::fs::write(&path, records.join("\n")).unwrap();
    let spec = path.clone().into();
    let config = DataConfig {
        max_length: 64,
        ..DataConfig::default()
    };
    let error = prepare(&spec, &gpt2(), &config).unwrap_err().to_string();
    assert!(
        error.ends_with("filters.jsonl:4: `output` is empty"),
        "{error}"
    );

    let config = DataConfig {
        drop: vec![
            Filter::Duplicates,
            Filter::NearDuplicates,
            Filter::EmptyOutputs,
            Filter::TooLong,
        ],
        ..config
    };
    let prepared = prepare(&spec, &gpt2(), &config).unwrap();
    let counts: Vec<(&str, usize)> = prepared
        .skipped
        .iter()
        .map(|(problem, count)| (problem.as_str(), *count))
        .collect();
    assert_eq!(
        counts,
        [
            ("empty_response", 1),
            ("too_long", 1),
            ("duplicate", 1),
            ("near_duplicate", 1)
        ]
    );
    assert_eq!(prepared.examples.len(), 2);
    let file = path.display();
    assert_eq!(
        prepared.first_skips[&temper_data::Problem::Duplicate],
        format!("{file}:2: the same text as {file}:1")
    );
    assert!(
        prepared.first_skips[&temper_data::Problem::NearDuplicate]
            .contains("nearly the same text as"),
        "{:?}",
        prepared.first_skips
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prepared_dataset_is_cached_reused_invalidated_and_rebuilt_when_damaged() {
    let tokenizer = gpt2();
    let cache = std::env::temp_dir().join(format!("temper-prepared-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let dataset = root().join("datasets/tasks/train.messages.jsonl").into();
    let config = DataConfig {
        max_length: 128,
        template: Some("chatml".into()),
        packing: true,
        ..DataConfig::default()
    };
    let run = |config: &DataConfig, report: bool| {
        let template = temper_data::template_for(&dataset, config, &tokenizer, None).unwrap();
        prepare_with(
            &dataset,
            template.as_ref(),
            &tokenizer,
            config,
            PrepareOptions {
                cache: Some(&cache),
                report,
                ..PrepareOptions::default()
            },
        )
        .unwrap()
    };
    let rows = |prepared: &temper_data::Prepared| -> Vec<Pack> {
        (0..prepared.rows.len())
            .map(|row| prepared.row(row))
            .collect()
    };
    let first = run(&config, true);
    assert!(!first.from_cache);
    let again = run(&config, true);
    assert!(again.from_cache, "the second run reads the cache");
    assert_eq!(rows(&again), rows(&first));
    assert_eq!(again.report, first.report);
    assert_eq!(again.skipped, first.skipped);
    assert_eq!(again.read, first.read);

    // Any option that changes the data is another entry.
    let longer = DataConfig {
        max_length: 256,
        ..config.clone()
    };
    assert!(!run(&longer, false).from_cache);
    assert!(run(&longer, false).from_cache);

    // A damaged entry (a token array cut short) is prepared again, and saved whole.
    let entries: Vec<_> = std::fs::read_dir(cache.join("prepared"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        let ids = entry.join("ids.u32");
        let bytes = std::fs::read(&ids).unwrap();
        std::fs::write(&ids, &bytes[..bytes.len() - 4]).unwrap();
    }
    let rebuilt = run(&config, true);
    assert!(!rebuilt.from_cache);
    assert_eq!(rows(&rebuilt), rows(&first));
    assert!(run(&config, true).from_cache);
    std::fs::remove_dir_all(&cache).unwrap();
}
