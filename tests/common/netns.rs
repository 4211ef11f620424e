//! Nodes as hosts with addresses of their own, so the network between them can be cut: one Linux network
//! namespace per node, a veth pair between every two nodes (a full mesh of point-to-point links), and one
//! more from each node to the test process in the root namespace, where the clients live.
//!
//! No bridge and no routing through the root namespace: the Docker engine on these machines drops
//! forwarded and bridged packets (`FORWARD` policy DROP with `bridge-nf-call-iptables`), and a mesh needs
//! neither. Each node's address sits on its namespace's loopback, with a host route to every peer over
//! that peer's link, so taking one link down cuts exactly those two nodes apart while both still reach
//! the clients. A flaky link is an nftables rule in a node's namespace that resets a share of the TCP
//! packets it sends to its peers (the kernel here has no `netem`).
//!
//! Needs root and iproute2 and nftables. Namespaces and links are named after the test process, and any
//! left by a process that died are removed before new ones are made.

use std::collections::BTreeSet;
use std::process::Command;

use super::hosts::NFT_TABLE;
use super::hosts::RegionTag;
use super::hosts::flaky_rule;
use super::hosts::output;
use super::hosts::run;

/// The namespaces, links and addresses of one region's hosts; removed when dropped.
pub(crate) struct Network {
    /// Unique per region: `fj<pid in hex>x<n>`.
    tag: String,
    /// First three octets of every address.
    subnet: String,
    ids: Vec<u64>,
    /// Links between `(a, b)` (a < b) that are down now.
    cut: std::sync::Mutex<BTreeSet<(u64, u64)>>,
}

fn run_in(namespace: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", namespace];
    full.extend_from_slice(args);
    run(&full);
}

/// Removes the namespaces (and with them their links) of test processes that are gone.
fn remove_leftovers(region: &RegionTag) {
    let Some(namespaces) = output(&["ip", "netns", "list"]) else { return };
    for name in namespaces.lines().filter_map(|line| line.split_whitespace().next()) {
        if region.is_leftover(name) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Network {
    /// Creates a host per id in `ids`, each reachable from here and from every other at [`Self::address`].
    pub(crate) fn create(region: RegionTag, ids: &[u64]) -> Network {
        remove_leftovers(&region);
        let network =
            Network { tag: region.name(), subnet: region.subnet(100), ids: ids.to_vec(), cut: Default::default() };
        let client = network.client_address();
        for &id in ids {
            let namespace = network.namespace(id);
            run(&["ip", "netns", "add", &namespace]);
            run(&["ip", "-n", &namespace, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &namespace, "addr", "add", &format!("{}/32", network.address(id)), "dev", "lo"]);
            // The link to the clients: a /32 route each way, the client's address on the root side.
            let (outside, inside) = (network.link(0, id), network.link(id, 0));
            run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &namespace]);
            run(&["ip", "addr", "add", &format!("{client}/32"), "dev", &outside]);
            run(&["ip", "link", "set", &outside, "up"]);
            run(&["ip", "-n", &namespace, "link", "set", &inside, "up"]);
            run(&["ip", "route", "add", &format!("{}/32", network.address(id)), "dev", &outside, "src", &client]);
            run(&["ip", "-n", &namespace, "route", "add", &format!("{client}/32"), "dev", &inside]);
        }
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                let (a_side, b_side) = (network.link(a, b), network.link(b, a));
                let (a_namespace, b_namespace) = (network.namespace(a), network.namespace(b));
                run(&["ip", "-n", &a_namespace, "link", "add", &a_side, "type", "veth", "peer", "name", &b_side]);
                run(&["ip", "-n", &a_namespace, "link", "set", &b_side, "netns", &b_namespace]);
                for (namespace, link, peer) in [(&a_namespace, &a_side, b), (&b_namespace, &b_side, a)] {
                    run(&["ip", "-n", namespace, "link", "set", link, "up"]);
                    let route = format!("{}/32", network.address(peer));
                    run(&["ip", "-n", namespace, "route", "add", &route, "dev", link]);
                }
            }
        }
        for &id in ids {
            let namespace = network.namespace(id);
            run_in(&namespace, &["nft", &format!("add table {NFT_TABLE}")]);
            run_in(
                &namespace,
                &["nft", &format!("add chain {NFT_TABLE} output {{ type filter hook output priority 0 ; }}")],
            );
        }
        network
    }

    /// The network namespace of node `id`.
    pub(crate) fn namespace(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    /// The link from `from` to `to` (0 is the clients' side), as named in `from`'s namespace.
    fn link(&self, from: u64, to: u64) -> String {
        format!("{}{from}-{to}", self.tag)
    }

    /// Node `id`'s address.
    pub(crate) fn address(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// The clients' address, in the root namespace.
    fn client_address(&self) -> String {
        format!("{}.254", self.subnet)
    }

    /// A command that runs `program` inside node `id`'s namespace (`ip netns exec` execs it: same pid).
    pub(crate) fn command(&self, id: u64, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(id)]).arg(program);
        command
    }

    /// Takes the link between `a` and `b` down (or back up): neither can reach the other.
    pub(crate) fn set_link(&self, a: u64, b: u64, up: bool) {
        let (a, b) = (a.min(b), a.max(b));
        run(&["ip", "-n", &self.namespace(a), "link", "set", &self.link(a, b), if up { "up" } else { "down" }]);
        let mut cut = self.cut.lock().unwrap();
        if up {
            cut.remove(&(a, b));
            // Bringing a veth end up drops the routes over it: put the pair's routes back.
            for (from, to) in [(a, b), (b, a)] {
                let route = format!("{}/32", self.address(to));
                let _ = Command::new("ip")
                    .args(["-n", &self.namespace(from), "route", "replace", &route, "dev", &self.link(from, to)])
                    .status();
            }
        } else {
            cut.insert((a, b));
        }
    }

    /// Cuts node `id` off from every other node (clients still reach it).
    pub(crate) fn isolate(&self, id: u64) {
        for &peer in self.ids.iter().filter(|peer| **peer != id) {
            self.set_link(id, peer, false);
        }
    }

    /// Makes node `id`'s links to its peers reset about `percent` % of the TCP packets it sends them.
    pub(crate) fn make_flaky(&self, id: u64, percent: u32) {
        let rule = flaky_rule(&format!("oifname != \"{}\"", self.link(id, 0)), percent);
        run_in(&self.namespace(id), &["nft", &format!("add rule {NFT_TABLE} output {rule}")]);
    }

    /// Every link up and every flaky rule gone.
    pub(crate) fn heal(&self) {
        let cut: Vec<(u64, u64)> = self.cut.lock().unwrap().iter().copied().collect();
        for (a, b) in cut {
            self.set_link(a, b, true);
        }
        for &id in &self.ids {
            run_in(&self.namespace(id), &["nft", &format!("flush chain {NFT_TABLE} output")]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for &id in &self.ids {
            let _ = Command::new("ip").args(["link", "del", &self.link(0, id)]).status();
            let _ = Command::new("ip").args(["netns", "del", &self.namespace(id)]).status();
        }
    }
}
