//! Replays the committed fuzz corpus and every crasher the fuzzer ever found
//! (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`) through the same entry points the
//! fuzz targets call, so each stays a regression test without a fuzzer. `scripts/fuzz` runs
//! the fuzzer itself.

use std::fs;
use std::path::Path;

use tower_credits::fuzzing;

/// A fuzz entry point.
type EntryPoint = fn(&[u8]);

/// Every fuzz target, by the name of its entry point and of its corpus folders.
const TARGETS: &[(&str, EntryPoint)] = &[
    ("authorization_header", fuzzing::authorization_header),
    ("api_key_header", fuzzing::api_key_header),
    ("account_id", fuzzing::account_id),
    ("hold_id", fuzzing::hold_id),
    ("idempotency_key", fuzzing::idempotency_key),
    ("route_label", fuzzing::route_label),
    ("route_matching", fuzzing::route_matching),
    ("grpc_status", fuzzing::grpc_status),
    ("api_key_hash_hex", fuzzing::api_key_hash_hex),
];

/// Runs `target` on every file in `dir` (none when it does not exist); how many ran.
fn replay(dir: &Path, target: EntryPoint) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // libFuzzer's half-written files, and notes like a README, are not inputs.
        if !path.is_file() || name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let data = fs::read(&path).expect("corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("{} fails: {why}", path.display());
        }
        count += 1;
    }
    count
}

#[test]
fn every_target_has_fuzz_targets_file_and_corpus_folder() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut on_disk: Vec<String> = fs::read_dir(fuzz.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz targets and this test's list differ");
}

#[test]
fn corpus_and_artifacts_replay_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for &(name, target) in TARGETS {
        let seeds = replay(&fuzz.join("corpus").join(name), target);
        let crashers = replay(&fuzz.join("artifacts").join(name), target);
        assert!(
            seeds > 0,
            "fuzz/corpus/{name}/ holds no input: the corpus was lost"
        );
        total += seeds + crashers;
    }
    assert!(total >= TARGETS.len());
}
