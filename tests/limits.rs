//! Container caps (`--limits.*`): per user and for the node, root's exemption, a launcher
//! connecting again, and the bound on retained (ended) containers. Launchers run as
//! unprivileged users through `setpriv`: `nobody` (65534) and uids without a name.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const NOBODY: u32 = 65534;
/// Users without a name in /etc/passwd: their `user` label is the number.
const OTHER: u32 = 65533;
const THIRD: u32 = 65532;

/// An agent with `flags` whose socket unprivileged users can reach, and whose directory (for
/// the release files) they can look into.
fn agent_for_users(test: &str, flags: &[&str]) -> Option<Agent> {
    if !privileged(test) || tool("setpriv", test).is_none() {
        return None;
    }
    let agent = Agent::start_with(AgentOptions { extra: flags.iter().map(|f| f.to_string()).collect(), ..Default::default() });
    agent.open_to_all_users();
    Some(agent)
}

/// A file whose creation ends every container waiting for it.
struct Release(PathBuf);

impl Release {
    fn new(agent: &Agent, name: &str) -> Release {
        Release(agent.dir.path().join(name))
    }

    /// The command of a container that runs until the file exists.
    fn waiter(&self) -> Vec<String> {
        let script = r#"while [ ! -e "$0" ]; do sleep 0.1; done"#;
        vec!["sh".into(), "-c".into(), script.into(), self.0.display().to_string()]
    }

    fn now(&self) {
        std::fs::write(&self.0, "").unwrap();
    }
}

/// `n` launchers of `uid` at once: the ids of those placed, the reasons of those refused, and
/// the launchers.
fn launch_many(agent: &mut Agent, uid: u32, n: usize, cmd: &[String]) -> (Vec<String>, Vec<String>, Vec<Child>) {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut children: Vec<Child> = (0..n).map(|_| agent.exec_as(uid, &cmd)).collect();
    let (mut placed, mut refused) = (Vec::new(), Vec::new());
    for child in &mut children {
        match answer(child) {
            Ok(id) => placed.push(id),
            Err(reason) => refused.push(reason),
        }
    }
    (placed, refused, children)
}

fn refused(agent: &Agent, reason: &str) -> f64 {
    agent.scrape().one("apptheus_connections_total", &[("result", "refused"), ("reason", reason)]).unwrap()
}

fn live(agent: &Agent) -> f64 {
    agent.scrape().one("apptheus_containers", &[]).unwrap()
}

