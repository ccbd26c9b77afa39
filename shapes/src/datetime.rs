//! Dates, times, timestamps and intervals as PostgreSQL stores them (days and microseconds
//! since 2000-01-01, UTC), parsed from and printed in its ISO output, with its calendar
//! arithmetic.

use std::cmp::Ordering;
use std::fmt::Write;

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 0000-03-01-based civil epoch to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 730_425;
const INFINITY_DAYS: i64 = i32::MAX as i64;
/// PostgreSQL's date range: 4714-11-24 BC up to (not including) 5874898-01-01.
const DATE_MIN_DAYS: i64 = -2_451_545;
const DATE_END_DAYS: i64 = 2_147_483_494 - 2_451_545;

/// Whether a date is not `±infinity`.
pub fn date_is_finite(days: i64) -> bool {
    days.abs() != INFINITY_DAYS
}

/// Whether a finite date is one PostgreSQL can store.
pub fn date_in_range(days: i64) -> bool {
    (DATE_MIN_DAYS..DATE_END_DAYS).contains(&days)
}
const INFINITY_MICROS: i64 = i64::MAX;
/// PostgreSQL's timestamp range: 4714-11-24 00:00 BC up to (not including) 294277-01-01.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;
const DAYS_PER_MONTH: i64 = 30;

/// Whether a timestamp is not `±infinity`.
pub fn timestamp_is_finite(micros: i64) -> bool {
    micros.abs() != INFINITY_MICROS
}

/// A date as the timestamp of its midnight; infinities stay infinite.
pub fn date_to_timestamp(days: i64) -> i64 {
    match days {
        INFINITY_DAYS => INFINITY_MICROS,
        d if d == -INFINITY_DAYS => -INFINITY_MICROS,
        d => d * MICROS_PER_DAY,
    }
}

/// The date of a timestamp; infinities stay infinite.
pub fn timestamp_to_date(micros: i64) -> i64 {
    match micros {
        INFINITY_MICROS => INFINITY_DAYS,
        m if m == -INFINITY_MICROS => -INFINITY_DAYS,
        m => m.div_euclid(MICROS_PER_DAY),
    }
}

/// Days since 2000-01-01 of a proleptic Gregorian date (year 0 = 1 BC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - PG_EPOCH_DAYS
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + PG_EPOCH_DAYS;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    days_from_civil(if m == 12 { y + 1 } else { y }, if m == 12 { 1 } else { m + 1 }, 1) - days_from_civil(y, m, 1)
}

pub(crate) fn parse_date(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(INFINITY_DAYS),
        "-infinity" => return Some(-INFINITY_DAYS),
        _ => {}
    }
    let (s, bc) = split_era(s);
    parse_ymd(s, bc)
}

