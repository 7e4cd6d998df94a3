//! Every example applies as written, plans empty afterwards and destroys cleanly, leaving no
//! process behind. Examples of the aws backend run against a local moto server
//! (`TF_VAR_aws_endpoint`), with fixed test credentials and the instance metadata service
//! disabled.
//!
//! `examples/attestable-ami` boots real disks under QEMU from inputs that
//! `scripts/attestable-ami-inputs` makes (scripts/test runs it): without them it is skipped with
//! one line saying so, and under `CI=true` the test fails instead.

use std::path::{Path, PathBuf};

use safebox_acceptance_tests::aws::Moto;
use safebox_acceptance_tests::{inputs, processes, Workspace};

fn examples_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .canonicalize()
        .expect("the examples folder")
}

/// The example folders: every folder under examples/ that holds a `.tf` file.
fn example_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        if entries.iter().any(|p| p.extension().is_some_and(|e| e == "tf")) {
            out.push(dir.to_path_buf());
        }
        for entry in entries
            .iter()
            .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        {
            walk(entry, out);
        }
    }
    let mut out = Vec::new();
    walk(&examples_root(), &mut out);
    out
}

/// Generated inputs an example needs before it applies, and the script that makes them.
const GENERATED: [(&str, &str, &str); 1] = [(
    "attestable-ami",
    "attestable-ami.auto.tfvars",
    "scripts/attestable-ami-inputs",
)];

/// Whether `dir` can be applied: its generated inputs exist (or, missing, fail under CI).
fn ready(dir: &Path) -> bool {
    for (example, file, script) in GENERATED {
        if dir.ends_with(example) && !dir.join(file).is_file() {
            inputs::missing(&format!("{} has no {file}: run {script}", dir.display()));
            return false;
        }
    }
    true
}

fn apply_and_destroy(dir: &Path) {
    let started = std::time::Instant::now();
    let root = examples_root().parent().expect("the repository").to_path_buf();
    let relative = dir.strip_prefix(&root).expect("an example inside the repository");
    let mut ws = Workspace::from_tree(&root, &["examples", "modules"], relative, ".safebox");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    let left = ws.state_dir_leftovers();
    assert!(left.is_empty(), "{}: destroy left {left:?}", dir.display());
    let running = processes::working_in(ws.path());
    assert!(
        running.is_empty(),
        "{}: destroy left processes {running:?}",
        dir.display()
    );
    println!(
        "{}: applied and destroyed in {:.1}s",
        relative.display(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_example_applies_and_destroys_cleanly() {
    let moto = Moto::start();
    std::env::set_var("TF_VAR_aws_endpoint", &moto.endpoint);
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let dirs = example_dirs();
    assert!(
        dirs.iter().any(|d| d.ends_with("quickstart")),
        "no quickstart among {dirs:?}"
    );
    for dir in dirs.into_iter().filter(|dir| ready(dir)) {
        apply_and_destroy(&dir);
    }
}
