//! Exact probabilities for the tracer. Branch probabilities are products of `1/N` factors from
//! `numgen` (and sums of them when outcomes merge), so a reduced fraction of two `u64`s is exact
//! where a float would print `0.33333334` in a golden file. Arithmetic is checked: an overflow
//! is reported to the caller instead of wrapping into a wrong answer.

use std::cmp::Ordering;
use std::fmt;

/// A probability as a reduced fraction `num/den` (`den > 0`, `gcd(num, den) == 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ratio {
    num: u64,
    den: u64,
}

impl Ratio {
    /// Certainty.
    pub const ONE: Ratio = Ratio { num: 1, den: 1 };
    /// Impossibility.
    pub const ZERO: Ratio = Ratio { num: 0, den: 1 };

    /// `num/den`, reduced.
    ///
    /// # Panics
    ///
    /// If `den` is zero.
    pub fn new(num: u64, den: u64) -> Ratio {
        assert!(den != 0, "a probability needs a non-zero denominator");
        reduce(u128::from(num), u128::from(den)).expect("a reduced u64 fraction fits")
    }

    /// The numerator of the reduced fraction.
    pub fn num(self) -> u64 {
        self.num
    }

    /// The denominator of the reduced fraction.
    pub fn den(self) -> u64 {
        self.den
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.num == 0
    }

    /// `self * other`, or `None` if the reduced result does not fit in `u64`.
    pub fn checked_mul(self, other: Ratio) -> Option<Ratio> {
        reduce(
            u128::from(self.num) * u128::from(other.num),
            u128::from(self.den) * u128::from(other.den),
        )
    }

    /// `self + other`, or `None` if the reduced result does not fit in `u64`.
    pub fn checked_add(self, other: Ratio) -> Option<Ratio> {
        // Over the lcm rather than the product keeps intermediates small for the common case
        // of equal denominators (1/3 + 1/3).
        let g = gcd(u128::from(self.den), u128::from(other.den));
        let den = u128::from(self.den) / g * u128::from(other.den);
        let num = u128::from(self.num) * (den / u128::from(self.den))
            + u128::from(other.num) * (den / u128::from(other.den));
        reduce(num, den)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn reduce(num: u128, den: u128) -> Option<Ratio> {
    let g = gcd(num, den).max(1);
    Some(Ratio {
        num: u64::try_from(num / g).ok()?,
        den: u64::try_from(den / g).ok()?,
    })
}

impl Ord for Ratio {
    fn cmp(&self, other: &Ratio) -> Ordering {
        // Cross-multiplication cannot overflow in u128.
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Ratio) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Ratio {
    /// `1/3`; a whole number (`1`, `0`) without the denominator.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ratio;

    #[test]
    fn reduces_and_displays() {
        assert_eq!(Ratio::new(2, 6), Ratio::new(1, 3));
        assert_eq!(Ratio::new(2, 6).to_string(), "1/3");
        assert_eq!(Ratio::new(4, 4).to_string(), "1");
        assert_eq!(Ratio::new(0, 7), Ratio::ZERO);
        assert_eq!(Ratio::ZERO.to_string(), "0");
    }

    #[test]
    fn cascade_arithmetic_is_exact() {
        let third = Ratio::new(1, 3);
        let second = Ratio::new(2, 3).checked_mul(Ratio::new(1, 2)).unwrap();
        assert_eq!(second, third);
        let sum = third
            .checked_add(second)
            .unwrap()
            .checked_add(third)
            .unwrap();
        assert_eq!(sum, Ratio::ONE);
        assert!(Ratio::new(1, 3) < Ratio::new(1, 2));
    }

    #[test]
    fn overflow_is_reported() {
        let tiny = Ratio::new(1, u64::MAX);
        assert_eq!(tiny.checked_mul(Ratio::new(1, 2)), None);
        assert_eq!(tiny.checked_mul(Ratio::ONE), Some(tiny));
        assert_eq!(
            Ratio::new(1, u64::MAX).checked_add(Ratio::new(1, u64::MAX - 1)),
            None
        );
    }
}
