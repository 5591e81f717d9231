//! Arrow values -> JSON values, for rows of Parquet and Arrow IPC files.
//!
//! Strings, integers, floats, booleans, nulls, lists and structs (HF conversations are
//! `list<struct<role, content>>`); dictionaries decode to their values. HF `ClassLabel` columns
//! are plain integers in arrow and stay integers.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::Array;
use arrow_schema::DataType;
use serde_json::Value;

/// An f32 as the JSON number it prints as (0.1f32 -> 0.1, not 0.10000000149011612).
fn f32_value(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn f64_value(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The value at row `i` of `array`; `Err` names an unsupported arrow type.
pub fn value_at(array: &dyn Array, i: usize) -> Result<Value, String> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => f32_value(array.as_primitive::<Float16Type>().value(i).to_f32()),
        DataType::Float32 => f32_value(array.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => f64_value(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_string()),
        DataType::List(_) => list_value(array.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list_value(array.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(_, _) => list_value(array.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut m = serde_json::Map::new();
            for (k, f) in fields.iter().enumerate() {
                m.insert(f.name().clone(), value_at(s.column(k).as_ref(), i)?);
            }
            Value::Object(m)
        }
        DataType::Dictionary(_, _) => {
            let d = array
                .as_any_dictionary_opt()
                .ok_or_else(|| format!("unsupported arrow type {}", array.data_type()))?;
            let key = d.normalized_keys()[i];
            value_at(d.values().as_ref(), key)?
        }
        other => return Err(format!("unsupported arrow type {other}")),
    })
}

fn list_value(items: &dyn Array) -> Result<Value, String> {
    (0..items.len())
        .map(|j| value_at(items, j))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
