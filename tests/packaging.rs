//! Packaging and the service manager (issue 14 item 5): the Debian package's metadata ships
//! what an administrator needs, the manual pages and completions come from the binary, and
//! `serve` tells systemd when it is ready (`Type=notify`) and when it stops.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any one run of the binary, and for `serve` to start or stop.
const LIMIT: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tlsgate(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tlsgate");
    assert!(
        output.status.success(),
        "tlsgate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `[package.metadata.deb]`: (source, destination) of every asset.
fn deb_assets() -> (toml::Value, Vec<(String, String)>) {
    let manifest: toml::Value = std::fs::read_to_string(repo("Cargo.toml"))
        .expect("read Cargo.toml")
        .parse()
        .expect("Cargo.toml parses");
    let deb = manifest["package"]["metadata"]["deb"].clone();
    let assets = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("asset triple");
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (deb, assets)
}

#[test]
fn the_deb_ships_binary_config_unit_user_man_pages_and_completions() {
    let (deb, assets) = deb_assets();
    let destination = |dest: &str| -> &str {
        assets
            .iter()
            .find(|(_, d)| d == dest)
            .map(|(s, _)| s.as_str())
            .unwrap_or_else(|| panic!("no asset installed at {dest}: {assets:?}"))
    };
    assert_eq!(destination("usr/bin/"), "target/release/tlsgate");
    // The example configuration becomes the conffile every command reads by default.
    assert_eq!(
        destination("etc/tlsgate/tlsgate.toml"),
        "config/tlsgate.example.toml"
    );
    assert_eq!(
        destination("usr/lib/sysusers.d/tlsgate.conf"),
        "deploy/tlsgate.sysusers"
    );
    assert_eq!(destination("usr/share/man/man1/"), "target/assets/man/*.1");
    assert_eq!(
        destination("usr/share/bash-completion/completions/tlsgate"),
        "target/assets/completions/tlsgate.bash"
    );
    destination("usr/share/zsh/vendor-completions/");
    destination("usr/share/fish/vendor_completions.d/");
    // Every source outside target/ is in the repository; target/assets is what
    // scripts/package.sh writes with the binary's own `man` and `completions`.
    for (source, _) in &assets {
        if !source.starts_with("target/") {
            assert!(repo(source).is_file(), "asset {source} is missing");
        }
    }
    let script = std::fs::read_to_string(repo("scripts/package.sh")).expect("package.sh");
    for step in [
        "tlsgate man --out \"$assets/man\"",
        "completions bash > \"$assets/completions/tlsgate.bash\"",
        "completions zsh > \"$assets/completions/_tlsgate\"",
        "completions fish > \"$assets/completions/tlsgate.fish\"",
        "cargo deb --no-build --locked",
    ] {
        assert!(script.contains(step), "package.sh lacks {step:?}");
    }
    // The unit comes from deploy/ (enabled, not started: the example configuration names
    // files the administrator has to provide first), the user from the postinst script.
    let units = &deb["systemd-units"];
    assert_eq!(units["unit-scripts"].as_str(), Some("deploy/"));
    assert_eq!(units["unit-name"].as_str(), Some("tlsgate"));
    assert_eq!(units["start"].as_bool(), Some(false));
    assert!(repo("deploy/tlsgate.service").is_file());
    let postinst_path = repo("deploy/debian/postinst");
    let postinst = std::fs::read_to_string(&postinst_path).expect("postinst");
    assert!(postinst.contains("systemd-sysusers tlsgate.conf"));
    assert!(postinst.contains("install -d -m 0700 -o tlsgate -g tlsgate /var/lib/tlsgate"));
    assert!(postinst.contains("#DEBHELPER#"));
    let mode = std::fs::metadata(&postinst_path)
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "postinst is not executable: {mode:o}");
}

#[test]
fn man_pages_and_completions_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    tlsgate(&["man", "--out", out.to_str().unwrap()]);
    // One page for the program and one per command, subcommands included.
    for page in [
        "tlsgate.1",
        "tlsgate-serve.1",
        "tlsgate-check-config.1",
        "tlsgate-probe.1",
        "tlsgate-queue.1",
        "tlsgate-queue-list.1",
        "tlsgate-domains-check.1",
        "tlsgate-audit-verify.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH "), "{page}");
    }
    let main = std::fs::read_to_string(out.join("tlsgate.1")).unwrap();
    assert!(main.contains("check\\-config"), "{main}");

    for (shell, marker) in [
        ("bash", "_tlsgate()"),
        ("zsh", "#compdef tlsgate"),
        ("fish", "complete -c tlsgate"),
    ] {
        let script = String::from_utf8(tlsgate(&["completions", shell]).stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        assert!(script.contains("check-config"), "{shell}: no check-config");
    }
}

/// A minimal configuration on a free loopback port; the DNS server is a closed port (no query
/// leaves loopback).
fn config(dir: &Path) -> PathBuf {
    let ca = common::TestCa::new();
    let (cert, key) = ca.write_server_files(dir, &["mx.packaging.tlsgate.test"]);
    let path = dir.join("tlsgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
hostname = "mx.packaging.tlsgate.test"
data_dir = "{data}"
min_free_space = 0

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
bind = "127.0.0.1:0"
role = "inbound"

[inbound]
local_domains = ["example.no"]

[dns]
nameservers = ["127.0.0.1:9"]
"#,
            data = dir.join("data").display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    path
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next datagram on `socket` (bounded by [`LIMIT`] through the socket's read timeout).
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification from tlsgate within the limit");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // systemd's side of sd_notify(3): a datagram socket named by NOTIFY_SOCKET.
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(LIMIT)).unwrap();
    let mut guard = Guard(
        Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .args([
                "serve",
                "--grace",
                "1s",
                "--config",
                config.to_str().unwrap(),
            ])
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = next_message(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.lines().any(|l| l == "STATUS=accepting mail"),
        "{ready:?}"
    );
    // Ready means the queue is open and the listener bound: the data directory exists.
    assert!(dir.path().join("data").is_dir());

    // SIGHUP: RELOADING=1 with the monotonic time (systemd 253+ needs it), then READY=1.
    let pid = guard.0.id().to_string();
    let kill = |signal: &str| {
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    kill("-HUP");
    let reloading = next_message(&socket);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    assert!(next_message(&socket).lines().any(|l| l == "READY=1"));

    kill("-TERM");
    let stopping = next_message(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
