//! # Acceptance test harness
//!
//! Drives the real `terraform` CLI against the freshly built provider, in the spirit of
//! HashiCorp's terraform-plugin-testing: a test is a list of [`Step`]s (configuration, expected
//! plan actions, state checks, expected errors, import-and-verify), and [`run`] walks them in
//! a fresh working directory, checks that every apply leaves an empty plan, destroys everything
//! at the end and checks that the provider's `state_dir` is empty.
//!
//! The provider reaches Terraform through a `filesystem_mirror` CLI configuration, as a
//! release would through a registry: `terraform init` installs it and writes the lock file.
//! Every other provider source is excluded, and `CHECKPOINT_DISABLE=1` keeps Terraform off the
//! network.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`) and a `terraform`:
//! `$SAFEBOX_TERRAFORM`, else the path `scripts/setup` wrote to `.bin/terraform-path`, else
//! `terraform` on PATH.

pub mod aws;
pub mod governed;
pub mod inputs;
pub mod kms_policy;
pub mod processes;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The provider's address, as configurations name it.
pub const PROVIDER_SOURCE: &str = "safebots/safebox";
/// The version the test mirror serves: the workspace's own, as a release would be.
const MIRROR_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The workspace's own temporary folder, for the processes it runs.
const TMP: &str = ".tmp";

/// What a plan should do to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create it.
    Create,
    /// Change it in place.
    Update,
    /// Destroy and create it again.
    Replace,
    /// Destroy it.
    Delete,
    /// Leave it alone.
    NoOp,
}

impl Action {
    fn from_plan(actions: &[Value]) -> Option<Self> {
        let names: Vec<&str> = actions.iter().filter_map(Value::as_str).collect();
        Some(match names.as_slice() {
            ["create"] => Self::Create,
            ["update"] => Self::Update,
            ["delete", "create"] | ["create", "delete"] => Self::Replace,
            ["delete"] => Self::Delete,
            ["no-op"] | ["read"] => Self::NoOp,
            _ => return None,
        })
    }
}

/// A check on a JSON document (a plan or a state), with a description for failures.
pub type Check = Box<dyn Fn(&Value) -> Result<(), String>>;

/// One step of a test.
#[derive(Default)]
pub struct Step {
    /// The HCL after the `terraform` and `provider` blocks the harness writes.
    pub config: String,
    /// Files to write beside the configuration before the step (relative path, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// Expected plan action per resource address; others must be no-ops.
    pub plan: Vec<(&'static str, Action)>,
    /// Checks on `terraform show -json` of the saved plan.
    pub plan_checks: Vec<Check>,
    /// Checks on `terraform show -json` of the state after apply.
    pub checks: Vec<Check>,
    /// When set, planning must fail with output containing every one of these.
    pub expect_error: Vec<&'static str>,
    /// When set, import this address (by its `id`) into a fresh directory and verify that
    /// the imported state equals the applied one.
    pub import: Option<&'static str>,
    /// Extra provider block arguments (HCL lines).
    pub provider: String,
}

/// A Terraform working directory with the test provider installed.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// Where Terraform runs: the folder itself, or an example inside a copied tree.
    workdir: PathBuf,
    initialised: bool,
    files: Vec<(String, Vec<u8>)>,
    state_dir: PathBuf,
}

struct Setup {
    terraform: PathBuf,
    cli_config: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let terraform = std::env::var_os("SAFEBOX_TERRAFORM")
            .map(PathBuf::from)
            .or_else(|| {
                fs::read_to_string(workspace_root().join(".bin/terraform-path"))
                    .ok()
                    .map(|p| PathBuf::from(p.trim()))
            })
            .unwrap_or_else(|| PathBuf::from("terraform"));
        let cli_config = provider_mirror(&provider_binary());
        Setup { terraform, cli_config }
    })
}

