//! Twins of kernels/embedding.cu.

/// out[i, :] = table[ids[i], :] (ids outside [0, vocab) give zeros).  out: [n, d]; table: [vocab, d]
pub fn embedding_fwd(out: &mut [f32], ids: &[i32], table: &[f32], d: usize) {
    let vocab = (table.len() / d) as i32;
    for (i, &id) in ids.iter().enumerate() {
        let row = &mut out[i * d..(i + 1) * d];
        if (0..vocab).contains(&id) {
            row.copy_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
        } else {
            row.fill(0.0);
        }
    }
}

/// dtable[ids[i], :] += dout[i, :]
pub fn embedding_bwd(dtable: &mut [f32], ids: &[i32], dout: &[f32], d: usize) {
    let vocab = (dtable.len() / d) as i32;
    for (i, &id) in ids.iter().enumerate() {
        if (0..vocab).contains(&id) {
            for c in 0..d {
                dtable[id as usize * d + c] += dout[i * d + c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_accumulate_and_bad_ids_are_zero() {
        let table = [1.0, 2.0, 3.0, 4.0];
        let mut out = [9f32; 6];
        embedding_fwd(&mut out, &[1, -1, 0], &table, 2);
        assert_eq!(out, [3.0, 4.0, 0.0, 0.0, 1.0, 2.0]);
        let mut dt = [0f32; 4];
        embedding_bwd(&mut dt, &[1, 1, 5], &[1.0, 1.0, 2.0, 2.0, 7.0, 7.0], 2);
        assert_eq!(dt, [0.0, 0.0, 3.0, 3.0]);
    }
}
