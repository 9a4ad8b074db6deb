//! Which vector instructions this CPU has. Hot loops that the
//! compiler vectorises for the baseline x86-64 (4 lanes) also get a copy
//! compiled for AVX2 (8 lanes), chosen at run time, so one binary runs on
//! any x86-64 and uses the wider registers where they exist.

/// AVX2 and FMA (every x86-64 CPU since 2013-2015). (std caches what the
/// CPU reports, so this is cheap enough for a hot path.)
#[cfg(target_arch = "x86_64")]
pub fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}