/// Lays out a `filesystem_mirror` beside the built provider (in `target/<profile>/`) that
/// serves it through a symbolic link, and returns its CLI configuration. The mirror is the
/// same for every test process, so it is (re)written in place with atomic renames rather
/// than made per process: a static's temporary folder is never dropped, and a copy of the
/// provider per test binary used to fill the disk.
fn provider_mirror(provider: &Path) -> PathBuf {
    let mirror = provider.parent().expect("target profile dir").join("terraform-mirror");
    let platform_dir = mirror
        .join("registry.terraform.io")
        .join(PROVIDER_SOURCE)
        .join(MIRROR_VERSION)
        .join("linux_amd64");
    fs::create_dir_all(&platform_dir).expect("mirror layout");
    let replace = |name: &str, write: &dyn Fn(&Path) -> std::io::Result<()>| {
        let target = platform_dir.join(name);
        let staged = platform_dir.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&staged);
        write(&staged)
            .and_then(|()| fs::rename(&staged, &target))
            .unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
    };
    replace(&format!("terraform-provider-safebox_v{MIRROR_VERSION}"), &|at| {
        std::os::unix::fs::symlink(provider, at)
    });
    let cli_config = mirror.join("terraform.rc");
    let text = format!(
        "provider_installation {{\n  filesystem_mirror {{\n    path    = {path:?}\n    include = [\"{PROVIDER_SOURCE}\"]\n  }}\n  direct {{\n    exclude = [\"*/*/*\"]\n  }}\n}}\n",
        path = mirror.display().to_string()
    );
    let staged = mirror.join(format!(".terraform.rc.{}", std::process::id()));
    fs::write(&staged, text)
        .and_then(|()| fs::rename(&staged, &cli_config))
        .expect("CLI config");
    cli_config
}

/// The freshly built binary `name` in the target directory these tests were built into.
///
/// # Panics
/// With one line saying to build, when the binary is missing or older than a source it is
/// built from ([`stale_source`]): `cargo test` alone never tests a stale provider or CLI.
#[must_use]
pub fn built_binary(name: &str) -> PathBuf {
    static CHECKED: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Mutex::default);
    if let Some(path) = checked.lock().expect("binary cache").get(name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    if let Some(why) = stale_source(&path, workspace_root()) {
        panic!(
            "{} is stale ({why}): run `cargo build --workspace --bins` (scripts/test does) before the acceptance tests",
            path.display()
        );
    }
    // Checked once per test process; the check holds no lock, so a failure is this line in
    // every test that needs the binary, never a poisoned mutex.
    checked
        .lock()
        .expect("binary cache")
        .insert(name.to_owned(), path.clone());
    path
}

/// The real AWS Nitro documents of `shared/fixtures/nitro`, which live outside the repository,
/// in the `shared/` folder beside its checkout.
///
/// # Panics
/// With one line saying where the folder must be, when it is missing.
#[must_use]
pub fn nitro_fixtures() -> PathBuf {
    let dir = workspace_root().join("../shared/fixtures/nitro");
    assert!(
        dir.is_dir(),
        "the real Nitro documents these tests need are missing at {}: put the shared/ folder (shared/fixtures/nitro) beside the repository checkout, at ../shared from its root (README, Tests)",
        dir.display()
    );
    dir
}

/// The repository checkout these tests belong to.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

/// Why the binary at `binary` is older than the sources it is built from, if it is: a source
/// file changed after it was linked, is gone, or belongs to another checkout than `root`.
///
/// The sources are the ones cargo lists in the binary's dep-info file (`<binary>.d`): every
/// `.rs`, `.proto`, `build.rs` and `include_bytes!` input of the workspace crates it links
/// (for the provider: provider/, safebox/, agent/, aws/, proto/; for the CLI: cli/, safebox/,
/// aws/), and nothing it does not link, so a change to the CLI never makes the provider
/// "stale" in a way no build can fix. A new module is caught through the file that declares
/// it. `Cargo.toml` and `Cargo.lock` are left out on purpose: cargo relinks only when their
/// content changes what is built, so their modification time says nothing, and a merely
/// touched lock file would make this check fail for good.
#[must_use]
pub fn stale_source(binary: &Path, root: &Path) -> Option<String> {
    let built = match fs::metadata(binary).and_then(|m| m.modified()) {
        Ok(built) => built,
        Err(e) => return Some(format!("cannot read its modification time: {e}")),
    };
    let dep_info = binary.with_file_name(format!(
        "{}.d",
        binary.file_name().unwrap_or_default().to_string_lossy()
    ));
    let Ok(listing) = fs::read_to_string(&dep_info) else {
        return Some(format!(
            "cargo's list of its sources, {}, is missing",
            dep_info.display()
        ));
    };
    // One make rule, `target: source source ...`, with spaces inside paths escaped as `\ `.
    let rule = listing.lines().next().unwrap_or_default();
    let sources = rule.split_once(": ").map_or("", |(_, sources)| sources);
    let unescaped = sources.replace("\\ ", "\u{0}");
    for source in unescaped
        .split_whitespace()
        .map(|s| PathBuf::from(s.replace('\u{0}', " ")))
    {
        if !source.starts_with(root) {
            return Some(format!(
                "built from {}, not from this checkout {}",
                source.display(),
                root.display()
            ));
        }
        match fs::metadata(&source).and_then(|m| m.modified()) {
            Ok(changed) if changed > built => {
                let after = changed.duration_since(built).unwrap_or_default().as_secs();
                return Some(format!("{} changed {after} s after it was built", source.display()));
            }
            Ok(_) => {}
            Err(_) => return Some(format!("its source {} is gone", source.display())),
        }
    }
    None
}

