//! Runtime values, exact portions and the name checks shared by the parser and the interpreter.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::rc::Rc;

use crate::{Amount, RuntimeError};

/// An exact rational number: `den > 0` and `gcd(|num|, den) == 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

fn overflow(operation: &str) -> RuntimeError {
    RuntimeError::Overflow {
        operation: operation.to_string(),
    }
}

impl Ratio {
    pub(crate) const ZERO: Ratio = Ratio { num: 0, den: 1 };
    pub(crate) const ONE: Ratio = Ratio { num: 1, den: 1 };

    /// `num / den`, reduced. Fails on a zero denominator or when the result cannot be represented.
    pub(crate) fn new(num: i128, den: i128) -> Result<Ratio, RuntimeError> {
        if den == 0 {
            return Err(RuntimeError::DivideByZero { numerator: num });
        }
        let (mut num, mut den) = (num, den);
        if den < 0 {
            num = num.checked_neg().ok_or_else(|| overflow("division"))?;
            den = den.checked_neg().ok_or_else(|| overflow("division"))?;
        }
        let g = gcd(num.unsigned_abs(), den.unsigned_abs());
        debug_assert!(g > 0);
        // `g` divides `den` which is a positive i128, so it fits.
        let g = g as i128;
        let res = Ratio {
            num: num / g,
            den: den / g,
        };
        assert!(res.den > 0);
        Ok(res)
    }

    pub(crate) fn checked_add(self, other: Ratio) -> Result<Ratio, RuntimeError> {
        let g = gcd(self.den.unsigned_abs(), other.den.unsigned_abs()) as i128;
        let left = self.num.checked_mul(other.den / g);
        let right = other.num.checked_mul(self.den / g);
        let num = match (left, right) {
            (Some(l), Some(r)) => l.checked_add(r),
            _ => None,
        }
        .ok_or_else(|| overflow("portion addition"))?;
        let den = self
            .den
            .checked_mul(other.den / g)
            .ok_or_else(|| overflow("portion addition"))?;
        Ratio::new(num, den)
    }

    pub(crate) fn checked_sub(self, other: Ratio) -> Result<Ratio, RuntimeError> {
        let neg = Ratio {
            num: other.num.checked_neg().ok_or_else(|| overflow("portion"))?,
            ..other
        };
        self.checked_add(neg)
    }

    /// `floor(self × amount)` for `0 ≤ self ≤ 1` and `amount ≥ 0`, using a 256-bit intermediate.
    pub(crate) fn mul_floor(self, amount: Amount) -> Amount {
        assert!(self.num >= 0 && self.num <= self.den);
        assert!(amount >= 0);
        if let Some(product) = self.num.checked_mul(amount) {
            return product / self.den;
        }
        let (high, low) = mul_u128(self.num as u128, amount as u128);
        let quotient = div_u256_by_u128(high, low, self.den as u128);
        // The result is at most `amount`.
        assert!(quotient <= amount as u128);
        quotient as Amount
    }
}

impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Ratio) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ratio {
    fn cmp(&self, other: &Ratio) -> Ordering {
        // Compare a/b with c/d as a·d with c·b, in 256 bits to avoid overflow.
        let left = mul_i128_wide(self.num, other.den);
        let right = mul_i128_wide(other.num, self.den);
        left.cmp(&right)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// Full 256-bit product of two u128, as (high, low).
fn mul_u128(a: u128, b: u128) -> (u128, u128) {
    const MASK: u128 = u64::MAX as u128;
    let (a_hi, a_lo) = (a >> 64, a & MASK);
    let (b_hi, b_lo) = (b >> 64, b & MASK);
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_hi = a_hi * b_hi;
    let cross = (lo_lo >> 64) + (hi_lo & MASK) + (lo_hi & MASK);
    let low = (cross << 64) | (lo_lo & MASK);
    let high = hi_hi + (hi_lo >> 64) + (lo_hi >> 64) + (cross >> 64);
    (high, low)
}

/// `(high·2^128 + low) / divisor`, for `divisor < 2^127` and a quotient that fits in u128.
fn div_u256_by_u128(high: u128, low: u128, divisor: u128) -> u128 {
    assert!(divisor > 0 && divisor < (1u128 << 127));
    assert!(high < divisor, "quotient must fit in 128 bits");
    let mut remainder = high;
    let mut quotient = 0u128;
    for bit in (0..128).rev() {
        remainder = (remainder << 1) | ((low >> bit) & 1);
        quotient <<= 1;
        if remainder >= divisor {
            remainder -= divisor;
            quotient |= 1;
        }
    }
    quotient
}

/// Signed 256-bit product as a comparable (sign, magnitude) key.
fn mul_i128_wide(a: i128, b: i128) -> (i8, u128, u128) {
    let negative = (a < 0) != (b < 0);
    let (high, low) = mul_u128(a.unsigned_abs(), b.unsigned_abs());
    if high == 0 && low == 0 {
        return (0, 0, 0);
    }
    if negative {
        // Larger magnitudes are smaller: invert them so that tuples order correctly.
        (-1, !high, !low)
    } else {
        (1, high, low)
    }
}

/// Cheaply clonable text: borrowed from the script or the inputs, or shared.
#[derive(Clone)]
pub(crate) enum Text<'a> {
    Borrowed(&'a str),
    Shared(Rc<str>),
}

impl<'a> Text<'a> {
    pub(crate) fn owned(text: String) -> Text<'a> {
        Text::Shared(Rc::from(text))
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(text) => text,
            Text::Shared(text) => text,
        }
    }
}

impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (left, right): (&str, &str) = (self, other);
        // Texts borrowed from the same place are equal without comparing bytes.
        (left.as_ptr() == right.as_ptr() && left.len() == right.len()) || same_text(left, right)
    }
}

/// String equality without a `memcmp` call: names are short, and the call costs more than the
/// comparison.
#[inline]
pub(crate) fn same_text(left: &str, right: &str) -> bool {
    let (left, right) = (left.as_bytes(), right.as_bytes());
    if left.len() != right.len() {
        return false;
    }
    let mut left_words = left.chunks_exact(8);
    let mut right_words = right.chunks_exact(8);
    for (l, r) in (&mut left_words).zip(&mut right_words) {
        let l = u64::from_ne_bytes(l.try_into().expect("8 bytes"));
        let r = u64::from_ne_bytes(r.try_into().expect("8 bytes"));
        if l != r {
            return false;
        }
    }
    let (left_rest, right_rest) = (left_words.remainder(), right_words.remainder());
    (0..left_rest.len()).all(|i| left_rest[i] == right_rest[i])
}

impl Eq for Text<'_> {}

impl Hash for Text<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Number(Amount),
    Monetary { asset: Text<'a>, amount: Amount },
    Portion(Ratio),
    Asset(Text<'a>),
    Account(Text<'a>),
    String(Text<'a>),
}

impl Value<'_> {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Monetary { .. } => "monetary",
            Value::Portion(_) => "portion",
            Value::Asset(_) => "asset",
            Value::Account(_) => "account",
            Value::String(_) => "string",
        }
    }

    /// The value's text form: what metadata stores.
    pub(crate) fn render(&self) -> String {
        match self {
            Value::Number(n) => n.to_string(),
            Value::Monetary { asset, amount } => format!("{} {amount}", &**asset),
            Value::Portion(portion) => portion.to_string(),
            Value::Asset(text) | Value::Account(text) | Value::String(text) => text.to_string(),
        }
    }
}

/// `^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$`
pub(crate) fn is_valid_account(name: &str) -> bool {
    let mut segment_len = 0usize;
    for b in name.bytes() {
        if b == b':' {
            if segment_len == 0 {
                return false;
            }
            segment_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            segment_len += 1;
        } else {
            return false;
        }
    }
    segment_len > 0
}

