//! Labels from a launcher's environment (`--metrics.env-labels`), e.g. `SLURM_JOB_ID` becomes
//! the label `slurm_job_id`, so per-job dashboards work.

/// Label names the agent sets itself; an environment label with one of these names gets an
/// `env_` prefix instead of overwriting it.
const RESERVED: &[&str] = &["name", "id", "pid", "user", "job", "instance", "device", "cpu", "kind", "le", "quantile"];

/// The requested variables present in `/proc/<pid>/environ`, as (label, value) pairs.
/// Absent variables give no label; an unreadable environ gives none (and is logged).
pub fn env_labels(pid: i32, wanted: &[String]) -> Vec<(String, String)> {
    if wanted.is_empty() {
        return Vec::new();
    }
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(raw) => pick(&raw, wanted),
        Err(err) => {
            tracing::warn!(pid, %err, "cannot read the launcher's environment; no env labels");
            Vec::new()
        }
    }
}

/// Select `wanted` from a NUL-separated `KEY=VALUE` block.
pub fn pick(environ: &[u8], wanted: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for var in wanted {
        let found = environ.split(|b| *b == 0).rev().find_map(|entry| {
            let (k, v) = split_entry(entry)?;
            (k == var.as_bytes()).then(|| String::from_utf8_lossy(v).into_owned())
        });
        if let Some(value) = found {
            out.push((label_name(var), value));
        }
    }
    out
}

fn split_entry(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = entry.iter().position(|b| *b == b'=')?;
    Some((&entry[..eq], &entry[eq + 1..]))
}

/// Lower-case, characters outside `[a-z0-9_]` become `_`, a leading digit gets `_`, and the
/// agent's own label names get an `env_` prefix.
pub fn label_name(var: &str) -> String {
    let mut name: String = var
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    if name.starts_with("__") || RESERVED.contains(&name.as_str()) {
        name = format!("env_{}", name.trim_start_matches('_'));
    }
    name
}

/// The variable names of the flag, blanks dropped.
pub fn wanted_vars(flag: &[String]) -> Vec<String> {
    flag.iter().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(label_name("SLURM_JOB_ID"), "slurm_job_id");
        assert_eq!(label_name("PBS.JOB-ID"), "pbs_job_id");
        assert_eq!(label_name("9LIVES"), "_9lives");
        assert_eq!(label_name("USER"), "env_user");
        assert_eq!(label_name("__X"), "env_x");
    }

    #[test]
    fn picks_present_variables_only() {
        let env = b"PATH=/bin\0SLURM_JOB_ID=42\0EMPTY=\0ODD\0SLURM_JOB_USER=al=ice\0";
        let wanted: Vec<String> = ["SLURM_JOB_ID", "MISSING", "SLURM_JOB_USER", "EMPTY"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            pick(env, &wanted),
            vec![
                ("slurm_job_id".to_string(), "42".to_string()),
                ("slurm_job_user".to_string(), "al=ice".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn a_real_process_environment() {
        let mut child = std::process::Command::new("sleep").arg("5").env("APPTHEUS_TEST_ENV_LABEL", "v1").spawn().unwrap();
        // Until the child has exec'd, /proc shows the environment it inherited: wait for that.
        let wanted = ["APPTHEUS_TEST_ENV_LABEL".to_string()];
        let mut got = Vec::new();
        for _ in 0..200 {
            got = env_labels(child.id() as i32, &wanted);
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, vec![("apptheus_test_env_label".to_string(), "v1".to_string())]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(env in proptest::collection::vec(proptest::num::u8::ANY, 0..256), var in "\\PC*") {
            let _ = pick(&env, std::slice::from_ref(&var));
            let n = label_name(&var);
            proptest::prop_assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}
