//! A test host in a network namespace, joined to this machine by a veth pair with addresses
//! from the benchmarking range (198.18.0.0/15). Needs root and `ip`; everything it creates is
//! removed on drop, even when the test fails, and a leftover of an earlier crashed run with
//! the same name is removed first.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct NetNs {
    pub name: String,
    /// This machine's end of the link.
    pub host_ip: Ipv4Addr,
    /// The namespace's end.
    pub ns_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be made here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!(
                "`{tool}` is missing (make test installs iproute2, iptables)"
            ));
        }
    }
    None
}

impl NetNs {
    /// Namespace `name` with the link 198.18.`subnet`.1 (here) – .2 (there), `lo` up.
    pub fn create(name: &str, subnet: u8) -> Result<Self, String> {
        let ns = Self {
            name: name.to_owned(),
            host_ip: Ipv4Addr::new(198, 18, subnet, 1),
            ns_ip: Ipv4Addr::new(198, 18, subnet, 2),
        };
        ns.remove();
        let (here, there) = ns.links();
        let host_cidr = format!("{}/24", ns.host_ip);
        let ns_cidr = format!("{}/24", ns.ns_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", name],
            vec![
                "ip", "link", "add", &here, "type", "veth", "peer", "name", &there,
            ],
            vec!["ip", "link", "set", &there, "netns", name],
            vec!["ip", "addr", "add", &host_cidr, "dev", &here],
            vec!["ip", "link", "set", &here, "up"],
            vec![
                "ip", "netns", "exec", name, "ip", "addr", "add", &ns_cidr, "dev", &there,
            ],
            vec![
                "ip", "netns", "exec", name, "ip", "link", "set", &there, "up",
            ],
            vec!["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
        ];
        for step in steps {
            run(&step)?; // on error, drop removes what was made
        }
        Ok(ns)
    }

    fn links(&self) -> (String, String) {
        // Interface names are at most 15 bytes.
        let tag: String = self.name.chars().rev().take(8).collect();
        (format!("vh{tag}"), format!("vn{tag}"))
    }

    /// Shapes the link both ways to `kbit` kbit/s with a token bucket (a full queue, 100 ms
    /// deep, drops), and drops `loss` (0..1) of what arrives in the namespace at random.
    /// (This kernel has no netem: tbf and iptables' statistic match are what there is.)
    pub fn shape(&self, kbit: u32, loss: f64) -> Result<(), String> {
        let (here, there) = self.links();
        let rate = format!("{kbit}kbit");
        let tbf = |dev: &str| {
            vec![
                "tc".to_owned(),
                "qdisc".into(),
                "replace".into(),
                "dev".into(),
                dev.to_owned(),
                "root".into(),
                "tbf".into(),
                "rate".into(),
                rate.clone(),
                "burst".into(),
                "16kb".into(),
                "latency".into(),
                "100ms".into(),
            ]
        };
        let host = tbf(&here);
        run(&host.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut inside = vec![
            "ip".to_owned(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ];
        inside.extend(tbf(&there));
        run(&inside.iter().map(String::as_str).collect::<Vec<_>>())?;
        self.exec(&["iptables", "-F", "INPUT"])?;
        if loss > 0.0 {
            let p = format!("{loss}");
            self.exec(&[
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A command prefixed to run inside the namespace.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn remove(&self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.links().0]);
        // A run that was killed (no drop) leaves its link, with this link's address, under
        // another name: two interfaces on one subnet would send this run's packets into the
        // dead one. Remove whatever holds the address, and the namespace it leads to.
        let Ok(out) = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
        else {
            return;
        };
        let ours = format!(" {}/", self.host_ip);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&ours)
                && let Some(dev) = line.split_whitespace().nth(1)
            {
                let dev = dev.split('@').next().unwrap_or(dev);
                let _ = run(&["ip", "link", "del", dev]);
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.remove();
    }
}
