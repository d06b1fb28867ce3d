//! Labels from a launcher's environment (`--metrics.env-labels`), e.g. `SLURM_JOB_ID` becomes
//! the label `slurm_job_id`, so per-job dashboards work.

/// Label names the agent sets itself; an environment label with one of these names gets an
/// `env_` prefix instead of overwriting it.
const RESERVED: &[&str] = &["name", "id", "pid", "user", "image", "job", "instance", "device", "cpu", "kind", "le", "quantile"];

/// How far up the process tree a variable is looked for: the launcher, its parent, and so on.
/// Apptainer's starter runs with a scrubbed environment, so `SLURM_JOB_ID` is found in the job
/// script's shell above it, not in the starter.
const MAX_GENERATIONS: usize = 8;
/// The most of one process's environment that is read: a caller with a huge environment must
/// not make the agent allocate without bound. Variables past it are not seen.
pub const ENVIRON_CAP: usize = 256 * 1024;

/// The requested variables, each from the nearest of the launcher and its ancestors that has it
/// (same real uid, never pid 1 or the agent, at most [`MAX_GENERATIONS`]), as (label, value)
/// pairs in `wanted` order. Absent variables give no label; an unreadable environ gives none
/// (and is logged).
pub fn env_labels(pid: i32, wanted: &[String]) -> Vec<(String, String)> {
    if wanted.is_empty() {
        return Vec::new();
    }
    let agent = std::process::id() as i32;
    let Some(uid) = real_uid(pid) else {
        tracing::warn!(pid, "cannot read the launcher's status; no env labels");
        return Vec::new();
    };
    let mut values: Vec<Option<String>> = vec![None; wanted.len()];
    let mut current = pid;
    for _ in 0..MAX_GENERATIONS {
        match read_environ_capped(current, ENVIRON_CAP) {
            Ok(raw) => {
                for (var, value) in wanted.iter().zip(values.iter_mut()) {
                    if value.is_none() {
                        *value = find(&raw, var);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(pid = current, %err, "cannot read a launcher's environment; no env labels from it");
                break;
            }
        }
        if values.iter().all(Option::is_some) {
            break;
        }
        match parent_of(current) {
            Some(parent) if parent > 1 && parent != agent && real_uid(parent) == Some(uid) => current = parent,
            _ => break,
        }
    }
    wanted
        .iter()
        .zip(values)
        .filter_map(|(var, value)| Some((label_name(var), value?)))
        .collect()
}

/// `/proc/<pid>/environ`, at most `cap` bytes; a cut-off last entry is dropped.
pub(super) fn read_environ_capped(pid: i32, cap: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(format!("/proc/{pid}/environ"))?;
    let mut raw = Vec::new();
    file.take(cap as u64 + 1).read_to_end(&mut raw)?;
    if raw.len() > cap {
        let keep = raw[..cap].iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
        raw.truncate(keep);
        tracing::debug!(pid, cap, "environment larger than the cap: only its first part is read");
    }
    Ok(raw)
}

fn real_uid(pid: i32) -> Option<u32> {
    procfs::process::Process::new(pid).ok()?.status().ok().map(|s| s.ruid)
}

fn parent_of(pid: i32) -> Option<i32> {
    procfs::process::Process::new(pid).ok()?.stat().ok().map(|s| s.ppid)
}

/// The value of `var` in a NUL-separated `KEY=VALUE` block (the last entry wins, as getenv sees
/// a duplicated name only once).
fn find(environ: &[u8], var: &str) -> Option<String> {
    find_bytes(environ, var).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// [`find`] without decoding the value.
pub(super) fn find_bytes<'a>(environ: &'a [u8], var: &str) -> Option<&'a [u8]> {
    environ.split(|b| *b == 0).rev().find_map(|entry| {
        let (k, v) = split_entry(entry)?;
        (k == var.as_bytes()).then_some(v)
    })
}

/// Select `wanted` from a NUL-separated `KEY=VALUE` block.
pub fn pick(environ: &[u8], wanted: &[String]) -> Vec<(String, String)> {
    wanted.iter().filter_map(|var| Some((label_name(var), find(environ, var)?))).collect()
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

    #[test]
    fn a_variable_comes_from_the_nearest_ancestor_that_has_it() {
        // sh (has both) -> sh (scrubbed: env -i, like Apptainer's starter) -> sleep
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "env -i APPTHEUS_TEST_INNER=in sh -c 'sleep 5' & wait"])
            .env("APPTHEUS_TEST_OUTER", "out")
            .env("APPTHEUS_TEST_INNER", "shadowed")
            .spawn()
            .unwrap();
        let wanted = ["APPTHEUS_TEST_OUTER".to_string(), "APPTHEUS_TEST_INNER".to_string(), "APPTHEUS_TEST_NONE".to_string()];
        let mut got = Vec::new();
        for _ in 0..300 {
            if let Some(sleeper) = crate::placement::proctree::descendants(shell.id() as i32).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
            }) {
                got = env_labels(sleeper, &wanted);
                if got.len() == 2 {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(
            got,
            vec![
                ("apptheus_test_outer".to_string(), "out".to_string()),
                ("apptheus_test_inner".to_string(), "in".to_string()),
            ]
        );
    }

    #[test]
    fn a_huge_environment_is_read_up_to_the_cap() {
        // One string may not pass 128 KiB (MAX_ARG_STRLEN): four of 100 kB make 400 kB.
        let big = "x".repeat(100_000);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env_clear()
            .env("APPTHEUS_TEST_EARLY", "seen")
            .envs((1..=4).map(|i| (format!("APPTHEUS_TEST_HUGE_{i}"), big.clone())))
            .spawn()
            .unwrap();
        let mut raw = Vec::new();
        for _ in 0..200 {
            raw = read_environ_capped(child.id() as i32, ENVIRON_CAP).unwrap_or_default();
            if find(&raw, "APPTHEUS_TEST_EARLY").is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(raw.len() <= ENVIRON_CAP);
        // the entry cut by the cap is dropped whole, never a truncated value
        assert_eq!(find(&raw, "APPTHEUS_TEST_HUGE_1").map(|v| v.len()), Some(100_000));
        assert_eq!(find(&raw, "APPTHEUS_TEST_HUGE_3"), None);
        assert_eq!(find(&raw, "APPTHEUS_TEST_EARLY").as_deref(), Some("seen"));
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
