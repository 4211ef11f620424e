//! Nodes as Docker containers on a Docker network of the region's own, one address each; the test process
//! reaches them over the network's bridge, where the host holds the gateway address.
//!
//! The image is made from local files, as `deploy/build-image` makes the release one: a root filesystem of
//! just the shared libraries the `fjord` binary links, imported with `docker import` and tagged by their
//! contents, so it is built once per machine. The binary itself, the node's data dir and its config are
//! bind-mounted at the paths they have here, so a node in a container runs with exactly the arguments it
//! would run with as a plain process — and a data dir on a lose-unsynced-writes filesystem stays one.
//!
//! Faults: `docker kill --signal KILL`, `docker pause` (the cgroup freezer: the whole node stops, as with
//! SIGSTOP), and nftables rules in a container's network namespace (entered with `nsenter`) that drop its
//! packets to and from its peers, or reset a share of its TCP packets to them. A container's namespace
//! lives as long as the container runs, so a node restarted after a fault starts with a whole network.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;

use super::hosts::Launch;
use super::hosts::RegionTag;
use super::hosts::flaky_rule;
use super::hosts::left_by_dead_process;
use super::hosts::output;
use super::hosts::run;

/// Our nftables table in a container's network namespace (Docker keeps its own there, which we leave be).
const TABLE: &str = "inet fjord";

/// One region's Docker network and containers; removed when dropped.
pub struct Network {
    /// The network's name, and the prefix of its containers' names.
    tag: String,
    /// First three octets of every address.
    subnet: String,
    ids: Vec<u64>,
    /// The image the nodes run in.
    image: String,
    /// Nodes whose network namespace holds rules of ours now.
    faulted: Mutex<BTreeSet<u64>>,
}

impl Network {
    /// Creates the region's network (removing what dead test runs left) and, if this machine lacks it, the
    /// image that runs `program`.
    pub fn create(region: RegionTag, ids: &[u64], program: &Path) -> Network {
        remove_leftovers();
        let network = Network {
            tag: region.name(),
            subnet: region.subnet(200),
            ids: ids.to_vec(),
            image: base_image(program),
            faulted: Mutex::default(),
        };
        let subnet = format!("{}.0/24", network.subnet);
        let gateway = format!("{}.254", network.subnet);
        run(&["docker", "network", "create", "--subnet", &subnet, "--gateway", &gateway, &network.tag]);
        network
    }

