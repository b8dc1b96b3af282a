//! Civil date and time of a Unix instant in milliseconds, shifted by a UTC offset: the
//! pieces the Z.AI query string and template variables print (no clock is read here).

/// A broken-down instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub millis: u64,
    /// 0 = Monday … 6 = Sunday.
    pub weekday: usize,
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl Civil {
    /// `ms` after the Unix epoch, seen `offset_minutes` east of UTC.
    pub fn at(ms: u64, offset_minutes: i32) -> Civil {
        let shifted = i128::from(ms) + i128::from(offset_minutes) * 60_000;
        let ms = i64::try_from(shifted.max(0)).unwrap_or(i64::MAX);
        let secs = ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400) as u64;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: in_day / 3600,
            minute: in_day % 3600 / 60,
            second: in_day % 60,
            millis: ms.rem_euclid(1000) as u64,
            // 1970-01-01 was a Thursday.
            weekday: (days + 3).rem_euclid(7) as usize,
        }
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `hh:mm:ss`.
    pub fn time(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }

    /// The weekday's English name.
    pub fn weekday_name(&self) -> &'static str {
        WEEKDAYS[self.weekday % 7]
    }

    /// ISO-8601 with milliseconds and a `Z` (meaningful for offset 0), as JavaScript's
    /// `Date.prototype.toISOString` prints.
    pub fn iso_utc(&self) -> String {
        format!("{}T{}.{:03}Z", self.date(), self.time(), self.millis)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let c = Civil::at(0, 0);
        assert_eq!(
            (c.date(), c.time(), c.weekday_name()),
            ("1970-01-01".into(), "00:00:00".into(), "Thursday")
        );
        // 2026-03-11 02:00:00.123 UTC, a Wednesday (python3: datetime.fromtimestamp(1773194400.123, timezone.utc)).
        let c = Civil::at(1_773_194_400_123, 0);
        assert_eq!(c.iso_utc(), "2026-03-11T02:00:00.123Z");
        assert_eq!(c.weekday_name(), "Wednesday");
        // Shanghai (UTC+8): the same instant is 10:00 local.
        let c = Civil::at(1_773_194_400_123, 480);
        assert_eq!(
            (c.date(), c.time()),
            ("2026-03-11".into(), "10:00:00".into())
        );
        // A negative offset across midnight.
        let c = Civil::at(1_773_194_400_000, -180);
        assert_eq!(
            (c.date(), c.time(), c.weekday_name()),
            ("2026-03-10".into(), "23:00:00".into(), "Tuesday")
        );
        // Leap day.
        assert_eq!(Civil::at(1_709_164_800_000, 0).date(), "2024-02-29");
    }
}
