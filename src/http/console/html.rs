//! HTML helpers of the console: escaping, URL encoding, the page layout, formatting of amounts
//! and times. Every value rendered into a page goes through [`esc`] (or [`enc`] inside a URL).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use chainsync_engine::sessions::Role;

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v&…` of the non-empty pairs, encoded.
pub fn query_string(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A UTC time with its zone, in a `<time>` element.
pub fn time(t: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.to_rfc3339(),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_string(), time)
}

/// A time in a schedule's zone, with the zone's abbreviation and name.
pub fn time_in(t: DateTime<Utc>, tz: Tz) -> String {
    let local = t.with_timezone(&tz);
    format!(
        "<time datetime=\"{}\">{} {} ({})</time>",
        t.to_rfc3339(),
        local.format("%Y-%m-%d %H:%M:%S"),
        local.format("%Z"),
        esc(tz.name())
    )
}

/// Seconds as a short duration (`42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`).
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".into();
    }
    if s < 10.0 {
        return format!("{s:.2} s");
    }
    // Rounded to whole seconds on purpose.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Groups the digits of an integer's text in threes (`1234567` → `1,234,567`).
pub fn group(digits: &str) -> String {
    let (sign, d) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A base-unit integer (text) in whole units of `decimals`, exact, trailing zeros dropped:
/// `1500000000000000000`, 18 → `1.5`. Text that is not an integer comes back unchanged.
pub fn units(raw: &str, decimals: u8) -> String {
    let (sign, digits) = match raw.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", raw),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return raw.to_string();
    }
    let d = usize::from(decimals);
    let padded = format!("{digits:0>width$}", width = d + 1);
    let (int, frac) = padded.split_at(padded.len() - d);
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", group(int))
    } else {
        format!("{sign}{}.{frac}", group(int))
    }
}

/// An amount for people beside its raw integer: `1.5 RAT` and `1500000000000000000`.
pub fn amount(raw: &str, token: Option<(&str, u8)>) -> String {
    match token {
        Some((symbol, decimals)) => format!(
            "<span class=\"amt\">{} {}</span> <code class=\"raw\" title=\"base units\">{}</code>",
            esc(&units(raw, decimals)),
            esc(symbol),
            esc(raw)
        ),
        None => format!(
            "<span class=\"amt\">{}</span> <span class=\"muted\">(decimals unknown)</span>",
            esc(raw)
        ),
    }
}

/// Which menu entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Dead,
    Queues,
    Schedules,
    Chain,
    None,
}

/// What the layout needs of the signed-in session.
pub struct Viewer<'a> {
    pub role: Role,
    pub csrf: &'a str,
}

/// A whole page: header with the menu and the sign-out form, then `body`.
pub fn page(title: &str, nav: Nav, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let menu = match viewer {
        None => String::new(),
        Some(v) => {
            let item = |n: Nav, href: &str, label: &str| {
                let current = if n == nav {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                format!("<li><a href=\"{href}\"{current}>{label}</a></li>")
            };
            format!(
                "<nav aria-label=\"Console\"><ul>{}{}{}{}{}{}</ul></nav>\
                 <div class=\"who\"><span class=\"role role-{}\">{}</span>\
                 <form method=\"post\" action=\"/admin/logout\">{}\
                 <button type=\"submit\">Sign out</button></form></div>",
                item(Nav::Overview, "/admin", "Overview"),
                item(Nav::Jobs, "/admin/jobs", "Jobs"),
                item(Nav::Dead, "/admin/dead", "Dead letters"),
                item(Nav::Queues, "/admin/queues", "Queues"),
                item(Nav::Schedules, "/admin/schedules", "Schedules"),
                item(Nav::Chain, "/admin/chain", "Chain data"),
                v.role.as_str(),
                if v.role == Role::ReadOnly {
                    "read-only"
                } else {
                    "admin"
                },
                csrf_field(v.csrf),
            )
        }
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · chainsync</title>\
         <link rel=\"icon\" href=\"/admin/assets/icon.svg\">\
         <link rel=\"stylesheet\" href=\"/admin/assets/console.css\">\
         <script src=\"/admin/assets/console.js\" defer></script></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a class=\"brand\" href=\"/admin\">chainsync</a>{menu}</header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

pub fn hidden(name: &str, value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// A message box: `kind` is `error` or `ok`.
pub fn message(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(
        "<p class=\"msg msg-{kind}\" role=\"{role}\">{}</p>",
        esc(text)
    )
}

/// `<select>` of `options` (value = label) with an "any" entry.
pub fn select(name: &str, label: &str, options: &[String], current: &str) -> String {
    let mut s = format!(
        "<label>{}<select name=\"{}\"><option value=\"\">any</option>",
        esc(label),
        esc(name)
    );
    for o in options {
        let sel = if o == current { " selected" } else { "" };
        s.push_str(&format!(
            "<option value=\"{}\"{sel}>{}</option>",
            esc(o),
            esc(o)
        ));
    }
    s.push_str("</select></label>");
    s
}

pub fn input(name: &str, label: &str, kind: &str, value: &str, placeholder: &str) -> String {
    format!(
        "<label>{}<input type=\"{kind}\" name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>",
        esc(label),
        esc(name),
        esc(value),
        esc(placeholder)
    )
}

/// Shortens long text for a table cell (the whole text is on the detail page).
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(enc("a b&c=/ü"), "a%20b%26c%3D%2F%C3%BC");
    }

    #[test]
    fn units_are_exact() {
        assert_eq!(units("1500000000000000000", 18), "1.5");
        assert_eq!(units("1", 18), "0.000000000000000001");
        assert_eq!(units("0", 6), "0");
        assert_eq!(units("1234567000000", 6), "1,234,567");
        assert_eq!(
            units(
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                18
            ),
            "115,792,089,237,316,195,423,570,985,008,687,907,853,269,984,665,640,564,039,457.584007913129639935"
        );
        assert_eq!(units("-2500", 3), "-2.5");
        assert_eq!(units("12", 0), "12");
        assert_eq!(units("abc", 3), "abc");
        assert_eq!(group("1000"), "1,000");
        assert_eq!(group("100"), "100");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(secs(0.5), "0.50 s");
        assert_eq!(secs(75.0), "1 min 15 s");
        assert_eq!(secs(7300.0), "2 h 1 min");
    }
}
