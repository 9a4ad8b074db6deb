//! Branch-free math the compiler can vectorise.

/// `2^x` to about 2e-7 relative error: round x to an integer n, a degree-6
/// polynomial for `2^f` on `f = x - n` in [-0.5, 0.5], and n put in the
/// exponent bits. Below -127 gives 0, above 128 infinity, NaN stays NaN.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer
    const MAGIC: f32 = 12582912.0;
    // max/min rather than clamp: NaN becomes a number here and is restored
    // at the end, so the body stays branch-free
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-127.0).min(128.0);
    let t = xc + MAGIC;
    let n = t - MAGIC;
    let f = xc - n;
    // Taylor coefficients of 2^f = e^(f ln 2)
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5 + f * (0.055_504_11 + f * (0.009_618_129 + f * (0.001_333_356 + f * 0.000_154_035_3)))));
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127).max(0) as u32) << 23);
    let r = p * scale;
    if x.is_nan() {
        x
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp2_matches_std() {
        let mut worst = 0f32;
        let mut x = -126.0f32;
        while x < 127.0 {
            let (a, b) = (super::exp2(x), x.exp2());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(super::exp2(-1e30), 0.0);
        assert_eq!(super::exp2(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp2(200.0), f32::INFINITY);
        assert!(super::exp2(f32::NAN).is_nan());
        assert_eq!(super::exp2(0.0), 1.0);
    }
}
