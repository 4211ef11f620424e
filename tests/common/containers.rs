//! Nodes as Docker containers on a Docker network of the region's own, one address each; the test process
//! reaches them over the network's bridge, where the host holds the gateway address.
//!
//! The image is made from local files, as `deploy/build-image` makes the release one: a root filesystem of
//! just the shared libraries the `fjord` binary links, imported with `docker import` and tagged by their
//! contents, so it is built once per machine. The binary itself, the node's data dir and its config are
//! bind-mounted at the paths they have here, so a node in a container runs with exactly the arguments it
//! would run with as a plain process — and a data dir on a lose-unsynced-writes filesystem stays one.
//!
//! Faults: `docker rm --force` (SIGKILL, whatever state the container is in), `docker pause` (the cgroup
//! freezer: the whole node stops, as with SIGSTOP), and nftables rules in a container's network namespace
//! (entered with `nsenter`) that drop its packets to and from its peers, or reset a share of its TCP
//! packets to them. A container's namespace lives as long as the container runs, so a node restarted
//! after a fault starts with a whole network.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;

use super::hosts::Launch;
use super::hosts::NFT_TABLE;
use super::hosts::RegionTag;
use super::hosts::flaky_rule;
use super::hosts::output;
use super::hosts::run;

/// One region's Docker network and containers; removed when dropped.
pub(crate) struct Network {
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
    /// Creates the region's network (removing what earlier test runs left) and, if this machine lacks it, the
    /// image that runs `program`.
    pub(crate) fn create(region: RegionTag, ids: &[u64], program: &Path) -> Network {
        remove_leftovers(&region);
        let network = Network {
            tag: region.name(),
            subnet: region.subnet(200),
            ids: ids.to_vec(),
            image: base_image(program),
            faulted: Mutex::default(),
        };
        let subnet = format!("{}.0/24", network.subnet);
        run(&["docker", "network", "create", "--subnet", &subnet, "--gateway", &network.gateway(), &network.tag]);
        network
    }

    /// Node `id`'s address.
    pub(crate) fn address(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// The host's address on the network: where the clients' packets come from.
    fn gateway(&self) -> String {
        format!("{}.254", self.subnet)
    }

    fn container(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    /// Creates node `id`'s container (removing the one from its last run) and returns the `docker start`
    /// that runs it attached: the command's stderr is the node's, and it exits when the node does. The
    /// container exists before this returns, so [`Self::kill`] finds it whenever it comes.
    pub(crate) fn command(&self, id: u64, launch: &Launch<'_>) -> Command {
        let container = self.container(id);
        run(&["docker", "rm", "--force", &container]);
        let mut create = vec!["docker", "create", "--name", &container, "--network", &self.tag];
        let address = self.address(id);
        // The node's output reaches the attached client; Docker need not keep a copy.
        create.extend(["--ip", &address, "--log-driver", "none"]);
        let program = launch.program.display().to_string();
        let mut mounts = vec![format!("type=bind,source={program},target={program},readonly")];
        // A bind mount (unlike `--volume`) refuses a source that is not there rather than making one.
        mounts.extend(launch.paths.iter().map(|path| format!("type=bind,source={0},target={0}", path.display())));
        for mount in &mounts {
            create.extend(["--mount", mount]);
        }
        let env: Vec<String> = launch.env.iter().map(|(key, value)| format!("{key}={value}")).collect();
        for variable in &env {
            create.extend(["--env", variable]);
        }
        create.extend(["--entrypoint", &program, &self.image]);
        create.extend(launch.args.iter().map(String::as_str));
        run(&create);
        let mut command = Command::new("docker");
        command.args(["start", "--attach", &container]);
        command
    }

    /// Kills node `id` (SIGKILL to its processes) and removes its container, whatever state it is in:
    /// created, running or paused. Its attached client exits.
    pub(crate) fn kill(&self, id: u64) {
        self.kill_all_of(&[id]);
    }

    /// Kills every node at once, as [`Self::kill`] does one.
    pub(crate) fn kill_all(&self) {
        self.kill_all_of(&self.ids);
    }

    fn kill_all_of(&self, ids: &[u64]) {
        let containers: Vec<String> = ids.iter().map(|id| self.container(*id)).collect();
        let mut remove = vec!["docker", "rm", "--force"];
        remove.extend(containers.iter().map(String::as_str));
        run(&remove);
        // Their network namespaces went with them, and our rules in those.
        self.faulted.lock().unwrap().retain(|id| !ids.contains(id));
    }

    /// Freezes every process of node `id`'s container, or thaws them.
    pub(crate) fn pause(&self, id: u64, pause: bool) {
        run(&["docker", if pause { "pause" } else { "unpause" }, &self.container(id)]);
    }

    /// Cuts node `id` off from every other node (clients still reach it): its packets to its peers and
    /// theirs to it are dropped, so connections between them hang until they time out.
    pub(crate) fn isolate(&self, id: u64) {
        let peers: Vec<String> = self.ids.iter().filter(|peer| **peer != id).map(|peer| self.address(*peer)).collect();
        if peers.is_empty() {
            return;
        }
        let peers = peers.join(", ");
        self.add_rules(
            id,
            &[format!("output ip daddr {{ {peers} }} drop"), format!("input ip saddr {{ {peers} }} drop")],
        );
    }

    /// Makes node `id`'s connections to its peers reset about `percent` % of the TCP packets it sends them.
    pub(crate) fn make_flaky(&self, id: u64, percent: u32) {
        let rule = flaky_rule(&format!("ip daddr != {}", self.gateway()), percent);
        self.add_rules(id, &[format!("output {rule}")]);
    }

    /// Every rule of ours gone from every node's network namespace. A node is forgotten only once its
    /// rules are gone, or its container (and with it the namespace) is.
    pub(crate) fn heal(&self) {
        let faulted: Vec<u64> = self.faulted.lock().unwrap().iter().copied().collect();
        for id in faulted {
            if let Some(pid) = self.running_pid(id) {
                // Adding first makes the delete succeed whether or not the table is there.
                nft(pid, &format!("add table {NFT_TABLE}\ndelete table {NFT_TABLE}\n"));
            }
            self.faulted.lock().unwrap().remove(&id);
        }
    }

    /// Adds `rules` (each `<chain> <rule>`, chain `input` or `output`) to node `id`'s namespace.
    fn add_rules(&self, id: u64, rules: &[String]) {
        let pid = self.running_pid(id).unwrap_or_else(|| panic!("node {id}'s container is not running"));
        let mut script = format!(
            "add table {NFT_TABLE}\nadd chain {NFT_TABLE} input {{ type filter hook input priority 0 ; }}\n\
             add chain {NFT_TABLE} output {{ type filter hook output priority 0 ; }}\n"
        );
        for rule in rules {
            script.push_str(&format!("add rule {NFT_TABLE} {rule}\n"));
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
fn remove_leftovers(region: &RegionTag) {
    let containers = output(&["docker", "ps", "--all", "--format", "{{.Names}}"]).unwrap_or_default();
    let dead: Vec<&str> = containers.lines().filter(|name| region.is_leftover(name)).collect();
    if !dead.is_empty() {
        let _ = Command::new("docker").args(["rm", "--force"]).args(&dead).output();
    }
    let networks = output(&["docker", "network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
    for name in networks.lines().filter(|name| region.is_leftover(name)) {
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
