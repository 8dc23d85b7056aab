//! Every dataset format reads the same records as its JSON lines equivalent, written by
//! `tests/fixtures/formats/make_formats.py` (pyarrow and Hugging Face `datasets`).

use std::path::{Path, PathBuf};

use temper_data::records::{ReadOutcome, Record};
use temper_data::{
    DataConfig, DatasetSpec, Error, FieldNames, OnError, Position, Problem, ReadOptions,
    pipeline::read_dataset, read_file,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}

fn read(name: &str) -> ReadOutcome {
    read_file(&fixture(name), &ReadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_split(name: &str, split: Option<&str>) -> Vec<Record> {
    let spec = DatasetSpec::new(fixture(name), split.map(str::to_owned));
    read_dataset(&spec, &DataConfig::default())
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .records
}

/// Same formats and samples, in the same order.
fn assert_same_records(name: &str, got: &[Record], expected: &[Record]) {
    assert_eq!(got.len(), expected.len(), "{name}: record count");
    for (got, expected) in got.iter().zip(expected) {
        assert_eq!(got.format, expected.format, "{name} {}", got.at);
        assert_eq!(got.sample, expected.sample, "{name} {}", got.at);
    }
}

#[test]
fn every_format_reads_the_records_of_its_json_lines_file() {
    for (reference, others) in [
        (
            "alpaca.jsonl",
            &[
                "alpaca.parquet",
                "alpaca.zstd.parquet",
                "alpaca.csv",
                "alpaca.tsv",
                "alpaca.jsonl.gz",
                "alpaca.csv.zst",
            ][..],
        ),
        (
            "messages.jsonl",
            &["messages.parquet", "messages.jsonl.zst"][..],
        ),
        ("sharegpt.jsonl", &["sharegpt.parquet"][..]),
    ] {
        let expected = read(reference).records;
        assert!(expected.len() >= 2, "{reference}");
        for name in others {
            let got = read(name).records;
            assert_same_records(name, &got, &expected);
            let tabular = !name.contains(".jsonl");
            for (index, record) in got.iter().enumerate() {
                let expected_position = if tabular {
                    Position::Row(index + 1)
                } else {
                    expected[index].at.position
                };
                assert_eq!(record.at.position, expected_position, "{name}");
            }
        }
    }
}

#[test]
fn save_to_disk_directories_read_like_their_json_lines() {
    let expected = read("messages.jsonl").records;
    assert_same_records(
        "messages_saved",
        &read_split("messages_saved", None),
        &expected,
    );

    let alpaca = read("alpaca.jsonl").records;
    let train = read_split("alpaca_dict", None);
    assert_same_records("alpaca_dict train", &train, &alpaca[..3]);
    assert!(
        train[0]
            .at
            .file
            .ends_with("alpaca_dict/train/data-00000-of-00001.arrow")
    );
    assert_same_records(
        "alpaca_dict test",
        &read_split("alpaca_dict", Some("test")),
        &alpaca[3..],
    );
    let error = read_dataset(
        &DatasetSpec::new(fixture("alpaca_dict"), Some("validation".into())),
        &DataConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("has no split `validation`: it has train, test"),
        "{error}"
    );
}

#[test]
fn repository_layouts_and_globs_pick_a_split_of_shards() {
    let alpaca = read("alpaca.jsonl").records;
    let train = read_split("alpaca_repo", None);
    assert_same_records("alpaca_repo train", &train, &alpaca[..4]);
    assert_eq!(
        train[2].at.position,
        Position::Row(1),
        "rows count per shard"
    );
    assert!(train[2].at.file.ends_with("train-00001-of-00002.parquet"));
    assert_same_records(
        "alpaca_repo test",
        &read_split("alpaca_repo", Some("test")),
        &alpaca[4..],
    );
    let glob = fixture("alpaca_repo/data/train-*.parquet");
    assert_same_records(
        "glob",
        &read_split(glob.to_str().unwrap(), None),
        &alpaca[..4],
    );

    let error = read_dataset(
        &DatasetSpec::new(fixture("alpaca_repo"), Some("dev".into())),
        &DataConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("has no split `dev`: it has test, train"),
        "{error}"
    );
    let error = read_dataset(
        &DatasetSpec::new(fixture("alpaca.jsonl"), Some("train".into())),
        &DataConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("a split picks files of a dataset directory"),
        "{error}"
    );
    let error = read_dataset(
        &DatasetSpec::new(fixture("nothing-*.parquet"), None),
        &DataConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("nothing-*.parquet: matches no files"),
        "{error}"
    );
}

#[test]
fn broken_parquet_files_are_errors_naming_the_file() {
    for name in ["truncated.parquet", "corrupt.parquet"] {
        let error = read_file(&fixture(name), &ReadOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{name} read without an error"));
        assert!(matches!(error, Error::File { .. }), "{name}: {error:?}");
        assert!(error.to_string().contains(name), "{error}");
        // Skipping bad records does not skip a broken file.
        let options = ReadOptions {
            on_error: OnError::Skip,
            ..ReadOptions::default()
        };
        assert!(read_file(&fixture(name), &options).is_err(), "{name}");
    }
}

#[test]
fn bad_rows_name_file_and_row_and_can_be_skipped() {
    // A Parquet column of the wrong type.
    let mut fields = FieldNames::default();
    fields.set("output", "id").unwrap();
    let options = ReadOptions {
        fields,
        ..ReadOptions::default()
    };
    let error = read_file(&fixture("alpaca.parquet"), &options).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("alpaca.parquet:row 1: `id` must be a string, found a number"),
        "{error}"
    );

    // CSV: a row with a field too many and one with an empty output; the first data row
    // holds a quoted newline, so rows are not lines.
    let dir = std::env::temp_dir().join(format!("temper-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.csv");
    std::fs::write(
        &path,
        "instruction,output\nok,\"yes\nreally\"\nextra,a,b\nempty,\nfine,sure\n",
    )
    .unwrap();
    let error = read_file(&path, &ReadOptions::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("bad.csv:row 2: has 3 fields; the header row has 2"),
        "{error}"
    );
    let options = ReadOptions {
        on_error: OnError::Skip,
        ..ReadOptions::default()
    };
    let outcome = read_file(&path, &options).unwrap();
    assert_eq!(outcome.records.len(), 2);
    assert_eq!(outcome.records[1].at.position, Position::Row(4));
    assert_eq!(outcome.skipped[&Problem::WrongType], 1);
    assert_eq!(outcome.skipped[&Problem::EmptyResponse], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
