//! The bench binary re-run under `valgrind --tool=callgrind`: instructions counted, which
//! repeat from run to run where times on a shared machine do not.

/// Instructions `callgrind` counted in this bench binary run with `args`: only inside
/// functions matching `toggle` (a `--toggle-collect` pattern), or the whole process when
/// `None`. `None` when valgrind is missing or the run failed.
pub fn count_self(args: &[&str], toggle: Option<&str>) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out_file = std::env::temp_dir().join(format!(
        "callgrind-{}-{}.out",
        std::process::id(),
        args.join("-").replace(['/', ':'], "_")
    ));
    let mut valgrind = std::process::Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()));
    if let Some(toggle) = toggle {
        valgrind
            .arg(format!("--toggle-collect={toggle}"))
            .arg("--collect-atstart=no");
    }
    let out = valgrind.arg(&exe).args(args).output().ok()?;
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "==123== Collected : 456789"
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse::<f64>().ok())
}