/// Text without a trailing ` BC`, and whether it had one.
fn split_era(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// `YYYY-MM-DD` (a BC year when `bc`) as days since 2000-01-01.
fn parse_ymd(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    let y = if bc { 1 - y } else { y };
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

pub(crate) fn format_date(days: i64) -> String {
    match days {
        INFINITY_DAYS => return "infinity".into(),
        d if d == -INFINITY_DAYS => return "-infinity".into(),
        _ => {}
    }
    let (y, m, d) = civil_from_days(days);
    if y <= 0 { format!("{:04}-{m:02}-{d:02} BC", 1 - y) } else { format!("{y:04}-{m:02}-{d:02}") }
}

/// `HH:MM[:SS[.ffffff]]`, returning micros and the rest of the input.
pub(crate) fn parse_time(s: &str) -> Option<(i64, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(s.len());
    let (t, rest) = s.split_at(end);
    let mut parts = t.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let mi: i64 = parts.next()?.parse().ok()?;
    let (sec, frac) = match parts.next() {
        Some(sec) => match sec.split_once('.') {
            Some((s, f)) => (s.parse::<i64>().ok()?, f),
            None => (sec.parse::<i64>().ok()?, ""),
        },
        None => (0, ""),
    };
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) || h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    let micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    let total = ((h * 60 + mi) * 60 + sec) * 1_000_000 + micros;
    if total > MICROS_PER_DAY {
        return None;
    }
    Some((total, rest))
}

pub(crate) fn format_time(micros: i64) -> String {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 { base } else { format!("{base}.{}", format!("{frac:06}").trim_end_matches('0')) }
}

pub(crate) fn parse_timestamp(s: &str, with_zone: bool) -> Option<i64> {
    match s {
        "infinity" => return Some(INFINITY_MICROS),
        "-infinity" => return Some(-INFINITY_MICROS),
        _ => {}
    }
    let (s, bc) = split_era(s);
    let (date, rest) = s.split_once([' ', 'T']).unwrap_or((s, "00:00"));
    let days = parse_ymd(date, bc)?;
    let (time, zone) = parse_time(rest)?;
    let offset = match zone {
        "" => 0,
        z if with_zone => parse_zone_offset(z)?,
        "Z" | "+00" => 0,
        _ => return None,
    };
    Some(days * MICROS_PER_DAY + time - offset)
}

/// `+HH[:MM[:SS]]` / `-HH…` / `Z` as microseconds east of UTC.
fn parse_zone_offset(z: &str) -> Option<i64> {
    if z == "Z" {
        return Some(0);
    }
    let sign = match z.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut secs = 0i64;
    for (i, part) in z[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return None;
        }
        secs += part.parse::<i64>().ok()? * [3600, 60, 1][i];
    }
    Some(sign * secs * 1_000_000)
}

pub(crate) fn format_timestamp(micros: i64) -> String {
    match micros {
        INFINITY_MICROS => return "infinity".into(),
        m if m == -INFINITY_MICROS => return "-infinity".into(),
        _ => {}
    }
    let days = micros.div_euclid(MICROS_PER_DAY);
    let date = format_date(days);
    let time = format_time(micros.rem_euclid(MICROS_PER_DAY));
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {time} BC"),
        None => format!("{date} {time}"),
    }
}