/// Container names with a cgroup under the agent's parent now.
fn cgroup_names(agent: &Agent) -> std::collections::BTreeSet<String> {
    agent.live_container_dirs().iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

fn wait_live(agent: &Agent, n: f64, what: &str) {
    wait_for(Duration::from_secs(20), what, || (live(agent) == n).then_some(()));
}

#[test]
fn a_user_gets_exactly_the_per_user_cap_and_no_more() {
    let test = "a_user_gets_exactly_the_per_user_cap_and_no_more";
    let Some(mut agent) = agent_for_users(test, &["--limits.containers-per-user=3"]) else { return };
    let first = Release::new(&agent, "first");
    // Five at once as nobody: three placed, two refused naming the cap.
    let (placed, reasons, _children) = launch_many(&mut agent, NOBODY, 5, &first.waiter());
    assert_eq!(placed.len(), 3, "placed {placed:?}, refused {reasons:?}");
    assert_eq!(reasons.len(), 2);
    for r in &reasons {
        assert!(r.contains("uid 65534") && r.contains("--limits.containers-per-user"), "{r}");
    }
    assert_eq!(refused(&agent, "per_user_limit"), 2.0);
    assert_eq!(agent.scrape().sum("apptheus_connections_total", &[("result", "refused")]), Some(2.0));
    assert_eq!(agent.scrape().one("apptheus_connections_total", &[("result", "accepted")]), Some(3.0));
    // The refused got no cgroup: exactly the placed ones have one.
    wait_live(&agent, 3.0, "three containers");
    let names = cgroup_names(&agent);
    assert_eq!(names, placed.iter().cloned().collect(), "cgroups {names:?}");
    let users = agent.scrape().label_values("container_start_time_seconds", "user");
    assert!(users.iter().all(|u| u == "nobody"), "{users:?}");

    // Another user is still placed.
    let other = Release::new(&agent, "other");
    let (theirs, _, _c) = launch_many(&mut agent, OTHER, 1, &other.waiter());
    assert_eq!(theirs.len(), 1);

    // nobody's containers end: nobody may start as many again, and no more.
    first.now();
    wait_live(&agent, 1.0, "nobody's containers ended");
    let second = Release::new(&agent, "second");
    let (again, reasons, _more) = launch_many(&mut agent, NOBODY, 4, &second.waiter());
    assert_eq!((again.len(), reasons.len()), (3, 1), "placed {again:?}, refused {reasons:?}");
    assert_eq!(refused(&agent, "per_user_limit"), 3.0);

    // Everything ends: no cgroup is left behind.
    second.now();
    other.now();
    wait_for(Duration::from_secs(20), "every cgroup removed", || cgroup_names(&agent).is_empty().then_some(()));
    assert_eq!(live(&agent), 0.0);
}

#[test]
fn the_node_cap_holds_across_users() {
    let test = "the_node_cap_holds_across_users";
    let Some(mut agent) = agent_for_users(test, &["--limits.containers=4", "--limits.containers-per-user=3"]) else { return };
    let release = Release::new(&agent, "all");
    let (a, _, _ca) = launch_many(&mut agent, NOBODY, 2, &release.waiter());
    let (b, _, _cb) = launch_many(&mut agent, OTHER, 2, &release.waiter());
    assert_eq!((a.len(), b.len()), (2, 2));
    // The node is full: a third user, and root, are refused for the node's cap (neither is at
    // a per-user cap).
    let (c, reasons, _cc) = launch_many(&mut agent, THIRD, 2, &release.waiter());
    let (d, root_reasons, _cd) = launch_many(&mut agent, 0, 1, &release.waiter());
    assert!(c.is_empty() && d.is_empty(), "placed beyond the node cap: {c:?} {d:?}");
    for r in reasons.iter().chain(&root_reasons) {
        assert!(r.contains("cap of 4") && r.contains("(--limits.containers)"), "{r}");
    }
    assert_eq!(refused(&agent, "global_limit"), 3.0);
    assert_eq!(refused(&agent, "per_user_limit"), 0.0);
    assert_eq!(agent.scrape().one("apptheus_containers_max", &[]), Some(4.0));
    assert_eq!(cgroup_names(&agent).len(), 4);
    // One user's end frees room for the third.
    let third = Release::new(&agent, "third");
    release.now();
    wait_live(&agent, 0.0, "containers ended");
    let (c, reasons, _cc) = launch_many(&mut agent, THIRD, 3, &third.waiter());
    assert_eq!((c.len(), reasons.len()), (3, 0), "{reasons:?}");
    third.now();
    wait_for(Duration::from_secs(20), "every cgroup removed", || cgroup_names(&agent).is_empty().then_some(()));
}

#[test]
fn root_obeys_the_per_user_cap_only_with_the_flag() {
    let test = "root_obeys_the_per_user_cap_only_with_the_flag";
    let Some(mut agent) = agent_for_users(test, &["--limits.containers-per-user=1"]) else { return };
    let release = Release::new(&agent, "go");
    let (mine, reasons, _c) = launch_many(&mut agent, 0, 3, &release.waiter());
    assert_eq!((mine.len(), reasons.len()), (3, 0), "root is exempt by default: {reasons:?}");
    let (theirs, reasons, _n) = launch_many(&mut agent, NOBODY, 2, &release.waiter());
    assert_eq!((theirs.len(), reasons.len()), (1, 1), "nobody is not");
    release.now();
    drop(agent);

    let Some(mut strict) = agent_for_users(test, &["--limits.containers-per-user=1", "--limits.root-per-user"]) else { return };
    let release = Release::new(&strict, "go");
    let (mine, reasons, _c) = launch_many(&mut strict, 0, 2, &release.waiter());
    assert_eq!((mine.len(), reasons.len()), (1, 1), "{reasons:?}");
    assert!(reasons[0].contains("uid 0 ") && reasons[0].contains("--limits.containers-per-user"), "{}", reasons[0]);
    assert_eq!(refused(&strict, "per_user_limit"), 1.0);
    release.now();
}

/// The same launcher connecting again gets its container: not refused for the cap, not
/// counted twice.
#[test]
fn a_launcher_connecting_again_is_not_a_new_container() {
    let test = "a_launcher_connecting_again_is_not_a_new_container";
    if !privileged(test) {
        return;
    }
    let python = real_python();
    let mut agent = Agent::start_with(AgentOptions {
        trust: vec![python.clone()],
        extra: vec!["--limits.containers-per-user=1".into(), "--limits.root-per-user".into()],
        ..Default::default()
    });
    // Three connections from one process, each answered before the next; it then waits.
    let script = "import socket,sys,json\nkeep=[]\nfor _ in range(3):\n    s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); keep.append(s)\n    a=json.loads(s.makefile().readline()); print(a['status'], a.get('id'), flush=True)\nsys.stdin.readline()";
    let mut child = Command::new(&python).args(["-c", script]).arg(&agent.socket).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    agent.started.push(child.id());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let answers: Vec<String> = (0..3)
        .map(|_| {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            l.trim().to_string()
        })
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0] && a.starts_with("ok ")), "{answers:?}");
    assert!(answers[0].ends_with(&format!("_{}", child.id())), "{answers:?}");
    let m = agent.scrape();
    assert_eq!(m.one("apptheus_containers", &[]), Some(1.0));
    assert_eq!(m.one("apptheus_connections_total", &[("result", "accepted")]), Some(3.0));
    assert_eq!(m.sum("apptheus_connections_total", &[("result", "refused")]), Some(0.0));
    // A second process is a new container, and at the cap.
    let mut second = Command::new(&python)
        .args(["-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(s.makefile().readline().strip())"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agent.started.push(second.id());
    let mut line = String::new();
    BufReader::new(second.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["status"], "refused", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("--limits.containers-per-user"), "{v}");
    second.wait().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n").unwrap();
    child.wait().unwrap();
    wait_for(Duration::from_secs(20), "the container ended", || cgroup_names(&agent).is_empty().then_some(()));
}

#[test]
fn the_oldest_ended_containers_are_dropped_beyond_the_retained_bound() {
    let test = "the_oldest_ended_containers_are_dropped_beyond_the_retained_bound";
    if !privileged(test) {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--limits.retained-containers=2".into(), "--metrics.retention=10m".into()],
        ..Default::default()
    });
    // A running container is never dropped for the bound.
    let mut long = agent.exec(&["sleep", "60"]);
    let long_id = id_of(&long);
    wait_live(&agent, 1.0, "the running container");
    let mut ended = Vec::new();
    for _ in 0..4 {
        let mut short = agent.exec(&["true"]);
        let id = id_of(&short);
        assert!(short.wait().unwrap().success());
        wait_for(Duration::from_secs(10), "the container ended", || {
            agent.scrape().one("container_end_time_seconds", &[("name", &id)]).map(|_| ())
        });
        ended.push(id);
    }
    let m = agent.scrape();
    let names = m.label_values("container_start_time_seconds", "name");
    assert!(names.contains(&long_id), "{names:?}");
    assert!(names.contains(&ended[2]) && names.contains(&ended[3]), "the newest two are kept: {names:?}");
    assert!(!names.contains(&ended[0]) && !names.contains(&ended[1]), "the oldest two are dropped: {names:?}");
    assert_eq!(m.one("apptheus_retained_containers_dropped_total", &[]), Some(2.0));
    assert_eq!(m.one("apptheus_containers", &[]), Some(1.0));
    long.kill().unwrap();
    long.wait().unwrap();
}

