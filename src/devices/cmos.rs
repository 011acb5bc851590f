//! CMOS RAM and a read-only real-time clock (MC146818), enough for Linux
//! to read the wall-clock time at boot without complaint.

use crate::bus::BusDevice;

/// Index port 0x70, data port 0x71.
pub const CMOS_BASE: u64 = 0x70;
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate, no update in progress.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Register D: valid RAM and time.
const REG_D_VALUE: u8 = 0x80;

/// Source of the time the RTC shows, in seconds since the Unix epoch.
pub type Clock = Box<dyn Fn() -> u64 + Send>;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
}

impl Cmos {
    pub fn new(clock: Clock) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    /// A CMOS whose clock is the host's wall clock.
    pub fn with_host_clock() -> Self {
        Cmos::new(Box::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    fn register(&self, reg: u8) -> u8 {
        let now = (self.clock)();
        let (year, month, day) = civil_from_days((now / 86_400) as i64);
        let secs = now % 86_400;
        let bcd = |v: u64| -> u8 { (((v / 10) % 10) << 4 | (v % 10)) as u8 };
        match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((now / 86_400 + 4) % 7) + 1),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year % 100),
            REG_CENTURY => bcd(year / 100),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            other => self.ram[usize::from(other & 0x7f)],
        }
    }
}

/// Converts days since 1970-01-01 to (year, month, day) in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year.max(0) as u64, month as u64, day as u64)
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs; only the index matters here.
            0 => self.index = value & 0x7f,
            _ => match self.index {
                REG_SECONDS..=REG_D | REG_CENTURY => {}
                idx => self.ram[usize::from(idx)] = value,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0, &[reg]);
        let mut b = [0u8; 1];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn rtc_shows_the_clock_in_bcd() {
        // 2026-11-25 13:15:36 UTC, a Wednesday.
        let mut cmos = Cmos::new(Box::new(|| 1_795_612_536));
        assert_eq!(read_reg(&mut cmos, REG_SECONDS), 0x36);
        assert_eq!(read_reg(&mut cmos, REG_MINUTES), 0x15);
        assert_eq!(read_reg(&mut cmos, REG_HOURS), 0x13);
        assert_eq!(read_reg(&mut cmos, REG_DAY), 0x25);
        assert_eq!(read_reg(&mut cmos, REG_MONTH), 0x11);
        assert_eq!(read_reg(&mut cmos, REG_YEAR), 0x26);
        assert_eq!(read_reg(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read_reg(&mut cmos, REG_WEEKDAY), 0x04);
        assert_eq!(read_reg(&mut cmos, REG_D), REG_D_VALUE);
        assert_eq!(
            read_reg(&mut cmos, REG_A) & 0x80,
            0,
            "no update in progress"
        );
    }

    #[test]
    fn nvram_round_trips_and_clock_registers_are_read_only() {
        let mut cmos = Cmos::new(Box::new(|| 0));
        cmos.write(0, &[0x80 | 0x40]);
        cmos.write(1, &[0x5a]);
        assert_eq!(read_reg(&mut cmos, 0x40), 0x5a);
        cmos.write(0, &[REG_SECONDS]);
        cmos.write(1, &[0x59]);
        assert_eq!(read_reg(&mut cmos, REG_SECONDS), 0x00);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }
}
