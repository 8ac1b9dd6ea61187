//! The bigint keys that lead the indexes of the search tables.
//!
//! The schema defines them as SQL functions (`idx_param_key`,
//! `idx_resource_key`, `idx_target_key`): PostgreSQL's `hashtextextended`
//! with seed 0 over the parts joined by `|`. Searches compute the keys they
//! look up with those functions. Writers compute the keys of the rows they
//! insert here, which spares PostgreSQL two expression evaluations per row.
//! They insert the tenant they hashed as the row's tenant, so row-level
//! security rejects a row whose key was computed for another tenant.
//!
//! `hashtextextended` hashes the bytes of the text in the server encoding
//! (UTF-8, which [`crate::postgres::Database::connect`] checks) with Bob
//! Jenkins' lookup3 mix and keeps two of its three words. A test compares
//! these functions with the server's on texts of every tail length.

/// Computes the key of the rows of one search parameter of one resource type.
pub fn param_key(tenant: &str, resource_type: &str, code: &str) -> i64 {
    hash_parts(&[tenant, resource_type, code])
}

/// Computes the key of the rows of one resource.
pub fn resource_key(tenant: &str, resource_type: &str, id: &str) -> i64 {
    hash_parts(&[tenant, resource_type, id])
}

/// Computes the key of the references to one id, whatever the target type.
pub fn target_key(tenant: &str, target_id: &str) -> i64 {
    hash_parts(&[tenant, target_id])
}

fn hash_parts(parts: &[&str]) -> i64 {
    let length = parts.iter().map(|part| part.len() + 1).sum::<usize>();
    let mut joined = Vec::with_capacity(length);
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            joined.push(b'|');
        }
        joined.extend_from_slice(part.as_bytes());
    }
    // The server returns the unsigned hash as a signed bigint.
    hash_bytes(&joined) as i64
}

/// Computes `hashtextextended(text, 0)` of the text whose bytes are `key`.
pub fn hash_bytes(key: &[u8]) -> u64 {
    // The server keeps the length in a 32-bit integer.
    let start = 0x9e37_79b9_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let mut state = [start, start, start];
    let mut blocks = key.chunks_exact(12);
    for block in &mut blocks {
        for (word, bytes) in state.iter_mut().zip(block.chunks_exact(4)) {
            *word = word.wrapping_add(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        }
        mix(&mut state);
    }
    // The last 0 to 11 bytes go into the words little-endian, except that
    // the third word's lowest byte stays free.
    for (n, &byte) in blocks.remainder().iter().enumerate() {
        let (word, shift) = if n < 8 {
            (n / 4, 8 * (n % 4))
        } else {
            (2, 8 * (n - 7))
        };
        state[word] = state[word].wrapping_add(u32::from(byte) << shift);
    }
    finish(&mut state);
    let [_, b, c] = state;
    (u64::from(b) << 32) | u64::from(c)
}

fn mix(state: &mut [u32; 3]) {
    let [mut a, mut b, mut c] = *state;
    a = a.wrapping_sub(c) ^ c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a) ^ a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b) ^ b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c) ^ c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a) ^ a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b) ^ b.rotate_left(4);
    b = b.wrapping_add(a);
    *state = [a, b, c];
}

fn finish(state: &mut [u32; 3]) {
    let [mut a, mut b, mut c] = *state;
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    c = (c ^ b).wrapping_sub(b.rotate_left(24));
    *state = [a, b, c];
}
