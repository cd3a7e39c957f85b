//! Results of one bench binary, written to `target/bench-report/<bench>.json` for
//! `benches/report.rs` to turn into the Markdown table and the SVG chart.

use std::path::PathBuf;

use serde_json::{json, Value};

/// The rows one bench binary measured, in the order it measured them.
pub struct Report {
    bench: &'static str,
    rows: Vec<Value>,
}

/// A target a figure is held to: `value <= max` or `value >= min`.
#[derive(Clone, Copy)]
pub enum Target {
    /// No target: reported for context.
    None,
    /// The figure must not exceed this.
    AtMost(f64),
    /// The figure must reach at least this.
    AtLeast(f64),
}

impl Report {
    /// An empty report of the bench binary `bench`.
    pub fn new(bench: &'static str) -> Self {
        Self {
            bench,
            rows: Vec::new(),
        }
    }

    /// One figure: `section` groups rows in the table (one per issue item), `what` says
    /// what was measured, `unit` how to read `value`.
    pub fn row(&mut self, section: &str, what: &str, value: f64, unit: &str, target: Target) {
        let (target_text, met) = match target {
            Target::None => (String::new(), Value::Null),
            Target::AtMost(max) => (format!("≤ {}", trim(max)), json!(value <= max)),
            Target::AtLeast(min) => (format!("≥ {}", trim(min)), json!(value >= min)),
        };
        let verdict = match met.as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "  [{section}] {what}: {} {unit} {target_text} {verdict}",
            trim(value)
        );
        self.rows.push(json!({
            "section": section,
            "what": what,
            "value": value,
            "unit": unit,
            "target": target_text,
            "met": met,
        }));
    }

    /// Writes `target/bench-report/<bench>.json` (or under `CARGO_TARGET_DIR`).
    pub fn write(&self) {
        let dir = report_dir();
        std::fs::create_dir_all(&dir).expect("create the bench-report directory");
        let path = dir.join(format!("{}.json", self.bench));
        let body = json!({ "bench": self.bench, "rows": self.rows });
        std::fs::write(&path, serde_json::to_vec_pretty(&body).unwrap())
            .expect("write the bench report");
        println!("wrote {}", path.display());
    }
}

/// `target/bench-report`, honouring `CARGO_TARGET_DIR`.
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

/// A number with at most three significant decimals and no trailing zeros.
pub fn trim(x: f64) -> String {
    let s = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}
