//! FNV-1a, a 64-bit hash that stays the same across Rust releases (std's
//! hasher may not): for file names, seeds and agreement checks that must
//! not change between builds.

pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}
