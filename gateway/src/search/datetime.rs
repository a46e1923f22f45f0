//! FHIR `date` / `dateTime` / `instant` values as ranges of instants.
//!
//! Every FHIR date-like value denotes a *range*: `1974-12` covers the whole of
//! December 1974, `2013-01-14T10:00:00+01:00` covers one second. Search
//! compares such ranges, so this module turns text into an inclusive range of
//! Unix-epoch milliseconds.
//!
//! Time zones: a value with a time and an offset (`Z`, `+01:00`) is converted
//! to UTC. A value **without** an offset (a bare date such as `1974-12-25`, or
//! a search value like `2013-01-14T10:00`) is taken to be UTC. FHIR leaves the
//! zone of such values to the server; UTC keeps results independent of where
//! the gateway runs.

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;

/// An inclusive range of instants in Unix-epoch milliseconds (UTC).
///
/// `i64::MIN` / `i64::MAX` stand for an open start / end (e.g. a `Period`
/// without `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// First millisecond covered.
    pub start_ms: i64,
    /// Last millisecond covered.
    pub end_ms: i64,
}

impl DateRange {
    /// Whether the two ranges share at least one instant.
    pub fn overlaps(&self, other: &DateRange) -> bool {
        self.start_ms <= other.end_ms && other.start_ms <= self.end_ms
    }

    /// Whether `other` lies entirely within `self`.
    pub fn contains(&self, other: &DateRange) -> bool {
        self.start_ms <= other.start_ms && other.end_ms <= self.end_ms
    }
}

/// Parses a FHIR date, dateTime or instant into the range it covers.
///
/// Accepted: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, and
/// `YYYY-MM-DDThh:mm[:ss[.fff…]][Z|±hh:mm]`. Returns `None` for anything else,
/// including impossible calendar dates (`2013-02-30`).
pub fn parse_date_range(text: &str) -> Option<DateRange> {
    let mut cursor = Cursor { bytes: text.as_bytes(), pos: 0 };

    let year = cursor.digits(4)?;
    if year == 0 {
        return None;
    }
    if cursor.at_end() {
        let start = days_from_civil(year, 1, 1) * DAY_MS;
        let end = days_from_civil(year + 1, 1, 1) * DAY_MS - 1;
        return Some(DateRange { start_ms: start, end_ms: end });
    }

    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if cursor.at_end() {
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        let start = days_from_civil(year, month, 1) * DAY_MS;
        let end = days_from_civil(next_year, next_month, 1) * DAY_MS - 1;
        return Some(DateRange { start_ms: start, end_ms: end });
    }

    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_start = days_from_civil(year, month, day) * DAY_MS;
    if cursor.at_end() {
        return Some(DateRange { start_ms: day_start, end_ms: day_start + DAY_MS - 1 });
    }

    cursor.expect(b'T')?;
    let hour = cursor.digits(2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut local_ms = day_start + hour * 3_600_000 + minute * 60_000;
    // Width of the range minus one: the precision of the last component given.
    let mut width_ms = 60_000;
    if cursor.peek() == Some(b':') {
        cursor.pos += 1;
        // FHIR's regex admits a leap second (60); fold it onto 59.
        let second = cursor.digits(2)?;
        if second > 60 {
            return None;
        }
        let second = second.min(59);
        local_ms += second * 1000;
        width_ms = 1000;
        if cursor.peek() == Some(b'.') {
            cursor.pos += 1;
            let (millis, width) = cursor.fraction()?;
            local_ms += millis;
            width_ms = width;
        }
    }

    let offset_ms = match cursor.peek() {
        None => 0,
        Some(b'Z') => {
            cursor.pos += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            cursor.pos += 1;
            let hours = cursor.digits(2)?;
            cursor.expect(b':')?;
            let minutes = cursor.digits(2)?;
            if hours > 14 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3_600_000 + minutes * 60_000;
            if sign == b'+' { magnitude } else { -magnitude }
        }
        Some(_) => return None,
    };
    if !cursor.at_end() {
        return None;
    }
    let start = local_ms - offset_ms;
    Some(DateRange { start_ms: start, end_ms: start + width_ms - 1 })
}

/// Byte cursor over ASCII date text; every accessor fails softly.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize) -> Option<i64> {
        let slice = self.bytes.get(self.pos..self.pos + count)?;
        let mut value = 0i64;
        for &b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.pos += count;
        Some(value)
    }

    /// Fractional seconds: returns (milliseconds, width of the range in ms).
    /// Digits beyond the millisecond are accepted and truncated.
    fn fraction(&mut self) -> Option<(i64, i64)> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.bytes[start..self.pos];
        if digits.is_empty() {
            return None;
        }
        let mut millis = 0i64;
        for i in 0..3 {
            millis = millis * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
        let width = match digits.len() {
            1 => 100,
            2 => 10,
            _ => 1,
        };
        Some((millis, width))
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> (i64, i64) {
        let r = parse_date_range(text).unwrap_or_else(|| panic!("{text} should parse"));
        (r.start_ms, r.end_ms)
    }

    #[test]
    fn partial_dates_cover_their_whole_unit() {
        // 1974-12-25T00:00:00Z = 157161600 s
        assert_eq!(range("1974-12-25"), (157_161_600_000, 157_161_600_000 + DAY_MS - 1));
        // December 1974: 1974-12-01 .. 1974-12-31T23:59:59.999
        assert_eq!(range("1974-12"), (155_088_000_000, 157_766_400_000 - 1));
        assert_eq!(range("2013"), (1_356_998_400_000, 1_388_534_400_000 - 1));
        assert_eq!(range("2000-02").1 - range("2000-02").0 + 1, 29 * DAY_MS);
    }

    #[test]
    fn times_with_offsets_are_converted_to_utc() {
        // 2013-01-14T10:00:00+01:00 == 2013-01-14T09:00:00Z
        assert_eq!(range("2013-01-14T10:00:00+01:00"), range("2013-01-14T09:00:00Z"));
        let (start, end) = range("2013-01-14T09:00:00Z");
        assert_eq!(end - start, 999);
        let (start, end) = range("2013-01-14T09:00Z");
        assert_eq!(end - start, 59_999);
        let (start, end) = range("2013-01-14T09:00:00.12Z");
        assert_eq!(end - start, 9);
        assert_eq!(start % 1000, 120);
    }

    #[test]
    fn rejects_malformed_and_impossible_dates() {
        for bad in [
            "",
            "201",
            "2013-1",
            "2013-13",
            "2013-02-30",
            "2013-01-14T",
            "2013-01-14T25:00",
            "2013-01-14T10:00:00+15:00",
            "2013-01-14 10:00",
            "0000",
            "2013-01-14T10:00:00.Z",
            "２０１３",
            "2013-01-14T10:00:00ZZ",
        ] {
            assert!(parse_date_range(bad).is_none(), "{bad:?} should be rejected");
        }
    }
}
