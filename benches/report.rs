//! `cargo bench --bench report`: gathers what the other bench binaries measured and
//! turns it into something a person can read.
//!
//! Every `*.json` in `target/bench-report` (under `CARGO_TARGET_DIR` when set), as
//! written by `benches/support/report.rs`, is read; then this writes
//!
//! - `report.md`: the machine, then one Markdown table per section (in section
//!   order) with a verdict per row that has a target, then how many targets were met;
//!   the same Markdown goes to stdout;
//! - `chart.svg`: one horizontal bar per row with a target, showing the share of the
//!   budget it used (value ÷ target for `≤` targets, target ÷ value for `≥` targets),
//!   so a bar that stays left of the 1.0 line met its target either way.
//!
//! It measures nothing itself, so it runs in a moment and can be rerun after any
//! subset of the other benches.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The bench binaries whose results the report expects; a missing one gets a note, so
/// a partial report says so instead of silently looking complete.
const EXPECTED: [&str; 3] = ["overhead", "redis", "http"];

fn main() {
    let dir = report_dir();
    let results = load(&dir);

    let markdown = markdown(&results);
    let chart = svg(&results.rows);

    std::fs::create_dir_all(&dir).expect("create the bench-report directory");
    let md_path = dir.join("report.md");
    let svg_path = dir.join("chart.svg");
    std::fs::write(&md_path, &markdown).expect("write report.md");
    std::fs::write(&svg_path, &chart).expect("write chart.svg");

    print!("{markdown}");
    println!();
    println!("wrote {}", md_path.display());
    println!("wrote {}", svg_path.display());
}

/// `target/bench-report`, honouring `CARGO_TARGET_DIR`: the same rule as
/// `benches/support/report.rs`, restated because that module's writer half has no use
/// here.
fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

// ---------------------------------------------------------------------------------
// Reading the JSON

/// One measured figure, as a bench binary wrote it.
struct Row {
    section: String,
    what: String,
    value: f64,
    unit: String,
    /// The target as written, e.g. `≤ 2`; empty when the row is there for context.
    target_text: String,
    target: Option<Target>,
    /// `None` for rows without a target.
    met: Option<bool>,
}

#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    /// `≤ 2`, `≥ 0.9` (or their ASCII spellings) into a target; anything else is `None`.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (rest, at_most) = if let Some(rest) = text.strip_prefix('≤') {
            (rest, true)
        } else if let Some(rest) = text.strip_prefix("<=") {
            (rest, true)
        } else if let Some(rest) = text.strip_prefix('≥') {
            (rest, false)
        } else if let Some(rest) = text.strip_prefix(">=") {
            (rest, false)
        } else {
            return None;
        };
        let bound: f64 = rest.trim().replace(',', "").parse().ok()?;
        Some(if at_most {
            Self::AtMost(bound)
        } else {
            Self::AtLeast(bound)
        })
    }

    /// `≤ 100,000`: the target with its bound written like the values it is held to.
    fn readable(self) -> String {
        match self {
            Self::AtMost(max) => format!("≤ {}", readable(max)),
            Self::AtLeast(min) => format!("≥ {}", readable(min)),
        }
    }

    /// The share of the budget `value` used: at most 1.0 exactly when the target is
    /// met, whichever way the target points, so every bar reads the same way.
    fn budget_share(self, value: f64) -> f64 {
        let (used, budget) = match self {
            Self::AtMost(max) => (value, max),
            Self::AtLeast(min) => (min, value),
        };
        if used <= 0.0 {
            // Nothing of the budget used (e.g. `≤ 0` and a zero value): no division by zero.
            0.0
        } else if budget <= 0.0 {
            // e.g. `≥ 0.9` and a throughput of zero: infinitely over budget.
            f64::INFINITY
        } else {
            used / budget
        }
    }
}

/// Every row found, in section order, plus what the reader should know about the
/// inputs (which files, how old, which are missing).
struct Results {
    rows: Vec<Row>,
    sources: Vec<String>,
    notes: Vec<String>,
}

fn load(dir: &Path) -> Results {
    let mut notes = Vec::new();
    let mut sources = Vec::new();
    let mut rows = Vec::new();

    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect(),
        Err(_) => {
            notes.push(format!(
                "no results yet: `{}` does not exist",
                dir.display()
            ));
            Vec::new()
        }
    };
    // Expected benches first, in their usual order, then anything else by name: a
    // stable order for rows that share a section across files.
    files.sort_by_key(|path| {
        let stem = file_stem(path);
        let rank = EXPECTED
            .iter()
            .position(|&b| b == stem)
            .unwrap_or(EXPECTED.len());
        (rank, stem)
    });

    for bench in EXPECTED {
        if !files.iter().any(|path| file_stem(path) == bench) {
            notes.push(format!(
                "no results from `{bench}`: run `cargo bench --bench {bench}`"
            ));
        }
    }

    for path in &files {
        let name = file_stem(path);
        // A bench may be rewriting its file as this runs, so a bad file is a note, not a panic.
        let json: Value = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        {
            Ok(json) => json,
            Err(e) => {
                notes.push(format!("skipped `{name}.json`: {e}"));
                continue;
            }
        };
        let mut skipped = 0;
        for row in json["rows"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            match parse_row(row) {
                Some(row) => rows.push(row),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            notes.push(format!(
                "skipped {skipped} malformed row(s) in `{name}.json`"
            ));
        }
        let written = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(utc_text)
            .unwrap_or_else(|_| "unknown time".into());
        sources.push(format!("`{name}` ({written})"));
    }

    // Stable sort: rows keep their measured order within a section.
    rows.sort_by(|a, b| section_key(&a.section).cmp(&section_key(&b.section)));
    Results {
        rows,
        sources,
        notes,
    }
}

