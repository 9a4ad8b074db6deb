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

/// The vector features of this CPU that a kernel or a library kernel it
/// calls (gemm) may choose by, by their `is_x86_feature_detected` names.
pub fn features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detected {
            ($($f:tt),*) => { [$(($f, is_x86_feature_detected!($f))),*] };
        }
        let all = detected!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        );
        let mut v: Vec<&str> = all.into_iter().filter(|f| f.1).map(|f| f.0).collect();
        // AMX, which std cannot detect on stable Rust yet: CPUID leaf 7's EDX
        let edx = {
            use std::arch::x86_64::{__cpuid, __cpuid_count};
            if __cpuid(0).eax >= 7 {
                __cpuid_count(7, 0).edx
            } else {
                0
            }
        };
        for (bit, name) in [(24, "amx-tile"), (22, "amx-bf16"), (25, "amx-int8")] {
            if edx >> bit & 1 == 1 {
                v.push(name);
            }
        }
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    vec![]
}
