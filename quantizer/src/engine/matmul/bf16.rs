//! f32 → bfloat16 rounding as the AMX path performs it (the scalar definition its SIMD packers must match).
//!
//! `VCVTNE2PS2BF16` rounds to nearest even, treats denormal inputs as zero (whatever MXCSR says) and turns a
//! NaN into a quiet NaN with the same sign and top payload bits; `TDPBF16PS` then multiplies the bf16 values
//! exactly and accumulates in f32 with denormals flushed.

/// The bf16 bit pattern (upper half of an f32) nearest to `x`, ties to even; denormals become signed zero.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let exponent = bits & 0x7f80_0000;
    if exponent == 0 {
        // Zero or denormal: the conversion treats it as zero of the same sign.
        return ((bits >> 16) & 0x8000) as u16;
    }
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    // Cannot overflow u32: the largest finite f32 rounds to infinity (0x7f80_0000 after the shift).
    ((bits + round) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as an f32 (what the AMX path multiplies).
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_half_crate_on_normal_values() {
        // `half` rounds to nearest even too (but keeps denormals, which this conversion flushes).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f32::from_bits(state as u32);
            if x.is_nan() || x.to_bits() & 0x7f80_0000 == 0 {
                continue;
            }
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
    }

    #[test]
    fn ties_round_to_even_and_specials() {
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xff80);
        assert_eq!(bf16_bits(f32::from_bits(0x0000_0001)), 0x0000);
        assert_eq!(bf16_bits(f32::from_bits(0x8040_0000)), 0x8000);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_bits(f32::from_bits(0xffc1_2345)), 0xffc1);
    }
}
