//! PyTorch `.bin` checkpoints (`torch.save` of a state dict, the zip format of torch >= 1.6), read
//! without Python: how THUDM/chatglm-6b and many older models ship (`pytorch_model.bin`, or
//! shards named by `pytorch_model.bin.index.json`).
//!
//! The file is an uncompressed zip: `<root>/data.pkl` is a pickle of the state dict whose
//! tensors point at storages `<root>/data/<key>`, each a stored (not deflated) zip member. The
//! pickle is evaluated by a small stack machine that knows only what a state dict holds:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and the
//! typed storage classes; any other global is refused (nothing is ever executed). Each tensor is
//! then a byte range of the memory-mapped file, as a safetensors tensor is.
//! Refused with a clear error: the pre-1.6 (non-zip) format, compressed members, non-contiguous
//! tensors, big-endian files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::Dtype;

use super::error::{FormatError, Result};
use super::safetensors::{map_file, Tensor, Tensors};

/// The single-file name and the shard index of a `.bin` checkpoint dir.
pub const SINGLE_FILE: &str = "pytorch_model.bin";
pub const INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// Reads every tensor of one `.bin` file (memory-mapped, in the state dict's order).
pub fn read_file(path: &Path) -> Result<Tensors> {
    let map = map_file(path).map_err(|e| FormatError::io(path, e))?;
    let bad = |msg: String| FormatError::format(path, msg);
    if map.starts_with(&[0x80]) {
        return Err(bad(
            "a PyTorch checkpoint in the pre-1.6 (non-zip) format: load it with \
             torch and save it again with torch.save (or as safetensors)"
                .into(),
        ));
    }
    let members = zip_members(&map).map_err(bad)?;
    let pkl = members
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("not a PyTorch checkpoint: no <name>/data.pkl in the zip".into()))?;
    let root = pkl.0.trim_end_matches("data.pkl").to_string();
    if let Some((_, r)) = members
        .iter()
        .find(|(n, _)| *n == format!("{root}byteorder"))
    {
        if &map[r.clone()] != b"little" {
            return Err(bad("a big-endian checkpoint: not supported".into()));
        }
    }
    let storages: HashMap<&str, std::ops::Range<usize>> = members
        .iter()
        .filter_map(|(n, r)| Some((n.strip_prefix(&root)?.strip_prefix("data/")?, r.clone())))
        .collect();
    let refs = unpickle(&map[pkl.1.clone()]).map_err(|e| bad(format!("data.pkl: {e}")))?;
    let mut out = Tensors::new();
    for (name, t) in refs {
        let terr = |msg: String| FormatError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            msg,
        };
        let range = storages
            .get(t.key.as_str())
            .ok_or_else(|| terr(format!("storage {} is not in the file", t.key)))?;
        let esz = t.dtype.bitsize().div_ceil(8);
        let mut want = 1usize;
        for (&n, &s) in t.shape.iter().zip(&t.stride).rev() {
            if n > 1 && s != want {
                return Err(terr(format!(
                    "non-contiguous (shape {:?}, stride {:?}): save it with .contiguous()",
                    t.shape, t.stride
                )));
            }
            want = want.saturating_mul(n);
        }
        let numel = t.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
        let bytes = numel
            .and_then(|n| n.checked_mul(esz))
            .ok_or_else(|| terr("size overflows".into()))?;
        let start = t.offset.saturating_mul(esz);
        if start.saturating_add(bytes) > range.len() {
            return Err(terr(format!(
                "elements {}..{} past the end of storage {} ({} bytes)",
                t.offset,
                t.offset.saturating_add(numel.unwrap_or(0)),
                t.key,
                range.len()
            )));
        }
        let abs = range.start + start..range.start + start + bytes;
        out.insert(name, Tensor::mapped(t.dtype, t.shape, map.clone(), abs));
    }
    Ok(out)
}