/// A PostgreSQL `interval`: months, days and microseconds, kept apart because a month is
/// not a fixed number of days, nor a day a fixed number of hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    /// PostgreSQL's comparison key (`interval_cmp_value`): a month counts 30 days, a day
    /// 24 hours, so `'1 mon' = '30 days'`.
    fn span(&self) -> i128 {
        let day = i128::from(MICROS_PER_DAY);
        i128::from(self.months) * 30 * day + i128::from(self.days) * day + i128::from(self.micros)
    }

    pub fn compare(&self, other: &Interval) -> Ordering {
        self.span().cmp(&other.span())
    }

    fn from_wide(months: i64, days: i64, micros: i64) -> Option<Interval> {
        Some(Interval { months: i32::try_from(months).ok()?, days: i32::try_from(days).ok()?, micros })
    }

    pub fn checked_add(&self, o: &Interval) -> Option<Interval> {
        Interval::from_wide(
            i64::from(self.months) + i64::from(o.months),
            i64::from(self.days) + i64::from(o.days),
            self.micros.checked_add(o.micros)?,
        )
    }

    pub fn checked_neg(&self) -> Option<Interval> {
        Interval::from_wide(-i64::from(self.months), -i64::from(self.days), self.micros.checked_neg()?)
    }

    /// `justify_hours`: whole days out of the time part, signs made to agree.
    pub fn justify_hours(&self) -> Option<Interval> {
        let mut days = i64::from(self.days) + self.micros / MICROS_PER_DAY;
        let mut micros = self.micros % MICROS_PER_DAY;
        if days > 0 && micros < 0 {
            micros += MICROS_PER_DAY;
            days -= 1;
        } else if days < 0 && micros > 0 {
            micros -= MICROS_PER_DAY;
            days += 1;
        }
        Interval::from_wide(i64::from(self.months), days, micros)
    }

    /// `justify_days`: whole 30-day months out of the days, signs made to agree.
    pub fn justify_days(&self) -> Option<Interval> {
        let mut months = i64::from(self.months) + i64::from(self.days) / DAYS_PER_MONTH;
        let mut days = i64::from(self.days) % DAYS_PER_MONTH;
        if months > 0 && days < 0 {
            days += DAYS_PER_MONTH;
            months -= 1;
        } else if months < 0 && days > 0 {
            days -= DAYS_PER_MONTH;
            months += 1;
        }
        Interval::from_wide(months, days, self.micros)
    }

    /// `justify_interval`: both, with one sign across all three parts.
    pub fn justify_interval(&self) -> Option<Interval> {
        let mut days = i64::from(self.days) + self.micros / MICROS_PER_DAY;
        let mut micros = self.micros % MICROS_PER_DAY;
        let mut months = i64::from(self.months) + days / DAYS_PER_MONTH;
        days %= DAYS_PER_MONTH;
        if months > 0 && (days < 0 || (days == 0 && micros < 0)) {
            days += DAYS_PER_MONTH;
            months -= 1;
        } else if months < 0 && (days > 0 || (days == 0 && micros > 0)) {
            days -= DAYS_PER_MONTH;
            months += 1;
        }
        if days > 0 && micros < 0 {
            micros += MICROS_PER_DAY;
            days -= 1;
        } else if days < 0 && micros > 0 {
            micros -= MICROS_PER_DAY;
            days += 1;
        }
        Interval::from_wide(months, days, micros)
    }

    /// PostgreSQL's interval input in its `postgres` style: `<number> <unit>` pairs (units
    /// from microseconds to millennia, abbreviated or not, the number may be fractional
    /// and glued to the unit), an optional `[-]HH:MM[:SS[.ffffff]]` part, a leading `@`, and
    /// a trailing `ago`. A bare number is seconds. ISO 8601 (`P1D`) is not accepted.
    pub fn parse(s: &str) -> Option<Interval> {
        let lower = s.trim().to_ascii_lowercase();
        let mut words: Vec<&str> = lower.split_whitespace().collect();
        if words.first() == Some(&"@") {
            words.remove(0);
        }
        let ago = words.last() == Some(&"ago");
        if ago {
            words.pop();
        }
        if words.is_empty() {
            return None;
        }
        let (mut months, mut days, mut micros) = (0f64, 0f64, 0f64);
        let mut i = 0;
        while i < words.len() {
            let word = words[i];
            i += 1;
            if word.contains(':') {
                let (sign, rest) = match word.as_bytes()[0] {
                    b'-' => (-1.0, &word[1..]),
                    b'+' => (1.0, &word[1..]),
                    _ => (1.0, word),
                };
                micros += sign * parse_clock(rest)? as f64;
                continue;
            }
            let split = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(word.len());
            let (number, glued_unit) = word.split_at(split);
            let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite())?;
            let unit = if !glued_unit.is_empty() {
                glued_unit
            } else if i < words.len() && words[i].starts_with(|c: char| c.is_ascii_alphabetic()) {
                i += 1;
                words[i - 1]
            } else {
                "seconds"
            };
            match unit_of(unit)? {
                Unit::Micros(per) => micros += value * per as f64,
                Unit::Days(per) => {
                    let whole = (value * per as f64).trunc();
                    days += whole;
                    micros += (value * per as f64 - whole) * MICROS_PER_DAY as f64;
                }
                Unit::Months(per) => {
                    let total = value * per as f64;
                    if per >= 12 {
                        // Fractions of years are rounded to whole months, as PostgreSQL does.
                        months += total.round();
                    } else {
                        let whole = total.trunc();
                        months += whole;
                        let frac_days = (total - whole) * DAYS_PER_MONTH as f64;
                        days += frac_days.trunc();
                        micros += (frac_days - frac_days.trunc()) * MICROS_PER_DAY as f64;
                    }
                }
            }
        }
        let sign = if ago { -1.0 } else { 1.0 };
        let fits = |v: f64| v.abs() < i32::MAX as f64;
        let micros = (sign * micros).round();
        if !fits(months) || !fits(days) || micros.abs() >= i64::MAX as f64 {
            return None;
        }
        Some(Interval { months: (sign * months) as i32, days: (sign * days) as i32, micros: micros as i64 })
    }

    /// PostgreSQL's output in the default `postgres` IntervalStyle, e.g.
    /// `1 year 2 mons -3 days +04:05:06.5`.
    pub fn format(&self) -> String {
        let mut out = String::new();
        let (mut zero, mut before_negative) = (true, false);
        let mut part = |value: i64, unit: &str| {
            if value == 0 {
                return;
            }
            let plus = if before_negative && value > 0 { "+" } else { "" };
            let _ =
                write!(out, "{}{plus}{value} {unit}{}", if zero { "" } else { " " }, if value != 1 { "s" } else { "" });
            before_negative = value < 0;
            zero = false;
        };
        part(i64::from(self.months) / 12, "year");
        part(i64::from(self.months) % 12, "mon");
        part(i64::from(self.days), "day");
        if zero || self.micros != 0 {
            let sign = if self.micros < 0 {
                "-"
            } else if before_negative {
                "+"
            } else {
                ""
            };
            let abs = self.micros.unsigned_abs();
            let (hours, rest) = (abs / MICROS_PER_HOUR as u64, abs % MICROS_PER_HOUR as u64);
            let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
            let (seconds, frac) = (rest / 1_000_000, rest % 1_000_000);
            let _ = write!(out, "{}{sign}{hours:02}:{minutes:02}:{seconds:02}", if zero { "" } else { " " });
            if frac != 0 {
                let _ = write!(out, ".{}", format!("{frac:06}").trim_end_matches('0'));
            }
        }
        out
    }
}

