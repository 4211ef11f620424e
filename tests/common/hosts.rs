//! Hosts with addresses of their own for a region's nodes, so the network between them can be cut while
//! the clients in the test process still reach every node. Two kinds, with the same faults:
//! - [`containers`](super::containers): a Docker container per node on a Docker network of the region's
//!   own — the default wherever a Docker engine answers;
//! - [`netns`](super::netns): a Linux network namespace per node, wired with veth links — where there is
//!   no Docker engine (it needs only root, iproute2 and nftables).
//!
//! `FJORD_TEST_HOSTS=containers` or `=namespaces` picks one explicitly.
//!
//! The namespaces, links, networks and containers either kind creates are named `fj<pid in hex>x<region>…`
//! after the test process, so what a killed test run left behind can be told apart from what a live one
//! owns, and removed.

use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::containers;
use super::netns;

/// Name prefix of the namespaces, links, networks and containers the host kinds create.
const PREFIX: &str = "fj";
/// Our nftables table in a node's network namespace (Docker keeps tables of its own there; we leave them be).
pub(crate) const NFT_TABLE: &str = "inet fjord";
/// The port every node serves its public API on (each has an address of its own).
pub(crate) const NODE_PORT: u16 = 7000;
/// The port every node serves its node-to-node plane on.
pub(crate) const NODE_INTERNAL_PORT: u16 = 7001;
/// The port every node serves the Postgres wire protocol on.
pub(crate) const NODE_POSTGRES_PORT: u16 = 5432;

/// A region's hosts: where its nodes run, and the network between them.
pub(crate) enum Hosts {
    /// A Docker container per node.
    Containers(containers::Network),
    /// A network namespace per node.
    Namespaces(netns::Network),
}

/// How to start one node: the same program, arguments, environment and files, whatever host it runs on.
pub(crate) struct Launch<'a> {
    /// The `fjord` binary.
    pub(crate) program: &'a Path,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its environment, besides what it inherits (a container inherits nothing).
    pub(crate) env: Vec<(String, String)>,
    /// Paths the node reads or writes (its data dir, its config): a container sees them at the same path.
    pub(crate) paths: Vec<&'a Path>,
}

impl Launch<'_> {
    /// `command` (which runs the program) given the launch's arguments and environment.
    pub(crate) fn with_args_and_env(&self, mut command: Command) -> Command {
        command.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

impl Hosts {
    /// A host per id in `ids`, each reachable from here and from every other at [`Self::address`]; the
    /// kind as `FJORD_TEST_HOSTS` says, else containers when a Docker engine answers, else namespaces.
    pub(crate) fn create(ids: &[u64], program: &Path) -> Hosts {
        static REGIONS: AtomicU64 = AtomicU64::new(0);
        let region = RegionTag::new(REGIONS.fetch_add(1, Ordering::Relaxed));
        let containers = match std::env::var("FJORD_TEST_HOSTS").as_deref() {
            Ok("containers") => true,
            Ok("namespaces") => false,
            Ok(other) => panic!("FJORD_TEST_HOSTS={other}: expected `containers` or `namespaces`"),
            Err(_) => docker_answers(),
        };
        if containers {
            Hosts::Containers(containers::Network::create(region, ids, program))
        } else {
            Hosts::Namespaces(netns::Network::create(region, ids))
        }
    }

    /// What the hosts are, for a person reading a run's summary.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Hosts::Containers(_) => "Docker containers",
            Hosts::Namespaces(_) => "network namespaces",
        }
    }

    /// Node `id`'s address.
    pub(crate) fn address(&self, id: u64) -> String {
        match self {
            Hosts::Containers(network) => network.address(id),
            Hosts::Namespaces(network) => network.address(id),
        }
    }

    /// A command that runs node `id` as `launch` says; its stdout and stderr are the node's.
    pub(crate) fn command(&self, id: u64, launch: &Launch<'_>) -> Command {
        match self {
            Hosts::Containers(network) => network.command(id, launch),
            Hosts::Namespaces(network) => launch.with_args_and_env(network.command(id, launch.program)),
        }
    }

    /// Kills node `id`, whose process the test spawned as `child`, with SIGKILL, and reaps `child`.
    pub(crate) fn kill(&self, id: u64, child: &mut Child) {
        match self {
            Hosts::Containers(network) => {
                network.kill(id);
                child.wait().unwrap();
            }
            Hosts::Namespaces(_) => kill_process(child),
        }
    }

    /// Kills every node at once, where one at a time would leave the last running for long (a container
    /// takes a round trip to the engine); [`Self::kill`] then only reaps each. Namespaces need nothing here.
    pub(crate) fn kill_all(&self) {
        if let Hosts::Containers(network) = self {
            network.kill_all();
        }
    }

    /// Freezes node `id`, whose process the test spawned as `child` (or thaws it).
    pub(crate) fn pause(&self, id: u64, child: &Child, pause: bool) {
        match self {
            Hosts::Containers(network) => network.pause(id, pause),
            Hosts::Namespaces(_) => pause_process(child, pause),
        }
    }

    /// Cuts node `id` off from every other node (clients still reach it).
    pub(crate) fn isolate(&self, id: u64) {
        match self {
            Hosts::Containers(network) => network.isolate(id),
            Hosts::Namespaces(network) => network.isolate(id),
        }
    }

    /// Makes node `id`'s connections to its peers reset about `percent` % of the TCP packets it sends them.
    pub(crate) fn make_flaky(&self, id: u64, percent: u32) {
        match self {
            Hosts::Containers(network) => network.make_flaky(id, percent),
            Hosts::Namespaces(network) => network.make_flaky(id, percent),
        }
    }

    /// Every link whole again and every flaky rule gone.
    pub(crate) fn heal(&self) {
        match self {
            Hosts::Containers(network) => network.heal(),
            Hosts::Namespaces(network) => network.heal(),
        }
    }
}