fn parse_row(row: &Value) -> Option<Row> {
    let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
    let target_text = text("target");
    Some(Row {
        section: row["section"].as_str()?.to_string(),
        what: row["what"].as_str()?.to_string(),
        value: row["value"].as_f64()?,
        unit: text("unit"),
        target: Target::parse(&target_text),
        target_text,
        met: row["met"].as_bool(),
    })
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sections are named `"<n>. <title>"`: order by `n` as a number (so 10 follows 9),
/// unnumbered ones last.
fn section_key(section: &str) -> (u32, &str) {
    let digits: String = section
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.parse().unwrap_or(u32::MAX), section)
}

/// `3` for `"3. Redis efficiency"`: a short `§3` tag for the chart's labels.
fn section_number(section: &str) -> Option<u32> {
    Some(section_key(section).0).filter(|&n| n != u32::MAX)
}

// ---------------------------------------------------------------------------------
// Markdown

fn markdown(results: &Results) -> String {
    let mut md = String::new();
    md.push_str("# tower-credits bench report\n\n");
    let _ = writeln!(
        md,
        "Machine: {} · {} cores · {}\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        utc_text(SystemTime::now()),
    );
    if !results.sources.is_empty() {
        let _ = writeln!(md, "Results from {}.\n", results.sources.join(", "));
    }
    for note in &results.notes {
        let _ = writeln!(md, "> Note: {note}.\n");
    }

    let mut sections: BTreeMap<(u32, &str), Vec<&Row>> = BTreeMap::new();
    for row in &results.rows {
        sections
            .entry(section_key(&row.section))
            .or_default()
            .push(row);
    }
    for ((_, title), rows) in &sections {
        let _ = writeln!(md, "## {}\n", cell(title));
        md.push_str("| what | value | unit | target | verdict |\n");
        md.push_str("|:-----|------:|:-----|:-------|:--------|\n");
        for row in rows {
            let verdict = match row.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell(&row.what),
                readable(row.value),
                cell(&row.unit),
                cell(
                    &row.target
                        .map_or_else(|| row.target_text.clone(), Target::readable)
                ),
                verdict,
            );
        }
        md.push('\n');
    }

    let judged: Vec<&Row> = results.rows.iter().filter(|r| r.met.is_some()).collect();
    let met = judged.iter().filter(|r| r.met == Some(true)).count();
    // Just the count: the missed rows are already bold in their tables.
    let _ = write!(md, "**{met} of {} targets met.**", judged.len());
    md.push('\n');
    md
}

/// A table cell: a `|` would end the cell, and a `<` may start an HTML tag that
/// renderers hide.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('<', "&lt;")
}

/// Thousands separators for big numbers, about three significant digits for small
/// ones, no trailing zeros: `759,053`, `3,705`, `12.3`, `1.05`, `0.846`, `6`.
fn readable(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let magnitude = x.abs();
    let decimals = if magnitude >= 100.0 || magnitude == 0.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        // Three significant digits below 1: 0.846, 0.0123.
        (2 - magnitude.log10().floor() as i64).clamp(0, 12) as usize
    };
    let text = format!("{:.decimals$}", magnitude);
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let frac = frac.trim_end_matches('0');
    let mut out = String::new();
    if x < 0.0 && (int != "0" || !frac.is_empty()) {
        out.push('-');
    }
    for (i, digit) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// The CPU's model name, for knowing later what machine the numbers came from.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|name| !name.is_empty())
        // Some ARM kernels have no model name; the architecture is better than nothing.
        .unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