enum Unit {
    Micros(i64),
    Days(i64),
    Months(i64),
}

fn unit_of(word: &str) -> Option<Unit> {
    Some(match word {
        "microsecond" | "microseconds" | "us" | "usec" | "usecs" => Unit::Micros(1),
        "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" => Unit::Micros(1_000),
        "second" | "seconds" | "s" | "sec" | "secs" => Unit::Micros(1_000_000),
        "minute" | "minutes" | "m" | "min" | "mins" => Unit::Micros(60_000_000),
        "hour" | "hours" | "h" | "hr" | "hrs" => Unit::Micros(MICROS_PER_HOUR),
        "day" | "days" | "d" => Unit::Days(1),
        "week" | "weeks" | "w" => Unit::Days(7),
        "month" | "months" | "mon" | "mons" => Unit::Months(1),
        "year" | "years" | "y" | "yr" | "yrs" => Unit::Months(12),
        "decade" | "decades" => Unit::Months(120),
        "century" | "centuries" | "c" => Unit::Months(1_200),
        "millennium" | "millennia" | "millenniums" => Unit::Months(12_000),
        _ => return None,
    })
}

/// `H:MM[:SS[.ffffff]]` of an interval (hours may exceed 24) as microseconds.
fn parse_clock(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: f64 = match parts.next() {
        Some(sec) => sec.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?,
        None => 0.0,
    };
    if !(0..60).contains(&minutes) || seconds >= 60.0 {
        return None;
    }
    let whole = hours.checked_mul(MICROS_PER_HOUR)?.checked_add(minutes * 60_000_000)?;
    whole.checked_add((seconds * 1e6).round() as i64)
}

/// `timestamp + interval` as PostgreSQL adds it: months on the calendar (clamping the day
/// to the month's end), then days, then the time. `None` when out of range.
pub fn timestamp_plus_interval(ts: i64, iv: &Interval) -> Option<i64> {
    if !timestamp_is_finite(ts) {
        return Some(ts);
    }
    let mut days = ts.div_euclid(MICROS_PER_DAY);
    let time = ts.rem_euclid(MICROS_PER_DAY);
    if iv.months != 0 {
        let (y, m, d) = civil_from_days(days);
        let month_index = y * 12 + (m - 1) + i64::from(iv.months);
        let (y, m) = (month_index.div_euclid(12), month_index.rem_euclid(12) + 1);
        days = days_from_civil(y, m, d.min(days_in_month(y, m)));
    }
    let ts = (days + i64::from(iv.days)).checked_mul(MICROS_PER_DAY)?.checked_add(time)?.checked_add(iv.micros)?;
    (TIMESTAMP_MIN..TIMESTAMP_END).contains(&ts).then_some(ts)
}