fn provider_binary() -> PathBuf {
    built_binary("terraform-provider-safebox")
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// An empty working directory.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("workspace dir");
        let state_dir = dir.path().join("safebox-state");
        fs::create_dir(dir.path().join(TMP)).expect("workspace temp dir");
        Self {
            workdir: dir.path().to_path_buf(),
            dir,
            initialised: false,
            files: Vec::new(),
            state_dir,
        }
    }

    /// A copy of the folders `trees` of the repository at `root` (so relative module sources
    /// resolve), running Terraform in `example` (relative to `root`), whose provider block
    /// keeps its state in `state_dir` relative to the example.
    #[must_use]
    pub fn from_tree(root: &Path, trees: &[&str], example: &Path, state_dir: &str) -> Self {
        let mut ws = Self::new();
        for tree in trees {
            let target = ws.dir.path().join(tree);
            fs::create_dir_all(&target).expect("create tree");
            copy_tree(&root.join(tree), &target);
        }
        ws.workdir = ws.dir.path().join(example);
        ws.state_dir = ws.workdir.join(state_dir);
        ws
    }

    /// The working directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.workdir
    }

    /// The provider's `state_dir` for this workspace.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// Writes `main.tf`: the provider requirement, a provider block with this workspace's
    /// `state_dir` and `provider_extra`, then `config`.
    pub fn write_config(&self, provider_extra: &str, config: &str) {
        let main = format!(
            "terraform {{\n  required_providers {{\n    safebox = {{ source = \"{PROVIDER_SOURCE}\" }}\n  }}\n}}\n\nprovider \"safebox\" {{\n  state_dir = {state_dir:?}\n{provider_extra}\n}}\n\n{config}\n",
            state_dir = self.state_dir().display().to_string(),
        );
        fs::write(self.workdir.join("main.tf"), main).expect("write main.tf");
    }

    /// Writes a file beside the configuration.
    pub fn write_file(&mut self, relative: &str, content: impl AsRef<[u8]>) {
        let path = self.workdir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(path, content.as_ref()).expect("write file");
        self.files.push((relative.to_owned(), content.as_ref().to_vec()));
    }

    /// Runs `terraform args...` here.
    pub fn terraform(&mut self, args: &[&str]) -> Output {
        if !self.initialised && args.first() != Some(&"init") {
            self.initialised = true;
            let out = self.terraform(&["init", "-input=false", "-no-color"]);
            assert!(out.status.success(), "terraform init failed:\n{}", text(&out));
        }
        self.command(args).output().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}. Run scripts/setup first.",
                setup().terraform.display()
            )
        })
    }

    /// The command `terraform args...` here, to run as the caller likes (in the background,
    /// say). The workspace must be initialised first.
    pub fn command(&self, args: &[&str]) -> Command {
        let setup = setup();
        let mut command = Command::new(&setup.terraform);
        command
            .args(args)
            .current_dir(&self.workdir)
            .env("TF_CLI_CONFIG_FILE", &setup.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            // The provider's build cache and anything else it puts in the temporary folder
            // go with the workspace.
            .env("TMPDIR", self.dir.path().join(TMP))
            .env_remove("TF_LOG")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION");
        command
    }

    /// Runs `terraform args...` and returns its stdout, failing the test if it fails.
    pub fn terraform_ok(&mut self, args: &[&str]) -> String {
        let out = self.terraform(args);
        assert!(
            out.status.success(),
            "terraform {} failed:\n{}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `terraform show -json` of the state.
    pub fn state(&mut self) -> Value {
        serde_json::from_str(&self.terraform_ok(&["show", "-json", "-no-color"])).expect("state JSON")
    }

    /// Whether `terraform plan` proposes no change.
    pub fn plan_is_empty(&mut self) -> Result<(), String> {
        let out = self.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
        match out.status.code() {
            Some(0) => Ok(()),
            _ => Err(format!("expected an empty plan, got:\n{}", text(&out))),
        }
    }

    /// Everything under the provider's `state_dir` but its lock file and its audit log (which
    /// is history: destroy appends to it and never removes it).
    #[must_use]
    pub fn state_dir_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        collect_files(&self.state_dir(), &self.state_dir(), &mut left);
        left.retain(|f| f != ".lock" && f != "audit.log");
        left
    }
}

/// Copies a configuration folder, leaving out what `terraform init` and apply leave behind.
fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read example folder").flatten() {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with(".terraform")
            || name_str == ".safebox"
            || name_str.ends_with(".tfstate")
            || name_str.ends_with(".tfstate.backup")
        {
            continue;
        }
        let target = to.join(&name);
        if entry.path().is_dir() {
            fs::create_dir_all(&target).expect("create folder");
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
        if path.is_dir() {
            collect_files(root, &path, out);
        }
    }
}