/// Containers re-adopted after a restart hold their slots: the user is still at the cap.
#[test]
fn readopted_containers_count_against_the_caps() {
    let test = "readopted_containers_count_against_the_caps";
    let Some(mut agent) = agent_for_users(test, &["--limits.containers-per-user=2"]) else { return };
    let release = Release::new(&agent, "go");
    let (placed, _, _c) = launch_many(&mut agent, NOBODY, 2, &release.waiter());
    assert_eq!(placed.len(), 2);
    agent.kill9_and_restart();
    wait_for(Duration::from_secs(10), "both re-adopted", || {
        (agent.log_text().matches("re-adopted a running container").count() == 2).then_some(())
    });
    let (more, reasons, _m) = launch_many(&mut agent, NOBODY, 1, &release.waiter());
    assert!(more.is_empty() && reasons[0].contains("--limits.containers-per-user"), "{more:?} {reasons:?}");
    // When they end, their slots are free again.
    release.now();
    wait_for(Duration::from_secs(20), "the adopted containers ended", || cgroup_names(&agent).is_empty().then_some(()));
    let again = Release::new(&agent, "again");
    let (more, reasons, _m) = launch_many(&mut agent, NOBODY, 2, &again.waiter());
    assert_eq!((more.len(), reasons.len()), (2, 0), "{reasons:?}");
    again.now();
}

/// A placement that fails gives its slot back.
#[test]
fn a_failed_placement_gives_its_slot_back() {
    let test = "a_failed_placement_gives_its_slot_back";
    if !privileged(test) || !failpoints(test) {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--limits.containers-per-user=1".into(), "--limits.root-per-user".into()],
        env: vec![("FAILPOINTS".into(), "placement::decided=1*sleep(3000)".into())],
        ..Default::default()
    });
    // The first launcher holds the only slot while its placement waits, and dies meanwhile.
    let mut doomed = agent.exec(&["sleep", "60"]);
    wait_for(Duration::from_secs(10), "the placement under way", || agent.log_text().contains("failpoint reached").then_some(()));
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    wait_for(Duration::from_secs(10), "the placement refused", || {
        (agent.scrape().one("apptheus_connections_total", &[("result", "refused"), ("reason", "gone")]) == Some(1.0)).then_some(())
    });
    let release = Release::new(&agent, "go");
    let (placed, reasons, _c) = launch_many(&mut agent, 0, 1, &release.waiter());
    assert_eq!((placed.len(), reasons.len()), (1, 0), "the slot was not given back: {reasons:?}");
    release.now();
    wait_for(Duration::from_secs(20), "every cgroup removed", || cgroup_names(&agent).is_empty().then_some(()));
}