/// The name and subnet numbers of one region's hosts, unique per test process and region.
#[derive(Clone, Copy)]
pub(crate) struct RegionTag {
    pid: u32,
    region: u64,
}

impl RegionTag {
    fn new(region: u64) -> RegionTag {
        RegionTag { pid: std::process::id(), region }
    }

    /// `fj<pid in hex>x<region>`: the prefix of every name the region's hosts use.
    pub(crate) fn name(&self) -> String {
        format!("{PREFIX}{:x}x{}", self.pid, self.region)
    }

    /// The first three octets of the region's addresses: `10.<base + region % 50>.<pid % 250>`, so the
    /// regions of one process do not share a subnet, nor do those of processes whose pids differ mod 250.
    pub(crate) fn subnet(&self, base: u64) -> String {
        format!("10.{}.{}", base + self.region % 50, self.pid % 250)
    }

    /// Whether `name` is to be removed before this region's hosts are made: made by a test process that is
    /// gone, or carrying this region's own name (left by an earlier process that had our pid).
    pub(crate) fn is_leftover(&self, name: &str) -> bool {
        let own = self.name();
        if name == own || name.strip_prefix(&own).is_some_and(|rest| rest.starts_with('n')) {
            return true;
        }
        let Some(rest) = name.strip_prefix(PREFIX) else { return false };
        let Some(pid) = rest.split('x').next().and_then(|hex| u32::from_str_radix(hex, 16).ok()) else { return false };
        !Path::new(&format!("/proc/{pid}")).exists()
    }
}

/// SIGKILL to `child`, and reaps it.
pub(crate) fn kill_process(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGSTOP (`pause: true`) or SIGCONT to `child`.
pub(crate) fn pause_process(child: &Child, pause: bool) {
    run(&["kill", if pause { "-STOP" } else { "-CONT" }, &child.id().to_string()]);
}

/// Runs `args`, panicking with its stderr if it fails.
pub(crate) fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(output.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// Runs `args` and returns its stdout, or `None` if it could not run or failed.
pub(crate) fn output(args: &[&str]) -> Option<String> {
    let output = Command::new(args[0]).args(&args[1..]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The nftables rule that resets about `percent` % of the TCP packets a node sends its peers; `not_to_clients`
/// is the match that spares the packets to the clients (whose link or address differs by host kind).
pub(crate) fn flaky_rule(not_to_clients: &str, percent: u32) -> String {
    format!("{not_to_clients} meta l4proto tcp numgen random mod 100 < {percent} reject with tcp reset")
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