/// Whether `output` contains `needle`, ignoring how Terraform wrapped the lines.
#[must_use]
pub fn mentions(output: &str, needle: &str) -> bool {
    let fold = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    fold(output).contains(&fold(needle))
}

/// stdout and stderr of a command, for failure messages.
#[must_use]
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks that `out` is a refusal for `reasons`: the command exited with status 1 (Terraform's
/// and the `safebox` CLI's status for an error; not success, not a signal, not a crash
/// status), and its output mentions every reason ([`mentions`]). Returns the output.
///
/// # Panics
/// When it is not, with the whole output.
#[track_caller]
pub fn assert_refused(out: &Output, reasons: &[&str]) -> String {
    let output = text(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal (exit status 1), got {}:\n{output}",
        out.status
    );
    for reason in reasons {
        assert!(
            mentions(&output, reason),
            "the refusal does not say {reason:?}:\n{output}"
        );
    }
    output
}

/// The `values` of resource `address` in a `terraform show -json` state or plan's
/// `planned_values`.
#[must_use]
pub fn resource_values<'a>(document: &'a Value, address: &str) -> Option<&'a Value> {
    let root = document
        .get("values")
        .or_else(|| document.get("planned_values"))?
        .get("root_module")?;
    find_resource(root, address)
}

fn find_resource<'a>(module: &'a Value, address: &str) -> Option<&'a Value> {
    let here = module
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r.get("address").and_then(Value::as_str) == Some(address))
        .and_then(|r| r.get("values"));
    here.or_else(|| {
        module
            .get("child_modules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|m| find_resource(m, address))
    })
}

/// A check that attribute `pointer` (a JSON pointer into the resource's values, e.g.
/// `/version` or `/signer/0/id`) of `address` equals `expected`.
#[must_use]
pub fn attr_equals(address: &'static str, pointer: &'static str, expected: Value) -> Check {
    Box::new(move |doc| {
        let actual = resource_values(doc, address)
            .and_then(|v| v.pointer(pointer))
            .ok_or_else(|| format!("{address}{pointer} is not set"))?;
        if *actual == expected {
            Ok(())
        } else {
            Err(format!("{address}{pointer} is {actual}, expected {expected}"))
        }
    })
}

/// A check that attribute `pointer` of `address` is a string satisfying `predicate`.
#[must_use]
pub fn attr_matches(
    address: &'static str,
    pointer: &'static str,
    what: &'static str,
    predicate: fn(&str) -> bool,
) -> Check {
    Box::new(move |doc| {
        let actual = resource_values(doc, address)
            .and_then(|v| v.pointer(pointer))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{address}{pointer} is not a known string"))?;
        if predicate(actual) {
            Ok(())
        } else {
            Err(format!("{address}{pointer} = {actual:?} is not {what}"))
        }
    })
}

/// Runs `steps` in a fresh workspace, then destroys everything and checks that nothing is
/// left in the provider's `state_dir`. Returns the workspace for further checks.
pub fn run(steps: Vec<Step>) -> Workspace {
    let mut ws = Workspace::new();
    let mut last_applied = (String::new(), String::new());
    for (index, step) in steps.into_iter().enumerate() {
        let config = (step.provider.clone(), step.config.clone());
        if run_step(&mut ws, index, step) {
            last_applied = config;
        }
    }
    // Destroy with the last configuration that applied: an invalid one cannot even plan.
    ws.write_config(&last_applied.0, &last_applied.1);
    let destroyed = ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(destroyed.status.success(), "destroy failed:\n{}", text(&destroyed));
    let left = ws.state_dir_leftovers();
    assert!(left.is_empty(), "destroy left files in state_dir: {left:?}");
    ws
}

