//! What kind of Terraform run started this provider.
//!
//! `terraform destroy` first makes a normal plan of the whole configuration (Terraform calls
//! it the pre-destroy refresh) and stops at any error in it, even for resources that do not
//! exist and that a destroy will never create. Terraform tells providers nothing about the
//! run, so the provider looks at the command that started it: when it is a destroy, errors in
//! the plan of a resource that would be *created* become warnings. That can never let anything
//! through: a destroy run creates nothing, and every create is checked again (and refused) at
//! apply.

use std::sync::OnceLock;

/// Whether the Terraform command that started this process destroys (`terraform destroy`,
/// `terraform apply -destroy`, `terraform plan -destroy`).
#[must_use]
pub fn is_destroy() -> bool {
    static DESTROY: OnceLock<bool> = OnceLock::new();
    *DESTROY.get_or_init(|| {
        let parent = std::os::unix::process::parent_id();
        std::fs::read(format!("/proc/{parent}/cmdline")).is_ok_and(|cmdline| destroys(cmdline.split(|b| *b == 0)))
    })
}

/// Whether a command line (its arguments) is a destroy run.
fn destroys<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> bool {
    args.any(|arg| arg == b"destroy" || arg == b"-destroy" || arg == b"--destroy")
}

#[cfg(test)]
mod tests {
    use super::destroys;

    #[test]
    fn destroy_runs_are_told_from_others() {
        let run = |line: &str| destroys(line.split(' ').map(str::as_bytes));
        assert!(run("/usr/bin/terraform destroy -auto-approve"));
        assert!(run("terraform apply -destroy -input=false"));
        assert!(run("python3 /repo/.bin/terraform plan -destroy"));
        assert!(!run("terraform apply -auto-approve"));
        assert!(!run("terraform apply destroyed.tfplan"));
        assert!(!run("terraform plan -out=p.tfplan"));
    }
}