/// `^[A-Z][A-Z0-9]{0,16}(_[A-Z]{1,16})?(\/\d{1,6})?$`
pub(crate) fn is_valid_asset(asset: &str) -> bool {
    let (name, precision) = match asset.split_once('/') {
        Some((name, precision)) => (name, Some(precision)),
        None => (asset, None),
    };
    if let Some(precision) = precision {
        if precision.is_empty()
            || precision.len() > 6
            || !precision.bytes().all(|b| b.is_ascii_digit())
        {
            return false;
        }
    }
    let (base, suffix) = match name.split_once('_') {
        Some((base, suffix)) => (base, Some(suffix)),
        None => (name, None),
    };
    let base_ok = !base.is_empty()
        && base.len() <= 17
        && base.as_bytes()[0].is_ascii_uppercase()
        && base
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    let suffix_ok = suffix.is_none_or(|suffix| {
        !suffix.is_empty() && suffix.len() <= 16 && suffix.bytes().all(|b| b.is_ascii_uppercase())
    });
    base_ok && suffix_ok
}

/// `^[A-Z]*$`
pub(crate) fn is_valid_color(color: &str) -> bool {
    color.bytes().all(|b| b.is_ascii_uppercase())
}

/// Parses a base-10 integer with an optional sign, as Go's `big.Int.SetString(s, 10)` does.
/// `None` when malformed; `Some(Err)` when out of range.
pub(crate) fn parse_integer(text: &str) -> Option<Result<Amount, ()>> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let negative = text.starts_with('-');
    let mut value: Amount = 0;
    for b in digits.bytes() {
        let digit = Amount::from(b - b'0');
        let next = value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        });
        match next {
            Some(next) => value = next,
            None => return Some(Err(())),
        }
    }
    Some(Ok(value))
}

/// The exact ratio of a percentage written `int[.frac]` (without `%`): `intfrac / 10^(2+len(frac))`.
pub(crate) fn percentage_ratio(integral: &str, fractional: &str) -> Option<Ratio> {
    let mut num: i128 = 0;
    for b in integral.bytes().chain(fractional.bytes()) {
        num = num.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let exponent = u32::try_from(fractional.len()).ok()?.checked_add(2)?;
    let den = 10i128.checked_pow(exponent)?;
    Ratio::new(num, den).ok()
}

/// Splits an asset into its base and precision (`EUR/2` → `("EUR", 2)`, `EUR` → `("EUR", 0)`).
/// An unparsable precision counts as 0, as upstream does.
pub(crate) fn asset_base_and_scale(asset: &str) -> (&str, u32) {
    match asset.split_once('/') {
        Some((base, scale)) => (base, scale.parse().unwrap_or(0)),
        None => (asset, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_multiplication_floors_exactly() {
        let third = Ratio::new(1, 3).unwrap();
        assert_eq!(third.mul_floor(i128::MAX), i128::MAX / 3);
        let almost_one = Ratio::new(i128::MAX - 1, i128::MAX).unwrap();
        assert_eq!(almost_one.mul_floor(i128::MAX), i128::MAX - 1);
        assert_eq!(Ratio::ONE.mul_floor(i128::MAX), i128::MAX);
        assert_eq!(Ratio::ZERO.mul_floor(i128::MAX), 0);
    }

    #[test]
    fn ratios_order_without_overflow() {
        let a = Ratio::new(i128::MAX - 1, i128::MAX).unwrap();
        let b = Ratio::new(i128::MAX - 2, i128::MAX - 1).unwrap();
        assert!(a > b);
        assert!(Ratio::new(-1, 2).unwrap() < Ratio::ZERO);
        assert!(Ratio::new(-1, 2).unwrap() > Ratio::new(-2, 3).unwrap());
    }

    #[test]
    fn names_follow_the_ledger_rules() {
        assert!(is_valid_asset("USD/2"));
        assert!(is_valid_asset("COIN_RED"));
        assert!(!is_valid_asset("usd"));
        assert!(!is_valid_asset("USD/1234567"));
        assert!(is_valid_account("users:001:main"));
        assert!(!is_valid_account("users::main"));
        assert!(!is_valid_account("user:!invalid acc.."));
    }
}
