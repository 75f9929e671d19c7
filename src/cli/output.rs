//! Tables for people, JSON for scripts.

use serde::Serialize;

pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as JSON, or the table built from `rows` otherwise.
    pub fn print<T: Serialize>(&self, value: &T, header: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode output: {e}"),
            }
        } else {
            print!("{}", table(header, &rows));
        }
    }

    /// A one-line message, or `{"message": ...}` with `--json`.
    pub fn message<T: Serialize>(&self, value: &T, text: &str) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode output: {e}"),
            }
        } else {
            println!("{text}");
        }
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut s = String::new();
    let line = |cells: Vec<&str>, s: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        s.push_str(parts.join("  ").trim_end());
        s.push('\n');
    };
    line(header.to_vec(), &mut s);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut s);
    }
    if rows.is_empty() {
        s.push_str("(none)\n");
    }
    s
}

pub fn short_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Truncates long text for a table cell.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}