/// `name -> byte range` of every member of an uncompressed zip (zip64 included).
fn zip_members(
    z: &Arc<Mmap>,
) -> std::result::Result<Vec<(String, std::ops::Range<usize>)>, String> {
    let z: &[u8] = z;
    // Little-endian n-byte field at o (offsets from the file itself: never trusted).
    let at = |o: usize, n: usize| -> std::result::Result<usize, String> {
        let b = o
            .checked_add(n)
            .and_then(|e| z.get(o..e))
            .ok_or_else(|| "truncated zip".to_string())?;
        let v = b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64);
        usize::try_from(v).map_err(|_| "zip offset out of range".to_string())
    };
    let u16_at = |o: usize| at(o, 2);
    let u32_at = |o: usize| at(o, 4);
    let u64_at = |o: usize| at(o, 8);
    // End of central directory: the last "PK\5\6" within the trailing 64 KiB + 22 bytes.
    let lo = z.len().saturating_sub(65_557);
    let eocd = (lo..z.len().saturating_sub(21))
        .rev()
        .find(|&o| z[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or("not a zip file (no end of central directory): a truncated download?")?;
    let (mut count, mut cd) = (u16_at(eocd + 10)?, u32_at(eocd + 16)?);
    if count == 0xffff || cd == 0xffff_ffff {
        // zip64: the locator sits right before the EOCD and points at the zip64 EOCD record.
        let loc = eocd.checked_sub(20).ok_or("truncated zip64 locator")?;
        if u32_at(loc)? != 0x0706_4b50 {
            return Err("zip64 sizes without a zip64 locator".into());
        }
        let rec = u64_at(loc + 8)?;
        if u32_at(rec)? != 0x0606_4b50 {
            return Err("bad zip64 end of central directory".into());
        }
        count = u64_at(rec + 32)?;
        cd = u64_at(rec + 48)?;
    }
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut o = cd;
    for _ in 0..count {
        // o < z.len() once the signature reads, so o + 46 + three u16 lengths cannot overflow.
        if u32_at(o)? != 0x0201_4b50 {
            return Err("bad central directory entry".into());
        }
        let method = u16_at(o + 10)?;
        let (mut size, mut usize_, mut local) = (u32_at(o + 20)?, u32_at(o + 24)?, u32_at(o + 42)?);
        let (nlen, xlen, clen) = (u16_at(o + 28)?, u16_at(o + 30)?, u16_at(o + 32)?);
        let name = z
            .get(o + 46..o + 46 + nlen)
            .ok_or("truncated zip entry name")?;
        let name = String::from_utf8_lossy(name).into_owned();
        // zip64 extra field (id 1): the 0xffffffff fields, in the order usize, size, offset.
        let mut x = o + 46 + nlen;
        let xend = x + xlen;
        while x + 4 <= xend {
            let (id, len) = (u16_at(x)?, u16_at(x + 2)?);
            if id == 1 {
                let mut f = x + 4;
                for v in [&mut usize_, &mut size, &mut local] {
                    if *v == 0xffff_ffff && f + 8 <= x + 4 + len {
                        *v = u64_at(f)?;
                        f += 8;
                    }
                }
            }
            x += 4 + len;
        }
        if method != 0 || size != usize_ {
            return Err(format!(
                "member {name} is compressed (method {method}); torch.save writes them stored"
            ));
        }
        if u32_at(local)? != 0x0403_4b50 {
            return Err(format!("member {name}: bad local header"));
        }
        // local < z.len() here (its signature was read), so these sums cannot overflow.
        let start = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
        let end = start.checked_add(size).filter(|&e| e <= z.len());
        let end = end.ok_or_else(|| format!("member {name} runs past the end of the file"))?;
        out.push((name, start..end));
        o = xend + clen;
    }
    Ok(out)
}

/// One tensor of the state dict: where its elements are.
#[derive(Clone)]
struct TensorRef {
    key: String,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The pickle values a state dict is made of.
#[derive(Clone)]
enum V {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    /// `module.name` of a GLOBAL.
    Global(String),
    Storage {
        key: String,
        dtype: Dtype,
    },
    Tensor(Arc<TensorRef>),
    Mark,
}

/// The storage class name's dtype (`torch.FloatStorage` ...).
fn storage_dtype(global: &str) -> Option<Dtype> {
    Some(match global.strip_prefix("torch.")? {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

fn ints(v: &V, what: &str) -> std::result::Result<Vec<usize>, String> {
    match v {
        V::Tuple(xs) => xs
            .iter()
            .map(|x| match x {
                V::Int(i) => usize::try_from(*i).map_err(|_| format!("negative {what}")),
                _ => Err(format!("{what} is not a tuple of ints")),
            })
            .collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

/// `callable(*args)` for the callables a state dict uses.
fn reduce(f: &V, args: Vec<V>) -> std::result::Result<V, String> {
    let V::Global(name) = f else {
        return Err("REDUCE on a value that is not a global".into());
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(V::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [V::Storage { key, dtype }, V::Int(off), size, stride, ..] = args.as_slice() else {
                return Err(format!("{name}: unexpected arguments"));
            };
            Ok(V::Tensor(Arc::new(TensorRef {
                key: key.clone(),
                dtype: *dtype,
                offset: usize::try_from(*off).map_err(|_| "negative storage offset")?,
                shape: ints(size, "size")?,
                stride: ints(stride, "stride")?,
            })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(t @ V::Tensor(_)) => Ok(t),
                _ => Err(format!("{name}: not a tensor")),
            }
        }
        _ => Err(format!(
            "global `{name}` is not part of a state dict (only tensors and dicts are read)"
        )),
    }
}

/// Evaluates a state-dict pickle into (name, tensor) in dict order. Nested dicts (a checkpoint
/// holding `{"model": state_dict, ...}`) are refused by name.
fn unpickle(p: &[u8]) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let mut stack: Vec<V> = Vec::new();
    let mut memo: HashMap<usize, V> = HashMap::new();
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let s = p.get(*i..*i + n).ok_or("truncated pickle")?;
        *i += n;
        Ok(s)
    };
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64) as usize;
    let pop = |stack: &mut Vec<V>| {
        stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    };
    let pop_mark = |stack: &mut Vec<V>| -> std::result::Result<Vec<V>, String> {
        let m = stack
            .iter()
            .rposition(|v| matches!(v, V::Mark))
            .ok_or("pickle: no MARK")?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut i, 1)?.first().ok_or("truncated pickle")?;
        match op {
            0x80 => i += 1, // PROTO
            0x95 => i += 8, // FRAME
            b'}' => stack.push(V::Dict(Vec::new())),
            b']' => stack.push(V::List(Vec::new())),
            b')' => stack.push(V::Tuple(Vec::new())),
            b'N' => stack.push(V::None),
            0x88 | 0x89 => stack.push(V::Bool), // NEWTRUE, NEWFALSE
            b'(' => stack.push(V::Mark),
            b'K' => stack.push(V::Int(le(take(&mut i, 1)?) as i64)),
            b'M' => stack.push(V::Int(le(take(&mut i, 2)?) as i64)),
            b'J' => stack.push(V::Int(le(take(&mut i, 4)?) as u32 as i32 as i64)),
            0x8a => {
                // LONG1: n little-endian two's-complement bytes
                let n = le(take(&mut i, 1)?);
                let b = take(&mut i, n)?;
                if n > 8 {
                    return Err("integer wider than 64 bits".into());
                }
                let mut v = le(b) as u64;
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v |= u64::MAX << (8 * n);
                }
                stack.push(V::Int(v as i64));
            }
            b'G' => {
                take(&mut i, 8)?;
                stack.push(V::Float);
            }
            b'X' | 0x8c | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => le(take(&mut i, 4)?),
                    _ => le(take(&mut i, 1)?),
                };
                let s = String::from_utf8_lossy(take(&mut i, n)?).into_owned();
                stack.push(V::Str(s));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let rest = p.get(i..).ok_or("truncated pickle")?;
                let mut lines = rest.splitn(3, |&b| b == b'\n');
                let (m, n) = (lines.next().unwrap_or(&[]), lines.next().unwrap_or(&[]));
                i += m.len() + n.len() + 2;
                let (m, n) = (String::from_utf8_lossy(m), String::from_utf8_lossy(n));
                stack.push(V::Global(format!("{m}.{n}")));
            }
            0x93 => {
                // STACK_GLOBAL
                let (n, m) = (pop(&mut stack)?, pop(&mut stack)?);
                let (V::Str(m), V::Str(n)) = (m, n) else {
                    return Err("STACK_GLOBAL of non-strings".into());
                };
                stack.push(V::Global(format!("{m}.{n}")));
            }
            b'q' | b'r' | 0x94 => {
                let k = match op {
                    b'q' => le(take(&mut i, 1)?),
                    b'r' => le(take(&mut i, 4)?),
                    _ => memo.len(),
                };
                let top = stack.last().ok_or("pickle: PUT on an empty stack")?;
                memo.insert(k, top.clone());
            }
            b'h' | b'j' => {
                let k = le(take(&mut i, if op == b'h' { 1 } else { 4 })?);
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or("pickle: GET of an unknown memo")?,
                );
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = stack.len().checked_sub(n).ok_or("pickle stack underflow")?;
                let items = stack.split_off(at);
                stack.push(V::Tuple(items));
            }
            b'Q' => {
                // BINPERSID: ('storage', class, key, location, numel)
                let pid = pop(&mut stack)?;
                let V::Tuple(t) = pid else {
                    return Err("persistent id is not a tuple".into());
                };
                let (Some(V::Global(cls)), Some(V::Str(key))) = (t.get(1), t.get(2)) else {
                    return Err("persistent id is not a storage".into());
                };
                let dtype = storage_dtype(cls).ok_or_else(|| format!("storage class `{cls}`"))?;
                stack.push(V::Storage {
                    key: key.clone(),
                    dtype,
                });
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ: callable, args tuple
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let V::Tuple(args) = args else {
                    return Err("REDUCE arguments are not a tuple".into());
                };
                stack.push(reduce(&f, args)?);
            }
            b'b' => {
                // BUILD: state of an OrderedDict or a parameter; nothing a tensor needs
                pop(&mut stack)?;
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                let Some(V::Dict(d)) = stack.last_mut() else {
                    return Err("SETITEM on a value that is not a dict".into());
                };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![pop(&mut stack)?]
                } else {
                    pop_mark(&mut stack)?
                };
                let Some(V::List(l)) = stack.last_mut() else {
                    return Err("APPEND on a value that is not a list".into());
                };
                l.extend(items);
            }
            b'.' => break,
            _ => {
                return Err(format!(
                    "unsupported pickle opcode 0x{op:02x} at byte {}",
                    i - 1
                ))
            }
        }
    }
    let Some(V::Dict(d)) = stack.pop() else {
        return Err("the pickle is not a dict of tensors".into());
    };
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d {
        let V::Str(k) = k else {
            return Err("a state-dict key that is not a string".into());
        };
        match v {
            V::Tensor(t) => {
                out.push((k, Arc::unwrap_or_clone(t)));
            }
            V::Dict(_) => {
                return Err(format!(
                    "entry `{k}` is a nested dict: save the model's state_dict() itself"
                ))
            }
            _ => {} // metadata (ints, strings) beside the tensors
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/torch_bin")
            .join(name)
    }

    /// Every dtype, a storage offset, two tensors sharing one storage, a parameter, a 0-d and an
    /// empty tensor: same dtype, shape and bytes as safetensors' copy of the same state dict
    /// (tests/reference/torch_bin_make_fixtures.py), in the dict's order.
    #[test]
    fn mixed_state_dict_equals_its_safetensors_copy() {
        let got = read_file(&fixture("mixed.bin")).unwrap();
        let want = super::super::safetensors::read_file(&fixture("mixed.safetensors")).unwrap();
        let order: Vec<&str> = got.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            order,
            [
                "f32",
                "f16",
                "bf16",
                "i64",
                "i32",
                "u8",
                "bool",
                "offset_view",
                "shared_a",
                "shared_b",
                "param",
                "scalar",
                "empty"
            ]
        );
        for (name, t) in &got {
            let w = &want[name];
            // safetensors stores the bool tensor as u8 (the fixture's copy); bytes are equal.
            let dt = if t.dtype == Dtype::BOOL {
                Dtype::U8
            } else {
                t.dtype
            };
            assert_eq!((dt, &t.shape), (w.dtype, &w.shape), "{name}");
            assert_eq!(t.bytes(), w.bytes(), "{name}");
        }
        assert_eq!(got["scalar"].shape, Vec::<usize>::new());
        assert_eq!(got["empty"].shape, [0, 3]);
    }

    #[test]
    fn what_is_refused_says_why() {
        let err = |f: &str| read_file(&fixture(f)).unwrap_err().to_string();
        let e = err("noncontig.bin");
        assert!(
            e.ends_with("tensor \"w\": non-contiguous (shape [4, 3], stride [1, 4]): save it with .contiguous()"),
            "{e}"
        );
        let e = err("legacy.bin");
        assert!(e.contains("pre-1.6 (non-zip) format"), "{e}");
    }

    /// Shards past 4 GiB (LLaMA-class `.bin` files) are zip64: sizes and offsets of 0xffffffff
    /// in the central directory with the real ones in a zip64 extra field, and a zip64 end
    /// record. mixed.bin rewritten that way reads as the same tensors.
    #[test]
    fn zip64_layout_reads_the_same() {
        let z = std::fs::read(fixture("mixed.bin")).unwrap();
        let u16_at = |o: usize| u16::from_le_bytes([z[o], z[o + 1]]) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(z[o..o + 4].try_into().unwrap()) as usize;
        let eocd = z.len() - 22;
        assert_eq!(u32_at(eocd), 0x0605_4b50, "fixture has no comment");
        let (count, cd) = (u16_at(eocd + 10), u32_at(eocd + 16));
        let mut out = z[..cd].to_vec();
        let new_cd = out.len();
        let mut o = cd;
        for _ in 0..count {
            let (nlen, xlen, clen) = (u16_at(o + 28), u16_at(o + 30), u16_at(o + 32));
            let (csize, usize_, local) = (u32_at(o + 20), u32_at(o + 24), u32_at(o + 42));
            let mut e = z[o..o + 46].to_vec();
            e[20..28].copy_from_slice(&[0xff; 8]);
            e[42..46].copy_from_slice(&[0xff; 4]);
            e[30..32].copy_from_slice(&((xlen + 28) as u16).to_le_bytes());
            e.extend_from_slice(&z[o + 46..o + 46 + nlen]);
            e.extend_from_slice(&z[o + 46 + nlen..o + 46 + nlen + xlen]);
            e.extend_from_slice(&1u16.to_le_bytes());
            e.extend_from_slice(&24u16.to_le_bytes());
            for v in [usize_, csize, local] {
                e.extend_from_slice(&(v as u64).to_le_bytes());
            }
            e.extend_from_slice(&z[o + 46 + nlen + xlen..o + 46 + nlen + xlen + clen]);
            out.extend_from_slice(&e);
            o += 46 + nlen + xlen + clen;
        }
        let (cd_size, rec) = (out.len() - new_cd, out.len());
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [count, count, cd_size, new_cd] {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(rec as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        out.extend_from_slice(&[0xff; 8]);
        out.extend_from_slice(&[0, 0]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z64.bin");
        std::fs::write(&p, &out).unwrap();
        let got = read_file(&p).unwrap();
        let want = read_file(&fixture("mixed.bin")).unwrap();
        assert_eq!(got.len(), want.len());
        for (name, t) in &want {
            assert_eq!(got[name].bytes(), t.bytes(), "{name}");
        }
    }

    /// Cut anywhere or with bytes flipped, a checkpoint is an error naming the file, never a
    /// panic or a hang.
    #[test]
    fn damaged_files_are_errors() {
        let bytes = std::fs::read(fixture("mixed.bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let mut rng = crate::rng::Rng::new(3);
        for cut in (0..bytes.len()).step_by(97) {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = read_file(&p).unwrap_err().to_string();
            assert!(e.contains("x.bin"), "{e}");
        }
        for _ in 0..200 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                let at = (rng.next_u64() % b.len() as u64) as usize;
                b[at] = rng.next_u64() as u8;
            }
            std::fs::write(&p, &b).unwrap();
            let _ = read_file(&p); // Ok or Err, never a panic
        }
    }
}
