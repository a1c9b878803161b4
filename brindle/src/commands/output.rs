//! Printing results: aligned tables (the default) or the same data as JSON or YAML.

use std::fmt;

use crate::cli::OutputFormat;

/// Rows under a header, printed with columns aligned (like kubectl's tables).
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Whether it has no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index == last {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}   "));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Prints `table` or `value`, as `format` asks.
pub fn print(format: OutputFormat, table: &Table, value: &serde_json::Value) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print!("{table}"),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => {
            let text = yaml_serde::to_string(value)?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
    }
    Ok(())
}

/// A duration since a unix-millisecond time, as `kubectl` shows ages (`45s`, `3m`, `2h`, `4d`);
/// `-` for never.
pub fn age_since(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let now = brindle_sync::unix_ms(std::time::SystemTime::now());
    let seconds = (now - unix_ms).max(0) / 1000;
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut table = Table::new(&["NAME", "CIDR"]);
        table.row(vec!["default-pool".into(), "10.244.0.0/16".into()]);
        table.row(vec!["b".into(), "10.0.0.0/8".into()]);
        assert_eq!(
            table.to_string(),
            "NAME           CIDR\ndefault-pool   10.244.0.0/16\nb              10.0.0.0/8\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = brindle_sync::unix_ms(std::time::SystemTime::now());
        assert_eq!(age_since(0), "-");
        assert_eq!(age_since(now - 5_000), "5s");
        assert_eq!(age_since(now - 600_000), "10m");
        assert_eq!(age_since(now - 3 * 86_400_000), "3d");
    }
}
