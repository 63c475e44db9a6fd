//! Timestamps: microseconds since the Unix epoch, UTC (the precision Formance serialises).

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// Bounds keep every timestamp printable as a four-digit year RFC 3339 date.
const MICROS_MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const MICROS_MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z

impl Timestamp {
    pub fn now() -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock before 1970");
        Timestamp(now.as_micros() as i64)
    }

    pub fn from_micros(micros: i64) -> Option<Timestamp> {
        (MICROS_MIN..=MICROS_MAX)
            .contains(&micros)
            .then_some(Timestamp(micros))
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 with a mandatory offset; sub-microsecond digits are truncated.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        let micros = parsed.unix_timestamp_nanos().div_euclid(1000);
        Timestamp::from_micros(i64::try_from(micros).ok()?)
    }

    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        let datetime =
            OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("timestamp in range");
        // RFC3339Nano as Go prints it: trailing zeros of the fraction dropped.
        let (y, mo, d) = (datetime.year(), datetime.month() as u8, datetime.day());
        let (h, mi, s) = (datetime.hour(), datetime.minute(), datetime.second());
        let micro = datetime.microsecond();
        // Written digit by digit: this runs for every log entry, where `format!` showed in
        // profiles.
        let Some(year) = u32::try_from(y).ok().filter(|year| *year <= 9999) else {
            // Outside the bounds `from_micros` keeps; printed all the same.
            return datetime.format(&Rfc3339).expect("formattable");
        };
        let mut out = String::with_capacity(28);
        push_digits(&mut out, year, 4);
        for (separator, value) in [('-', mo), ('-', d), ('T', h), (':', mi), (':', s)] {
            out.push(separator);
            push_digits(&mut out, u32::from(value), 2);
        }
        if micro != 0 {
            let mut width = 6;
            let mut fraction = micro;
            while fraction.is_multiple_of(10) {
                fraction /= 10;
                width -= 1;
            }
            out.push('.');
            push_digits(&mut out, fraction, width);
        }
        out.push('Z');
        out
    }
}

/// `value` in decimal, zero-padded to `width` digits (it must fit).
fn push_digits(out: &mut String, value: u32, width: usize) {
    let mut buffer = [b'0'; 10];
    let mut rest = value;
    for slot in buffer[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    assert_eq!(rest, 0, "{value} is wider than {width} digits");
    out.push_str(std::str::from_utf8(&buffer[..width]).expect("ASCII digits"));
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<&str>) {
        let got = Timestamp::parse(input).map(|t| t.to_rfc3339());
        assert_eq!(got.as_deref(), expected);
    }

    #[test]
    fn rfc3339() {
        check("2024-01-02T03:04:05Z", Some("2024-01-02T03:04:05Z"));
        check("2024-01-02T03:04:05.120Z", Some("2024-01-02T03:04:05.12Z"));
        check(
            "2024-01-02T03:04:05.123456789Z",
            Some("2024-01-02T03:04:05.123456Z"),
        );
        check("2024-01-02T05:04:05+02:00", Some("2024-01-02T03:04:05Z"));
        check("1969-12-31T23:59:59.5Z", Some("1969-12-31T23:59:59.5Z"));
        check("0001-01-01T00:00:00Z", Some("0001-01-01T00:00:00Z"));
        check(
            "9999-12-31T23:59:59.999999Z",
            Some("9999-12-31T23:59:59.999999Z"),
        );
        check(
            "2024-01-02T03:04:05.000001Z",
            Some("2024-01-02T03:04:05.000001Z"),
        );
        check(
            "2024-01-02T03:04:05.100200Z",
            Some("2024-01-02T03:04:05.1002Z"),
        );
        check("2024-01-02T03:04:05", None);
        check("yesterday", None);
    }
}
