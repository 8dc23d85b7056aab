//! Parquet and Arrow IPC files (what Hugging Face dataset repositories and `save_to_disk`
//! hold): each row becomes the JSON object `pyarrow`'s `to_pylist` would give, so nested
//! columns (a `messages` list of structs, a `conversations` list) map as JSON keys do.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType, GenericListArray, OffsetSizeTrait, RecordBatch};
use arrow_schema::{ArrowError, DataType};
use serde_json::{Map, Number, Value};

use super::{RawRecord, file_error};
use crate::error::{Position, Result};

/// Rows per batch read from a file.
const BATCH_ROWS: usize = 1024;

pub(super) type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>;

/// The record batches of a Parquet file.
pub(super) fn parquet_batches<R>(reader: R, file: &Arc<Path>) -> Result<Batches>
where
    R: parquet::file::reader::ChunkReader + 'static,
{
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|error| file_error(file, format!("not a readable Parquet file: {error}")))?;
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|error| file_error(file, format!("not a readable Parquet file: {error}")))?;
    Ok(Box::new(reader))
}

/// The record batches of an Arrow IPC file or stream (`save_to_disk` writes streams).
pub(super) fn ipc_batches(bytes: Vec<u8>, file: &Arc<Path>) -> Result<Batches> {
    let unreadable =
        |error: ArrowError| file_error(file, format!("not a readable Arrow IPC file: {error}"));
    if bytes.starts_with(b"ARROW1") {
        let reader = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(unreadable)?;
        Ok(Box::new(reader))
    } else {
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(unreadable)?;
        Ok(Box::new(reader))
    }
}

/// The rows of record batches as JSON objects, batch by batch.
pub(super) struct BatchRows {
    batches: Batches,
    rows: std::vec::IntoIter<Value>,
    file: Arc<Path>,
    row: usize,
    done: bool,
}

impl BatchRows {
    pub(super) fn new(batches: Batches, file: &Arc<Path>) -> Self {
        BatchRows {
            batches,
            rows: Vec::new().into_iter(),
            file: Arc::clone(file),
            row: 0,
            done: false,
        }
    }
}

impl Iterator for BatchRows {
    type Item = RawRecord;

    fn next(&mut self) -> Option<RawRecord> {
        loop {
            if let Some(value) = self.rows.next() {
                self.row += 1;
                return Some(Ok((Position::Row(self.row), value)));
            }
            if self.done {
                return None;
            }
            match self.batches.next() {
                None => self.done = true,
                Some(Ok(batch)) => match batch_rows(&batch) {
                    Ok(rows) => self.rows = rows.into_iter(),
                    Err(error) => {
                        self.done = true;
                        return Some(Err(file_error(
                            &self.file,
                            format!("cannot convert row {}: {error}", self.row + 1),
                        )));
                    }
                },
                Some(Err(error)) => {
                    self.done = true;
                    return Some(Err(file_error(
                        &self.file,
                        format!(
                            "cannot read past row {} (is the file truncated or corrupt?): {error}",
                            self.row
                        ),
                    )));
                }
            }
        }
    }
}

