//! Job identity from the caller's cgroup path, read before placement: Slurm's layouts are built
//! in (`.../job_42/step_0/...` on v2, `/slurm/uid_0/job_42/step_0/task_0` on v1), a site adds its
//! own with `--metrics.cgroup-labels` (a regex with one named group per label). A user cannot
//! forge these: only root (slurmstepd, systemd) makes those cgroups, whereas environment labels
//! are whatever the user exported.

use anyhow::{bail, Context, Result};
use regex::Regex;

/// Slurm job and step wherever they stand in the path (Slurm's tree may itself sit below
/// another cgroup). `slurm_job_id` is the name `--metrics.env-labels=SLURM_JOB_ID` gives, so
/// dashboards need one key.
const SLURM: &str = r"(?:^|/)job_(?P<slurm_job_id>[0-9]+)(?:/step_(?P<slurm_step_id>[^/]+))?(?:/|$)";

pub struct CgroupLabels {
    patterns: Vec<Regex>,
}

impl CgroupLabels {
    /// The built-in patterns plus the site's; a site pattern that does not compile or names no
    /// group is an error.
    pub fn new(site: &[String]) -> Result<CgroupLabels> {
        let mut patterns = vec![Regex::new(SLURM).context("built-in Slurm pattern")?];
        for text in site.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            // regex's message draws a caret under the pattern over several lines: keep one.
            let re = Regex::new(text).map_err(|e| {
                let why = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
                anyhow::anyhow!("--metrics.cgroup-labels {text:?} does not compile: {why}")
            })?;
            let names: Vec<&str> = re.capture_names().flatten().collect();
            if names.is_empty() {
                bail!("--metrics.cgroup-labels {text:?} has no named group (?P<label>...) to take a label from");
            }
            if let Some(bad) = names.iter().find(|n| crate::placement::environ::label_name(n) != **n) {
                bail!("--metrics.cgroup-labels {text:?}: group {bad:?} is not a usable label name (lower case, digits, '_')");
            }
            patterns.push(re);
        }
        Ok(CgroupLabels { patterns })
    }

    /// Labels from the caller's cgroup paths (one per hierarchy, primary first): for each label
    /// the first path and pattern that give it a non-empty value.
    pub fn labels(&self, cgroup_paths: &[String]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for path in cgroup_paths {
            for re in &self.patterns {
                let Some(caps) = re.captures(path) else { continue };
                for name in re.capture_names().flatten() {
                    let Some(value) = caps.name(name).map(|m| m.as_str()).filter(|v| !v.is_empty()) else { continue };
                    if !out.iter().any(|(n, _)| n == name) {
                        out.push((name.to_string(), value.to_string()));
                    }
                }
            }
        }
        out
    }
}

/// Environment labels joined with cgroup labels: on the same name the cgroup's value wins (the
/// user controls the environment, not the cgroup tree).
pub fn merge(cgroup: Vec<(String, String)>, env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out = cgroup;
    for (name, value) in env {
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(site: &[&str], paths: &[&str]) -> Vec<(String, String)> {
        let site: Vec<String> = site.iter().map(|s| s.to_string()).collect();
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        CgroupLabels::new(&site).unwrap().labels(&paths)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn slurm_v2_layout_below_another_cgroup() {
        assert_eq!(
            labels(&[], &["/system.slice/slurmstepd.scope/job_42/step_0/user/task_0"]),
            pairs(&[("slurm_job_id", "42"), ("slurm_step_id", "0")])
        );
        // as in tests, where Slurm's tree sits below the test's own cgroup
        assert_eq!(
            labels(&[], &["/process_api/abc/t1/job_42/step_batch/user/task_0"]),
            pairs(&[("slurm_job_id", "42"), ("slurm_step_id", "batch")])
        );
    }

    #[test]
    fn slurm_v1_layout_and_the_job_alone() {
        assert_eq!(
            labels(&[], &["/", "/slurm/uid_1000/job_7/step_extern/task_0"]),
            pairs(&[("slurm_job_id", "7"), ("slurm_step_id", "extern")])
        );
        assert_eq!(labels(&[], &["/slurm/uid_1000/job_7"]), pairs(&[("slurm_job_id", "7")]));
        assert!(labels(&[], &["/user.slice/user-1000.slice/session-3.scope", "/jobs_7/x", "/blue_job_7"]).is_empty());
    }

    #[test]
    fn site_patterns_add_labels_and_the_first_value_wins() {
        let site = [r"/pbs\.slice/(?P<pbs_job_id>[0-9]+)\.scope"];
        assert_eq!(labels(&site, &["/pbs.slice/1234.scope"]), pairs(&[("pbs_job_id", "1234")]));
        assert_eq!(
            labels(&[], &["/a/job_1/x", "/b/job_2/x"]),
            pairs(&[("slurm_job_id", "1")])
        );
    }

    #[test]
    fn bad_site_patterns_are_refused() {
        for bad in ["(", "job_[0-9]+", "(?P<Job>x)"] {
            assert!(CgroupLabels::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cgroup_wins_over_the_environment() {
        let merged = merge(pairs(&[("slurm_job_id", "42")]), pairs(&[("slurm_job_id", "666"), ("slurm_job_user", "al")]));
        assert_eq!(merged, pairs(&[("slurm_job_id", "42"), ("slurm_job_user", "al")]));
    }
}
