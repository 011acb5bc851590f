//! Linux's own drivers against Hearth's network devices: the kit's kernel,
//! booted from a Firecracker config with a network interface on a tap and a
//! vsock, runs its `ip=dhcp` client (before init; guest user space cannot
//! run here), so its DHCPDISCOVER frames from the configured MAC arrive on
//! the tap, and its virtio_net and virtio vsock drivers set their devices
//! up without an error. The VM is stopped once the first discover is seen.
//! The tap lives in a network namespace of the test's own.

mod common;

use std::time::{Duration, Instant};

use common::live::Live;
use common::netns::*;
use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(300);
const MAC: &str = "06:00:ac:10:00:02";

/// Whether `f` is a DHCPDISCOVER (IPv4, UDP 68 -> 67, BOOTREQUEST,
/// option 53 = 1) with client hardware address `mac`.
fn is_dhcp_discover(f: &[u8], mac: [u8; 6]) -> bool {
    if f.len() < 14 + 20 + 8 + 240 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 + 240 {
        return false;
    }
    let udp = &ip[ihl..];
    let (src, dst) = (
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
    );
    let dhcp = &udp[8..];
    if (src, dst) != (68, 67) || dhcp[0] != 1 || dhcp[28..34] != mac {
        return false;
    }
    // Options after the magic cookie: find 53 (message type).
    if dhcp[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = 240;
    while i + 1 < dhcp.len() {
        match dhcp[i] {
            0 => i += 1,
            255 => return false,
            53 => return dhcp.get(i + 2) == Some(&1),
            _ => i += 2 + usize::from(dhcp[i + 1]),
        }
    }
    false
}

#[test]
fn linux_sends_dhcp_discovers_from_the_configured_mac_and_probes_net_and_vsock() {
    let kit = linux_kit();
    in_netns(move || {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-linux");
        let config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": kit.join("vmlinux"),
                "initrd_path": kit.join("initramfs.cpio"),
                "boot_args": format!("{} ip=dhcp", linux_cmdline())
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
            "network-interfaces": [{
                "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": MAC
            }],
            "vsock": {"guest_cid": 3, "uds_path": "v.sock"}
        });
        let path = write_file(&dir, "vm_config.json", &config.to_string());
        let stats = dir.join("stats.json").to_string_lossy().into_owned();
        let g = Live::spawn(
            &["run", "--config", &path, "--stats-file", &stats],
            DEADLINE,
        );
        let start = Instant::now();
        let mac = mac_bytes(MAC);
        let discover = loop {
            assert!(
                start.elapsed() < DEADLINE,
                "no DHCPDISCOVER within {DEADLINE:?}:\n{}",
                g.output()
            );
            if let Some(f) = wire.recv(Duration::from_secs(1)) {
                if is_dhcp_discover(&f, mac) {
                    break f;
                }
            }
        };
        assert_eq!(discover[6..12], mac, "from the configured MAC");
        assert_eq!(discover[..6], [0xff; 6], "broadcast");
        let (_, log, err) = g.finish(true);
        // (ipconfig's "Sending DHCP requests ." line ends only when DHCP
        // does: the frame above is the proof.)
        assert!(log.contains("virtio-mmio.0 at 0xd0000000"), "{log}");
        assert!(
            log.contains("NET: Registered PF_VSOCK protocol family"),
            "{log}"
        );
        for bad in ["probe of virtio", "virtio_net: ", "vsock: ", "Call Trace"] {
            assert!(
                !log.lines()
                    .any(|l| l.contains(bad) && !l.contains("Registered")),
                "{bad:?} in the boot log:\n{log}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("JSON");
        let vm = &v["vms"][0];
        assert_eq!(vm["net"][0]["active"], true, "virtio_net set its device up");
        assert_eq!(vm["net"][0]["needs_reset"], false);
        assert!(vm["net"][0]["tx"]["frames"].as_u64() >= Some(1), "{vm}");
        assert_eq!(
            vm["vsock"]["active"], true,
            "the virtio vsock driver set its device up"
        );
        assert_eq!(vm["vsock"]["needs_reset"], false);
    });
}