/// `2025-06-01 14:03 UTC`, from the standard library alone (no date crate, no `date`
/// process), via Howard Hinnant's days-to-civil conversion.
fn utc_text(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

// ---------------------------------------------------------------------------------
// SVG chart

const MET: &str = "#2e9e4f";
const MISSED: &str = "#d64541";
const INK: &str = "#222";
const MUTED: &str = "#666";
const GRID: &str = "#ddd";

const ROW_H: f64 = 42.0;
const BAR_H: f64 = 20.0;
const BAR_W: f64 = 480.0;
/// Room right of the bars for the share label.
const RIGHT: f64 = 130.0;
const TOP: f64 = 96.0;
/// Rough width of one character of 13px sans-serif, for sizing the label column.
const CHAR_W: f64 = 7.0;

fn svg(rows: &[Row]) -> String {
    let judged: Vec<(&Row, Target, f64)> = rows
        .iter()
        .filter_map(|row| {
            let target = row.target?;
            Some((row, target, target.budget_share(row.value)))
        })
        .collect();

    // Room for the longest label, within reason: longer ones are cut with an ellipsis.
    let longest = judged
        .iter()
        .map(|(row, ..)| row.what.chars().count())
        .max()
        .unwrap_or(0);
    let label_w = (longest as f64 * CHAR_W + 24.0).clamp(240.0, 520.0);
    let max_chars = ((label_w - 24.0) / CHAR_W) as usize;
    let x0 = label_w;
    let width = label_w + BAR_W + RIGHT;
    let height = TOP + judged.len().max(1) as f64 * ROW_H + 40.0;

    // Scale to the worst finite share, rounded up to a half, between 1.5 (so the 1.0
    // line never sits at the edge) and 3 (so one 12x miss doesn't flatten every other
    // bar); bars past the end are drawn broken and labelled with their true share.
    let worst = judged
        .iter()
        .map(|&(.., share)| share)
        .filter(|share| share.is_finite())
        .fold(0.0, f64::max);
    let axis_max = ((worst * 2.0).ceil() / 2.0).clamp(1.5, 3.0);
    let x_of = |share: f64| x0 + share.min(axis_max) / axis_max * BAR_W;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/>
<text x="16" y="28" font-size="17" font-weight="bold" fill="{INK}">tower-credits benches: share of the budget used</text>
<text x="16" y="50" font-size="12" fill="{MUTED}">value ÷ target for ≤ targets, target ÷ value for ≥ targets: at or left of the 1.0 line means the target was met.</text>
<rect x="16" y="62" width="12" height="12" fill="{MET}"/><text x="34" y="73" font-size="12" fill="{INK}">met</text>
<rect x="74" y="62" width="12" height="12" fill="{MISSED}"/><text x="92" y="73" font-size="12" fill="{INK}">missed</text>"#
    );

    let bottom = TOP + judged.len().max(1) as f64 * ROW_H;
    // Grid every 0.5, labelled under the rows.
    let mut tick = 0.0;
    while tick <= axis_max + 1e-9 {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="{GRID}"/>
<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{tick:.1}</text>"#,
            bottom + 16.0
        );
        tick += 0.5;
    }

    if judged.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" fill="{MUTED}">No rows with a target yet: run the benches first.</text>"#,
            TOP + 26.0
        );
    }

    for (i, &(row, target, share)) in judged.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H;
        let bar_y = y + (ROW_H - BAR_H) / 2.0;
        // The JSON's verdict decides the colour: the bench compared the exact numbers.
        let met = row.met.unwrap_or(share <= 1.0);
        let fill = if met { MET } else { MISSED };
        let what = truncate(&row.what, max_chars);
        let tag = section_number(&row.section).map_or(String::new(), |n| format!("§{n} · "));
        let detail = format!(
            "{tag}{} {}, target {}",
            readable(row.value),
            row.unit,
            target.readable()
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" fill="{INK}">{}</text>
<text x="16" y="{:.1}" font-size="11" fill="{MUTED}">{}</text>"#,
            y + 18.0,
            escape(&what),
            y + 33.0,
            escape(&detail),
        );
        let end = x_of(share);
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}" fill="{fill}"><title>{}: {}</title></rect>"#,
            (end - x0).max(1.0),
            escape(&row.what),
            escape(&detail),
        );
        let off_scale = share > axis_max;
        if off_scale {
            // Two white slashes near the end: the bar is cut, not to scale.
            for dx in [14.0, 8.0] {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="white" stroke-width="2"/>"#,
                    end - dx - 3.0,
                    bar_y + BAR_H + 2.0,
                    end - dx + 3.0,
                    bar_y - 2.0,
                );
            }
        }
        let share_text = if share.is_finite() {
            readable(share)
        } else {
            "∞".into()
        };
        let share_text = format!(
            "{share_text}{}",
            if off_scale { " (off scale)" } else { "" }
        );
        // A bar ending just short of the 1.0 line would have its label struck through
        // by the line: such labels go right of the line instead.
        let one = x_of(1.0);
        let text_w = share_text.chars().count() as f64 * CHAR_W;
        let mut text_x = end + 6.0;
        if text_x < one + 4.0 && text_x + text_w > one - 4.0 {
            text_x = one + 6.0;
        }
        let _ = writeln!(
            s,
            r#"<text x="{text_x:.1}" y="{:.1}" font-size="12" fill="{INK}">{share_text}</text>"#,
            bar_y + 15.0,
        );
    }

    // The 1.0 line last, so it sits on top of the bars it judges.
    let one = x_of(1.0);
    let _ = writeln!(
        s,
        r#"<line x1="{one:.1}" y1="{:.1}" x2="{one:.1}" y2="{bottom}" stroke="{INK}" stroke-width="2"/>
<text x="{one:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{INK}">1.0 = target</text>"#,
        TOP - 8.0,
        TOP - 12.0,
    );
    s.push_str("</svg>\n");
    s
}

/// Text for SVG content: `&`, `<` and `>` would otherwise be read as markup, and `"`
/// is escaped too in case a label ever ends up in an attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}
