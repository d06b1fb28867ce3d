//! Named groups of container families for `--metrics.disable` (cAdvisor's `--disable_metrics`
//! is the model): a site drops what it does not chart, and the agent skips the cgroup files
//! that only a dropped group needs. The lifecycle series (start, last seen, end) are always
//! exported: they identify a container.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Cpu,
    Memory,
    Io,
    Pressure,
    Processes,
    Network,
    Sched,
    Legacy,
}

impl Group {
    pub const ALL: &[Group] =
        &[Group::Cpu, Group::Memory, Group::Io, Group::Pressure, Group::Processes, Group::Network, Group::Sched, Group::Legacy];

    pub fn name(self) -> &'static str {
        match self {
            Group::Cpu => "cpu",
            Group::Memory => "memory",
            Group::Io => "io",
            Group::Pressure => "pressure",
            Group::Processes => "processes",
            Group::Network => "network",
            Group::Sched => "sched",
            Group::Legacy => "legacy",
        }
    }

    /// For clap: a group by name, or one line naming the known groups.
    pub fn parse(text: &str) -> Result<Group, String> {
        Group::ALL.iter().copied().find(|g| g.name() == text.trim()).ok_or_else(|| {
            let known: Vec<&str> = Group::ALL.iter().map(|g| g.name()).collect();
            format!("unknown metric group {text:?}; known groups: {}", known.join(", "))
        })
    }
}

/// The groups a site turned off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disabled(Vec<Group>);

impl Disabled {
    pub fn new(groups: &[Group]) -> Disabled {
        Disabled(groups.to_vec())
    }

    pub fn has(&self, group: Group) -> bool {
        self.0.contains(&group)
    }

    /// Whether a family of `group` is exported (`None`: the lifecycle series, always).
    pub fn exports(&self, group: Option<Group>) -> bool {
        group.is_none_or(|g| !self.has(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::exposition::families::{Family, CONTAINER, LEGACY};

    #[test]
    fn every_group_names_itself_and_parses_back() {
        for &g in Group::ALL {
            assert_eq!(Group::parse(g.name()), Ok(g));
        }
        let err = Group::parse("cpus").unwrap_err();
        assert!(err.contains("\"cpus\"") && err.contains("cpu, memory, io, pressure, processes, network, sched, legacy"), "{err}");
    }

    #[test]
    fn every_group_holds_a_family_and_lifecycle_series_stay() {
        let all: Vec<&Family> = CONTAINER.iter().chain(LEGACY).collect();
        for &g in Group::ALL {
            assert!(all.iter().any(|f| f.group == Some(g)), "group {} is empty", g.name());
        }
        let everything = Disabled::new(Group::ALL);
        let kept: Vec<&str> = all.iter().filter(|f| everything.exports(f.group)).map(|f| f.name).collect();
        assert_eq!(kept, ["container_start_time_seconds", "container_last_seen", "container_end_time_seconds"]);
        assert!(Disabled::default().exports(Some(Group::Sched)));
        assert!(!Disabled::new(&[Group::Sched]).exports(Some(Group::Sched)));
    }
}
