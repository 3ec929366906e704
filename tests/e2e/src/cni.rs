//! A CNI network of a test's own, on this machine: a bridge and a subnet nobody else uses, with
//! Debian's reference plugins (bridge, host-local, loopback, portmap).

use std::path::PathBuf;

/// Where the plugins are: `KRUSTLET_E2E_CNI_BIN_DIR`, else Debian's /usr/lib/cni.
pub fn plugin_dir() -> PathBuf {
    std::env::var_os("KRUSTLET_E2E_CNI_BIN_DIR")
        .map_or_else(|| PathBuf::from("/usr/lib/cni"), PathBuf::from)
}

/// A CNI network of the test's own: a bridge on this machine with a /16 of its own, allocated
/// by host-local in the test's directory, and portmap for hostPorts. The bridge is removed
/// when dropped.
pub struct TestNetwork {
    dir: tempfile::TempDir,
    bridge: String,
    /// The first two octets of the subnet.
    pub prefix: String,
    name: String,
}

impl TestNetwork {
    /// A network named `name` (the name keeps its subnet and bridge apart from other tests'
    /// networks in this process). Fails when the plugins are missing.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let plugins = plugin_dir();
        anyhow::ensure!(
            ["bridge", "host-local", "loopback", "portmap"]
                .iter()
                .all(|p| plugins.join(p).is_file()),
            "the CNI plugins are not in {} (apt-get install containernetworking-plugins, or set KRUSTLET_E2E_CNI_BIN_DIR)",
            plugins.display()
        );
        let dir = testkit::scratch::tempdir("krustlet-cni")?;
        // A subnet and bridge name of this process's own, so that tests side by side never meet.
        let id = std::process::id() as usize * 7
            + name.len() * 31
            + name.bytes().map(usize::from).sum::<usize>();
        // 10.150.0.0-10.199.255.255: clear of the ranges clusters use by default (Services'
        // 10.96.0.0/12, flannel's and kind's 10.244.0.0/16, k3s's 10.42-43), so that the test
        // machine's routes to a real cluster never meet the test's bridge.
        let prefix = format!("10.{}", 150 + id % 50);
        let bridge = format!("krt{}", id % 1_000_000_000);
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{prefix}.0.0/16")}]],
                        "dataDir": dir.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        std::fs::create_dir_all(dir.path().join("net.d"))?;
        std::fs::write(
            dir.path().join("net.d/10-test.conflist"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        Ok(Self {
            dir,
            bridge,
            prefix,
            name: name.to_string(),
        })
    }

    /// The agent flags that give its node this network.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--cni-conf-dir".into(),
            self.dir.path().join("net.d").display().to_string(),
            "--cni-bin-dir".into(),
            plugin_dir().display().to_string(),
        ]
    }

    /// The bridge's own address: an address of this machine, where hostPorts are served too.
    pub fn gateway(&self) -> String {
        format!("{}.0.1", self.prefix)
    }

    /// The interfaces (pods' veths) attached to the network's bridge right now.
    pub fn attached_interfaces(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// The IPs host-local holds for pods right now.
    pub fn allocated(&self) -> Vec<String> {
        let mut ips: Vec<String> = std::fs::read_dir(self.dir.path().join("ipam").join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        ips.sort();
        ips
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