    /// Node `id`'s address.
    pub fn address(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    fn container(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    /// A `docker run` that starts node `id` in a new container (the one from its last run removed first)
    /// and stays attached to it: the command's stderr is the node's, and it exits when the node does.
    pub fn command(&self, id: u64, launch: &Launch<'_>) -> Command {
        let container = self.container(id);
        let _ = Command::new("docker").args(["rm", "--force", &container]).output();
        let mut command = Command::new("docker");
        command.args(["run", "--name", &container, "--network", &self.tag, "--ip", &self.address(id)]);
        // The node's output reaches the attached client; Docker need not keep a copy.
        command.args(["--log-driver", "none", "--attach", "stdout", "--attach", "stderr"]);
        let program = launch.program.display().to_string();
        command.args(["--volume", &format!("{program}:{program}:ro"), "--entrypoint", &program]);
        for path in &launch.paths {
            let path = path.display();
            command.args(["--volume", &format!("{path}:{path}")]);
        }
        for (key, value) in &launch.env {
            command.args(["--env", &format!("{key}={value}")]);
        }
        command.arg(&self.image).args(&launch.args);
        command
    }

    /// SIGKILL to node `id`'s process; its container stops (and its attached client exits).
    pub fn kill(&self, id: u64) {
        let _ = Command::new("docker").args(["kill", "--signal", "KILL", &self.container(id)]).output();
        self.faulted.lock().unwrap().remove(&id);
    }

    /// Freezes every process of node `id`'s container, or thaws them.
    pub fn pause(&self, id: u64, pause: bool) {
        run(&["docker", if pause { "pause" } else { "unpause" }, &self.container(id)]);
    }

    /// Cuts node `id` off from every other node (clients still reach it): its packets to its peers and
    /// theirs to it are dropped, so connections between them hang until they time out.
    pub fn isolate(&self, id: u64) {
        let peers: Vec<String> = self.ids.iter().filter(|peer| **peer != id).map(|peer| self.address(*peer)).collect();
        let peers = peers.join(", ");
        self.add_rules(
            id,
            &[format!("output ip daddr {{ {peers} }} drop"), format!("input ip saddr {{ {peers} }} drop")],
        );
    }

    /// Makes node `id`'s connections to its peers reset about `percent` % of the TCP packets it sends them.
    pub fn make_flaky(&self, id: u64, percent: u32) {
        let rule = flaky_rule(&format!("ip daddr != {}.254", self.subnet), percent);
        self.add_rules(id, &[format!("output {rule}")]);
    }

    /// Every rule of ours gone from every node's network namespace.
    pub fn heal(&self) {
        let faulted: Vec<u64> = std::mem::take(&mut *self.faulted.lock().unwrap()).into_iter().collect();
        for id in faulted {
            if let Some(pid) = self.running_pid(id) {
                nft(pid, &format!("delete table {TABLE}"));
            }
        }
    }

    /// Adds `rules` (each `<chain> <rule>`, chain `input` or `output`) to node `id`'s namespace.
    fn add_rules(&self, id: u64, rules: &[String]) {
        let pid = self.running_pid(id).unwrap_or_else(|| panic!("node {id}'s container is not running"));
        let mut script = format!(
            "add table {TABLE}\nadd chain {TABLE} input {{ type filter hook input priority 0 ; }}\n\
             add chain {TABLE} output {{ type filter hook output priority 0 ; }}\n"
        );
        for rule in rules {
            script.push_str(&format!("add rule {TABLE} {rule}\n"));
        }
        nft(pid, &script);
        self.faulted.lock().unwrap().insert(id);
    }

    /// The host pid of node `id`'s process while its container runs.
    fn running_pid(&self, id: u64) -> Option<u32> {
        let pid = output(&["docker", "inspect", "--format", "{{.State.Pid}}", &self.container(id)])?;
        pid.trim().parse().ok().filter(|pid| *pid != 0)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let containers: Vec<String> = self.ids.iter().map(|id| self.container(*id)).collect();
        let _ = Command::new("docker").args(["rm", "--force"]).args(&containers).output();
        let _ = Command::new("docker").args(["network", "rm", &self.tag]).output();
    }
}

/// Runs an nftables `script` in the network namespace of process `pid`.
fn nft(pid: u32, script: &str) {
    use std::io::Write;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nsenter");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success(), "nft in {pid}'s namespace: {script}: {}", String::from_utf8_lossy(&result.stderr));
}

/// Removes the containers and networks of test processes that are gone.
fn remove_leftovers() {
    let containers = output(&["docker", "ps", "--all", "--format", "{{.Names}}"]).unwrap_or_default();
    let dead: Vec<&str> = containers.lines().filter(|name| left_by_dead_process(name)).collect();
    if !dead.is_empty() {
        let _ = Command::new("docker").args(["rm", "--force"]).args(&dead).output();
    }
    let networks = output(&["docker", "network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
    for name in networks.lines().filter(|name| left_by_dead_process(name)) {
        let _ = Command::new("docker").args(["network", "rm", name]).output();
    }
}

/// The image holding the shared libraries `program` links (and the dynamic loader), tagged by their
/// contents; imported from local files the first time this machine needs it.
fn base_image(program: &Path) -> String {
    use std::hash::Hash;
    use std::hash::Hasher;
    let linked = output(&["ldd", &program.display().to_string()]).expect("ldd of the fjord binary");
    let libraries: BTreeSet<&str> = linked.split_whitespace().filter(|word| word.starts_with('/')).collect();
    let mut sha256sum = vec!["sha256sum"];
    sha256sum.extend(&libraries);
    let sums = output(&sha256sum).expect("sha256sum of the linked libraries");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sums.hash(&mut hasher);
    let image = format!("fjord-test-base:{:016x}", hasher.finish());
    if output(&["docker", "image", "inspect", &image]).is_some() {
        return image;
    }
    let root = tempfile::tempdir().unwrap();
    for library in &libraries {
        let inside = root.path().join(library.trim_start_matches('/'));
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::copy(library, &inside).unwrap();
    }
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/passwd"), "root:x:0:0:root:/root:/usr/sbin/nologin\n").unwrap();
    let tmp = root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let root = root.path().display().to_string();
    run(&["bash", "-o", "pipefail", "-c", "tar -C \"$1\" -c . | docker import - \"$2\"", "bash", &root, &image]);
    image
}
