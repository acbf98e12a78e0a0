//! Maintenance windows: `[DAYS] HH:MM-HH:MM`, e.g. `Mon..Fri 02:00-04:00`,
//! rendered as a systemd timer (`OnCalendar=` the start, and a randomized
//! delay that keeps the start inside the window).

use anyhow::{bail, Result};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// systemd's day-of-week part (`Mon..Fri`, `Sat,Sun`), empty for every day.
    pub days: String,
    pub start_min: u32,
    pub end_min: u32,
}

const HELP: &str = "a window is `[DAYS] HH:MM-HH:MM` in local time, e.g. `Mon..Fri 02:00-04:00`, \
                    `Sat,Sun 01:30-05:00` or `03:00-04:00` (every day); DAYS are Mon Tue Wed Thu \
                    Fri Sat Sun, as a list (`Sat,Sun`) or range (`Mon..Fri`)";

fn day(s: &str) -> Option<&'static str> {
    DAYS.iter().copied().find(|d| d.eq_ignore_ascii_case(s))
}

fn time(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Window {
    pub fn parse(spec: &str) -> Result<Window> {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let (days, times) = match parts.as_slice() {
            [t] => ("", *t),
            [d, t] => (*d, *t),
            _ => bail!("window {spec:?} does not parse: {HELP}"),
        };
        let mut rendered = Vec::new();
        if !days.is_empty() {
            for item in days.split(',') {
                let r = match item.split_once("..") {
                    Some((a, b)) => match (day(a), day(b)) {
                        (Some(a), Some(b)) => format!("{a}..{b}"),
                        _ => bail!("window {spec:?}: {item:?} is not a day range; {HELP}"),
                    },
                    None => match day(item) {
                        Some(d) => d.to_string(),
                        None => bail!("window {spec:?}: {item:?} is not a day; {HELP}"),
                    },
                };
                rendered.push(r);
            }
        }
        let Some((start, end)) = times.split_once('-') else {
            bail!("window {spec:?} has no end: {HELP}")
        };
        let (Some(start_min), Some(end_min)) = (time(start), time(end)) else {
            bail!("window {spec:?}: {times:?} is not HH:MM-HH:MM; {HELP}")
        };
        if start_min == end_min {
            bail!("window {spec:?} is empty (it ends when it starts); {HELP}")
        }
        Ok(Window {
            days: rendered.join(","),
            start_min,
            end_min,
        })
    }

    /// The window's length in minutes (a window may cross midnight).
    pub fn minutes(&self) -> u32 {
        (self.end_min + 24 * 60 - self.start_min) % (24 * 60)
    }

    /// `OnCalendar=` value: the window's start.
    pub fn on_calendar(&self) -> String {
        let t = format!(
            "*-*-* {:02}:{:02}:00",
            self.start_min / 60,
            self.start_min % 60
        );
        if self.days.is_empty() {
            t
        } else {
            format!("{} {t}", self.days)
        }
    }

    /// `RandomizedDelaySec=`: the window minus a margin for the upgrade
    /// itself (a quarter of the window, at most 15 minutes).
    pub fn randomized_delay_secs(&self) -> u32 {
        let m = self.minutes();
        (m - (m / 4).min(15)) * 60
    }

    /// The `[Timer]` lines of a drop-in: reset, then set (SPEC §5). A
    /// missed window is not caught up at boot (that would be outside it).
    pub fn timer_lines(&self) -> String {
        format!(
            "OnCalendar=\nOnCalendar={}\nRandomizedDelaySec={}\nPersistent=false\n",
            self.on_calendar(),
            self.randomized_delay_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_render() {
        let w = Window::parse("Mon..Fri 02:00-04:00").unwrap();
        assert_eq!(w.on_calendar(), "Mon..Fri *-*-* 02:00:00");
        assert_eq!(w.minutes(), 120);
        assert_eq!(w.randomized_delay_secs(), 105 * 60);
        assert_eq!(
            w.timer_lines(),
            "OnCalendar=\nOnCalendar=Mon..Fri *-*-* 02:00:00\nRandomizedDelaySec=6300\nPersistent=false\n"
        );
        let w = Window::parse("sat,SUN 23:30-00:10").unwrap();
        assert_eq!(w.on_calendar(), "Sat,Sun *-*-* 23:30:00");
        assert_eq!(w.minutes(), 40);
        assert_eq!(w.randomized_delay_secs(), 30 * 60);
        assert_eq!(
            Window::parse("3:05-4:00").unwrap().on_calendar(),
            "*-*-* 03:05:00"
        );
    }

    #[test]
    fn bad_windows_are_refused_with_the_syntax() {
        for bad in [
            "Mon..Fri 02:00",
            "Mon..Fri",
            "Mon..Fry 02:00-04:00",
            "Funday 02:00-04:00",
            "02:00-25:00",
            "02:00-02:00",
            "02:0-03:00",
            "Mon 02:00-03:00 extra",
            "",
        ] {
            let e = Window::parse(bad).unwrap_err().to_string();
            assert!(e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
    }
}