/// `timestamp - timestamp`: the difference in days and time (`justify_hours` of it).
pub fn timestamp_difference(a: i64, b: i64) -> Option<Interval> {
    if !timestamp_is_finite(a) || !timestamp_is_finite(b) {
        return None;
    }
    Interval { months: 0, days: 0, micros: a.checked_sub(b)? }.justify_hours()
}

/// `time + interval`: only the interval's time part counts, wrapping around midnight.
pub fn time_plus_interval(time: i64, iv: &Interval) -> i64 {
    (time + iv.micros % MICROS_PER_DAY).rem_euclid(MICROS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_round_trip() {
        for s in ["2000-01-01", "1999-12-31", "2024-02-29", "0001-01-01 BC", "infinity"] {
            assert_eq!(format_date(parse_date(s).unwrap()), s);
        }
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert!(parse_date("2023-02-29").is_none());
        let ts = parse_timestamp("2024-01-02 03:04:05.123+00", true).unwrap();
        assert_eq!(format_timestamp(ts), "2024-01-02 03:04:05.123");
        assert_eq!(parse_timestamp("2024-01-02 05:34:05.123+02:30", true), Some(ts), "offsets move the instant to UTC");
        let bc = parse_timestamp("0044-03-15 12:00:00 BC", false).unwrap();
        assert_eq!(format_timestamp(bc), "0044-03-15 12:00:00 BC");
    }

    /// Expected texts are PostgreSQL 15's output for the same input.
    #[test]
    fn intervals_parse_and_print_like_postgres() {
        for (input, output) in [
            ("1 day", "1 day"),
            ("2 hours", "02:00:00"),
            ("1 year 2 months 3 days 04:05:06.789", "1 year 2 mons 3 days 04:05:06.789"),
            ("-1 days +02:00:00", "-1 days +02:00:00"),
            ("1.5 days", "1 day 12:00:00"),
            ("1.5 months", "1 mon 15 days"),
            ("1.5 years", "1 year 6 mons"),
            ("2 weeks ago", "-14 days"),
            ("@ 3 mins", "00:03:00"),
            ("90min", "01:30:00"),
            ("0", "00:00:00"),
            ("-1 mons", "-1 mons"),
            ("100:00:00", "100:00:00"),
            ("1 mon -1 sec", "1 mon -00:00:01"),
        ] {
            assert_eq!(Interval::parse(input).map(|i| i.format()).as_deref(), Some(output), "{input}");
        }
        for bad in ["", "P1D", "1 fortnight", "1:99", "ago"] {
            assert!(Interval::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn interval_arithmetic_follows_postgres() {
        let iv = |s| Interval::parse(s).unwrap();
        assert_eq!(iv("1 mon").compare(&iv("30 days")), Ordering::Equal);
        assert_eq!(iv("36 hours").justify_hours().unwrap().format(), "1 day 12:00:00");
        assert_eq!(iv("35 days").justify_days().unwrap().format(), "1 mon 5 days");
        assert_eq!(iv("1 mon -1 hour").justify_interval().unwrap().format(), "29 days 23:00:00");
        let ts = |s| parse_timestamp(s, false).unwrap();
        let plus = |t, i| format_timestamp(timestamp_plus_interval(ts(t), &iv(i)).unwrap());
        assert_eq!(plus("2024-01-31 10:00:00", "1 mon"), "2024-02-29 10:00:00");
        assert_eq!(plus("2024-03-31 00:00:00", "-1 mon -1 day"), "2024-02-28 00:00:00");
        assert_eq!(plus("2024-01-01 00:00:00", "-1 hour"), "2023-12-31 23:00:00");
        assert_eq!(
            timestamp_difference(ts("2024-01-03 06:00:00"), ts("2024-01-01 12:00:00")).unwrap().format(),
            "1 day 18:00:00"
        );
        assert_eq!(format_time(time_plus_interval(parse_time("23:00").unwrap().0, &iv("2 hours"))), "01:00:00");
    }
}
