//! Printing results: lines on stdout, tables, progress bars on stderr, and numbers for people.

use std::io::Write;

/// Prints one line on stdout; a closed pipe surfaces as an error the binary exits quietly on.
///
/// Control characters (terminal escape sequences in a title, say, or anything else read from
/// Redis) are written as `\u001b` and the like, never raw: they cannot colour, retitle or clear
/// the terminal. The same form is a valid escape inside a JSON string, so JSON stays JSON.
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", without_controls(line))?;
    stdout.flush()
}

/// Prints text on stdout without ending the line, as [`print_line`] escapes it.
pub fn print_text(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", without_controls(text))
}

/// `text` with every control character but the tab written as `\uXXXX`.
pub fn without_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_escaped(c) {
            shown.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

fn is_escaped(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// A progress bar on stderr when it is a terminal (and nothing otherwise): `what` names it.
pub fn progress_bar(length: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let style =
            indicatif::ProgressStyle::with_template("{msg:>9} {wide_bar} {pos}/{len} {per_sec}")
                .expect("the template is valid");
        bar.set_style(style);
        bar.set_message(what);
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Text on a single line, so each table row stays one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Milliseconds for people: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// Bytes for people: `512 B`, `6.1 KiB`, `3.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 entry`, `2 entries`.
pub fn count_of(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Rows printed as columns two spaces apart; the last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table, each line starting with `indent`.
    pub fn print(&self, indent: &str) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            print_line(line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            without_controls("Hi \u{1b}[31mRED \u{1b}]0;pwned\u{7} \u{9b}2J\tok"),
            "Hi \\u001b[31mRED \\u001b]0;pwned\\u0007 \\u009b2J\tok"
        );
        let json = serde_json::json!({"title": "a\u{9b}b"}).to_string();
        let shown = without_controls(&json);
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back["title"], "a\u{9b}b");
    }

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(245_000), "4m05s");
        assert_eq!(human_duration(7_380_000), "2h03m");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(6246), "6.1 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
