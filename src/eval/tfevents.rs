//! TensorBoard event files: a writer for scalar summaries and a reader (for tests and
//! checks) with no TensorFlow dependency.
//!
//! A `tfevents` file is a sequence of TFRecords: `u64` length (little-endian), the masked
//! CRC32C of those 8 bytes, the data, the masked CRC32C of the data. Each record is an
//! `Event` protobuf: `wall_time` (double, field 1), `step` (int64, field 2), `file_version`
//! (string, field 3; "brain.Event:2" in the first record) or `summary` (field 5) =
//! `Summary { repeated Value value = 1 { string tag = 1; float simple_value = 2 } }`.
//! TensorBoard reads every file in a dir whose name holds `tfevents`.

use std::io::{self, Write};
use std::path::Path;

/// The event file a train step writes beside `metrics.jsonl` (a fixed name, so a resumed
/// run rewrites it rather than leaving a second file with the same steps).
pub const FILE_NAME: &str = "events.out.tfevents.recipe";

const FILE_VERSION: &str = "brain.Event:2";

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The CRC as TFRecord stores it (rotated and offset, so a CRC of CRCs stays useful).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field key: number << 3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, field << 3 | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// One `Event` protobuf: wall time and step, plus a file version or scalar values.
fn encode_event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    put_key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut e, 2, 0);
    put_varint(&mut e, step as u64);
    if let Some(v) = file_version {
        put_bytes(&mut e, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, x) in scalars {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_key(&mut value, 2, 5);
            value.extend_from_slice(&x.to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        put_bytes(&mut e, 5, &summary);
    }
    e
}

/// TFRecord framing of one record.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    r
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes scalar events, one flushed record at a time (a killed run keeps what it logged).
pub struct EventWriter {
    f: std::fs::File,
}

impl EventWriter {
    /// Creates (or truncates) `path` and writes the file-version record.
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut w = EventWriter {
            f: std::fs::File::create(path)?,
        };
        w.record(&encode_event(now_secs(), 0, Some(FILE_VERSION), &[]))?;
        Ok(w)
    }

    /// One event holding `scalars` (tag, value) at `step`, stamped with the current time.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> io::Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let vals: Vec<(&str, f32)> = scalars.iter().map(|&(t, x)| (t, x as f32)).collect();
        self.record(&encode_event(now_secs(), step as i64, None, &vals))
    }

    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        self.f.write_all(&frame(data))?;
        self.f.flush()
    }
}

/// One decoded event (see [`read_events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// Summary values (tag, simple_value) in file order.
    pub scalars: Vec<(String, f32)>,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A protobuf field: its number and its payload (a varint, 8 or 4 raw bytes, or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed(&'a [u8]),
    Bytes(&'a [u8]),
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The fields of one protobuf message, or None when it is malformed.
fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = get_varint(b, &mut pos)?;
        let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
            let s = b.get(*pos..pos.checked_add(n)?)?;
            *pos += n;
            Some(s)
        };
        let f = match key & 7 {
            0 => Field::Varint(get_varint(b, &mut pos)?),
            1 => Field::Fixed(take(&mut pos, 8)?),
            5 => Field::Fixed(take(&mut pos, 4)?),
            2 => {
                let n = usize::try_from(get_varint(b, &mut pos)?).ok()?;
                Field::Bytes(take(&mut pos, n)?)
            }
            _ => return None,
        };
        out.push((key >> 3, f));
    }
    Some(out)
}

fn decode_event(b: &[u8]) -> Option<Event> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Fixed(x)) => e.wall_time = f64::from_le_bytes(x.try_into().ok()?),
            (2, Field::Varint(x)) => e.step = x as i64,
            (3, Field::Bytes(s)) => e.file_version = Some(String::from_utf8(s.to_vec()).ok()?),
            (5, Field::Bytes(summary)) => {
                for (n, f) in fields(summary)? {
                    let (1, Field::Bytes(value)) = (n, f) else {
                        continue;
                    };
                    let (mut tag, mut x) = (String::new(), None);
                    for (n, f) in fields(value)? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => tag = String::from_utf8(s.to_vec()).ok()?,
                            (2, Field::Fixed(v)) => {
                                x = Some(f32::from_le_bytes(v.try_into().ok()?))
                            }
                            _ => {}
                        }
                    }
                    if let Some(x) = x {
                        e.scalars.push((tag, x));
                    }
                }
            }
            _ => {}
        }
    }
    Some(e)
}

/// Reads every record of an event file, checking both CRCs of each; an error names the
/// record (0-based) and what is wrong.
pub fn read_events(path: &Path) -> io::Result<Vec<Event>> {
    let b = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let k = out.len();
        let head = b
            .get(pos..pos + 12)
            .ok_or_else(|| bad(format!("record {k}: truncated header")))?;
        let (len, crc) = head.split_at(8);
        if masked_crc32c(len) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err(bad(format!("record {k}: length CRC mismatch")));
        }
        let n = usize::try_from(u64::from_le_bytes(len.try_into().unwrap_or_default()))
            .map_err(|_| bad(format!("record {k}: length too large")))?;
        let data = pos
            .checked_add(12 + n + 4)
            .and_then(|end| b.get(pos + 12..end))
            .ok_or_else(|| bad(format!("record {k}: truncated data")))?;
        let (data, crc) = data.split_at(n);
        if masked_crc32c(data) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err(bad(format!("record {k}: data CRC mismatch")));
        }
        out.push(decode_event(data).ok_or_else(|| bad(format!("record {k}: not an Event")))?);
        pos += 12 + n + 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 / the usual "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn written_events_read_back_and_a_flipped_byte_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(FILE_NAME);
        let mut w = EventWriter::create(&p).unwrap();
        w.scalars(3, &[("train/loss", 2.5), ("train/lr", 1e-4)])
            .unwrap();
        w.scalars(300, &[("eval/loss", 1.25)]).unwrap();
        let ev = read_events(&p).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(ev[1].step, 3);
        assert_eq!(
            ev[1].scalars,
            [
                ("train/loss".to_string(), 2.5),
                ("train/lr".to_string(), 1e-4f32)
            ]
        );
        assert_eq!((ev[2].step, ev[2].scalars[0].1), (300, 1.25));
        assert!(ev[2].wall_time > 1.6e9);
        // First record: 12-byte header, then the Event starts with field 1 (0x09).
        let mut b = std::fs::read(&p).unwrap();
        assert_eq!(b[12], 0x09);
        b[13] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            read_events(&p).unwrap_err().to_string(),
            "record 0: data CRC mismatch"
        );
        b[13] ^= 1;
        b[0] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            read_events(&p).unwrap_err().to_string(),
            "record 0: length CRC mismatch"
        );
        b[0] ^= 1;
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        assert_eq!(
            read_events(&p).unwrap_err().to_string(),
            "record 2: truncated data"
        );
    }
}
