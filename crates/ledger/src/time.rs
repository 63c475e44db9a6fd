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
        self.rfc3339().as_str().to_string()
    }

    /// RFC3339Nano as Go prints it (trailing zeros of the fraction dropped), without allocating
    /// for the timestamps `from_micros` keeps: this runs for every log entry.
    pub fn rfc3339(self) -> Rfc3339Text {
        if !(MICROS_MIN..=MICROS_MAX).contains(&self.0) {
            // Outside the bounds `from_micros` keeps; printed all the same.
            let nanos = i128::from(self.0) * 1000;
            let datetime =
                OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("timestamp in range");
            return Rfc3339Text::Other(datetime.format(&Rfc3339).expect("formattable"));
        }
        const MICROS_PER_DAY: i64 = 86_400_000_000;
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let of_day = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let seconds = of_day / 1_000_000;
        let micro = (of_day % 1_000_000) as u32;
        let mut bytes = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut bytes[0..4], year);
        put_digits(&mut bytes[5..7], u32::from(month));
        put_digits(&mut bytes[8..10], u32::from(day));
        put_digits(&mut bytes[11..13], (seconds / 3600) as u32);
        put_digits(&mut bytes[14..16], (seconds / 60 % 60) as u32);
        put_digits(&mut bytes[17..19], (seconds % 60) as u32);
        if micro == 0 {
            bytes[19] = b'Z';
            return Rfc3339Text::Short(bytes, 20);
        }
        let mut width = 6;
        let mut fraction = micro;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            width -= 1;
        }
        put_digits(&mut bytes[20..20 + width], fraction);
        bytes[20 + width] = b'Z';
        Rfc3339Text::Short(bytes, 21 + width as u8)
    }
}

/// A timestamp printed as RFC 3339: on the stack for the years `Timestamp::from_micros` keeps.
#[derive(Clone, Debug)]
pub enum Rfc3339Text {
    Short([u8; 27], u8),
    Other(String),
}

impl Rfc3339Text {
    pub fn as_str(&self) -> &str {
        match self {
            Rfc3339Text::Short(bytes, len) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("ASCII")
            }
            Rfc3339Text::Other(text) => text,
        }
    }
}

impl serde::Serialize for Rfc3339Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Year, month and day of a day counted from 1970-01-01, in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`), for the years `from_micros` keeps.
fn civil_from_days(days: i64) -> (u32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let year = u32::try_from(year).expect("a year the bounds keep");
    (year, month as u8, day as u8)
}

/// `value` in decimal, zero-padded to fill `slot` (it must fit).
fn put_digits(slot: &mut [u8], value: u32) {
    let mut rest = value;
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    assert_eq!(rest, 0, "{value} is wider than {} digits", slot.len());
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rfc3339().as_str())
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
        // Calendar edges: leap days, centuries, the epoch from both sides.
        for edge in [
            "2000-02-29T12:00:00Z",
            "1900-03-01T00:00:00Z",
            "2100-02-28T23:59:59.999999Z",
            "2024-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "1600-02-29T00:00:00.000001Z",
        ] {
            check(edge, Some(edge));
        }
    }

    proptest::proptest! {
        /// The calendar arithmetic agrees with the `time` crate over the whole range.
        #[test]
        fn rfc3339_agrees_with_the_time_crate(micros in MICROS_MIN..=MICROS_MAX) {
            let datetime = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap();
            let printed = Timestamp(micros).to_rfc3339();
            proptest::prop_assert_eq!(
                OffsetDateTime::parse(&printed, &Rfc3339).unwrap(),
                datetime,
                "{}",
                printed
            );
            proptest::prop_assert_eq!(Timestamp::parse(&printed), Some(Timestamp(micros)));
        }
    }
}