/// One JSON object per row of `batch`.
fn batch_rows(batch: &RecordBatch) -> std::result::Result<Vec<Value>, ArrowError> {
    let mut columns = batch
        .columns()
        .iter()
        .map(|column| json_values(column.as_ref()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let names: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    Ok((0..batch.num_rows())
        .map(|row| {
            let object: Map<String, Value> = names
                .iter()
                .zip(&mut columns)
                .map(|(name, values)| ((*name).clone(), std::mem::take(&mut values[row])))
                .collect();
            Value::Object(object)
        })
        .collect())
}

/// The JSON value of each element of `array` (null where the array is null). Types JSON has
/// no equivalent for (binary, dates, decimals, ...) become the strings Arrow displays them as.
fn json_values(array: &dyn Array) -> std::result::Result<Vec<Value>, ArrowError> {
    let values = match array.data_type() {
        DataType::Null => vec![Value::Null; array.len()],
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Int8 => integers::<Int8Type>(array),
        DataType::Int16 => integers::<Int16Type>(array),
        DataType::Int32 => integers::<Int32Type>(array),
        DataType::Int64 => integers::<Int64Type>(array),
        DataType::UInt8 => integers::<UInt8Type>(array),
        DataType::UInt16 => integers::<UInt16Type>(array),
        DataType::UInt32 => integers::<UInt32Type>(array),
        DataType::UInt64 => integers::<UInt64Type>(array),
        DataType::Float32 => floats::<Float32Type>(array),
        DataType::Float64 => floats::<Float64Type>(array),
        DataType::Utf8 => strings(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(array.as_string_view().iter()),
        DataType::List(_) => lists(array.as_list::<i32>())?,
        DataType::LargeList(_) => lists(array.as_list::<i64>())?,
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            let mut items = json_values(list.values().as_ref())?;
            let width = list.value_length() as usize;
            (0..list.len())
                .map(|row| {
                    let start = list.value_offset_at(row);
                    if list.is_null(row) {
                        Value::Null
                    } else {
                        Value::Array(take(&mut items[start..start + width]))
                    }
                })
                .collect()
        }
        DataType::Struct(fields) => {
            let structs = array.as_struct();
            let mut columns = structs
                .columns()
                .iter()
                .map(|column| json_values(column.as_ref()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            (0..structs.len())
                .map(|row| {
                    if structs.is_null(row) {
                        return Value::Null;
                    }
                    let object: Map<String, Value> = fields
                        .iter()
                        .zip(&mut columns)
                        .map(|(field, values)| {
                            (field.name().clone(), std::mem::take(&mut values[row]))
                        })
                        .collect();
                    Value::Object(object)
                })
                .collect()
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            let keys = json_values(map.keys().as_ref())?;
            let mut values = json_values(map.values().as_ref())?;
            let offsets = map.value_offsets();
            (0..map.len())
                .map(|row| {
                    if map.is_null(row) {
                        return Value::Null;
                    }
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    let object: Map<String, Value> = (start..end)
                        .map(|i| {
                            let key = match &keys[i] {
                                Value::String(key) => key.clone(),
                                other => other.to_string(),
                            };
                            (key, std::mem::take(&mut values[i]))
                        })
                        .collect();
                    Value::Object(object)
                })
                .collect()
        }
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary();
            let values = json_values(dictionary.values().as_ref())?;
            let keys = dictionary.normalized_keys();
            (0..array.len())
                .map(|row| {
                    if array.is_null(row) {
                        Value::Null
                    } else {
                        values[keys[row]].clone()
                    }
                })
                .collect()
        }
        _ => {
            let options = arrow_cast::display::FormatOptions::default();
            let formatter = arrow_cast::display::ArrayFormatter::try_new(array, &options)?;
            (0..array.len())
                .map(|row| {
                    if array.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(formatter.value(row).to_string())
                    }
                })
                .collect()
        }
    };
    Ok(values)
}

fn take(values: &mut [Value]) -> Vec<Value> {
    values.iter_mut().map(std::mem::take).collect()
}

fn integers<T>(array: &dyn Array) -> Vec<Value>
where
    T: ArrowPrimitiveType,
    T::Native: Into<Number>,
{
    array
        .as_primitive::<T>()
        .iter()
        .map(|v| v.map_or(Value::Null, |v| Value::Number(v.into())))
        .collect()
}

fn floats<T>(array: &dyn Array) -> Vec<Value>
where
    T: ArrowPrimitiveType,
    T::Native: Into<f64>,
{
    array
        .as_primitive::<T>()
        .iter()
        .map(|v| {
            v.and_then(|v| Number::from_f64(v.into()))
                .map_or(Value::Null, Value::Number)
        })
        .collect()
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    values
        .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_owned())))
        .collect()
}

fn lists<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
) -> std::result::Result<Vec<Value>, ArrowError> {
    let mut items = json_values(list.values().as_ref())?;
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|row| {
            if list.is_null(row) {
                Value::Null
            } else {
                let (start, end) = (offsets[row].as_usize(), offsets[row + 1].as_usize());
                Value::Array(take(&mut items[start..end]))
            }
        })
        .collect())
}