/// Runs one step; returns whether it applied (rather than expecting an error).
fn run_step(ws: &mut Workspace, index: usize, step: Step) -> bool {
    let ctx = |what: &str| format!("step {index}: {what}");
    for (path, content) in &step.files {
        ws.write_file(path, content);
    }
    ws.write_config(&step.provider, &step.config);
    let planned = ws.terraform(&["plan", "-out=step.tfplan", "-input=false", "-no-color"]);
    if !step.expect_error.is_empty() {
        let output = text(&planned);
        assert!(
            planned.status.code() == Some(1),
            "{}",
            ctx(&format!(
                "plan exited with {} but a refusal (exit status 1) was expected:\n{output}",
                planned.status
            ))
        );
        for needle in &step.expect_error {
            assert!(
                mentions(&output, needle),
                "{}",
                ctx(&format!("the error does not mention {needle:?}:\n{output}"))
            );
        }
        return false;
    }
    assert!(
        planned.status.success(),
        "{}",
        ctx(&format!("plan failed:\n{}", text(&planned)))
    );
    let plan: Value =
        serde_json::from_str(&ws.terraform_ok(&["show", "-json", "-no-color", "step.tfplan"])).expect("plan JSON");
    check_plan_actions(&plan, &step.plan).unwrap_or_else(|e| panic!("{}", ctx(&e)));
    for check in &step.plan_checks {
        check(&plan).unwrap_or_else(|e| panic!("{}", ctx(&format!("plan check: {e}"))));
    }
    let applied = ws.terraform(&["apply", "-input=false", "-no-color", "step.tfplan"]);
    assert!(
        applied.status.success(),
        "{}",
        ctx(&format!("apply failed:\n{}", text(&applied)))
    );
    let state = ws.state();
    for check in &step.checks {
        check(&state).unwrap_or_else(|e| panic!("{}", ctx(&format!("state check: {e}"))));
    }
    ws.plan_is_empty()
        .unwrap_or_else(|e| panic!("{}", ctx(&format!("after apply: {e}"))));
    if let Some(address) = step.import {
        verify_import(ws, address, &state).unwrap_or_else(|e| panic!("{}", ctx(&format!("import: {e}"))));
    }
    true
}

fn check_plan_actions(plan: &Value, expected: &[(&'static str, Action)]) -> Result<(), String> {
    let changes = plan
        .get("resource_changes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for change in &changes {
        let address = change.get("address").and_then(Value::as_str).unwrap_or_default();
        let actions = change
            .pointer("/change/actions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let actual = Action::from_plan(&actions).ok_or_else(|| format!("{address}: unexpected actions {actions:?}"))?;
        let wanted = expected
            .iter()
            .find(|(a, _)| *a == address)
            .map_or(Action::NoOp, |(_, action)| *action);
        if actual != wanted {
            return Err(format!("{address}: planned {actual:?}, expected {wanted:?}"));
        }
    }
    for (address, action) in expected {
        let present = changes
            .iter()
            .any(|c| c.get("address").and_then(Value::as_str) == Some(address));
        if !present && *action != Action::NoOp {
            return Err(format!(
                "{address}: expected {action:?}, but the plan does not mention it"
            ));
        }
    }
    Ok(())
}

fn verify_import(ws: &Workspace, address: &str, state: &Value) -> Result<(), String> {
    let original = resource_values(state, address).ok_or("the resource is not in state")?;
    let mut other = Workspace::new();
    for (path, content) in ws.files.clone() {
        other.write_file(&path, content);
    }
    // Same configuration, same state_dir: a second team member importing what exists. Every
    // resource of the state is imported, so references between them resolve.
    let config = fs::read_to_string(ws.path().join("main.tf")).map_err(|e| e.to_string())?;
    fs::write(other.path().join("main.tf"), config).map_err(|e| e.to_string())?;
    for (each, id) in managed_resources(state) {
        let out = other.terraform(&["import", "-input=false", "-no-color", &each, &id]);
        if !out.status.success() {
            return Err(format!("terraform import {each} {id} failed:\n{}", text(&out)));
        }
    }
    let imported_state = other.state();
    let imported = resource_values(&imported_state, address).ok_or("the imported resource is not in state")?;
    if imported != original {
        return Err(format!(
            "imported state differs:\nimported: {imported}\noriginal: {original}"
        ));
    }
    other.plan_is_empty()
}

/// (address, id) of every managed resource in a `terraform show -json` state.
fn managed_resources(state: &Value) -> Vec<(String, String)> {
    state
        .pointer("/values/root_module/resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("mode").and_then(Value::as_str) == Some("managed"))
        .filter_map(|r| {
            Some((
                r.get("address")?.as_str()?.to_owned(),
                r.pointer("/values/id")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}
