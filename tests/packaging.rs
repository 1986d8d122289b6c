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
    // cargo-deb installs every unit file of unit-scripts: the service and the sysusers entry
    // (usr/lib/sysusers.d/tlsgate.conf, the tlsgate user).
    assert!(repo("deploy/tlsgate.service").is_file());
    assert!(repo("deploy/tlsgate.sysusers").is_file());
    let postinst_path = repo("deploy/debian/postinst");
    let postinst = std::fs::read_to_string(&postinst_path).expect("postinst");
    assert!(postinst.contains("install -d -m 0700 -o tlsgate -g tlsgate /var/lib/tlsgate"));
    assert!(postinst.contains("#DEBHELPER#"));
    let mode = std::fs::metadata(&postinst_path)
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "postinst is not executable: {mode:o}");
}

/// The package itself, built by cargo-deb from the test build of the binary (`--profile dev`;
/// `scripts/package.sh` builds the release one the same way), and its file list, conffiles and
/// maintainer script as dpkg sees them. Skipped with a note when cargo-deb is absent
/// (`scripts/test.sh` installs it, so CI always builds the package).
#[test]
fn the_deb_builds_and_holds_the_files_an_admin_needs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        println!("cargo-deb not installed: the package's metadata is checked, not the package");
        return;
    }
    // The assets scripts/package.sh generates, from this build of the binary. The binary
    // cargo-deb packs is target/<profile>/tlsgate, i.e. the one the tests run.
    let bin = Path::new(env!("CARGO_BIN_EXE_tlsgate"));
    let target = bin.parent().unwrap().parent().unwrap();
    let assets = target.join("assets");
    let _ = std::fs::remove_dir_all(&assets);
    std::fs::create_dir_all(assets.join("completions")).unwrap();
    tlsgate(&["man", "--out", assets.join("man").to_str().unwrap()]);
    for (shell, file) in [
        ("bash", "tlsgate.bash"),
        ("zsh", "_tlsgate"),
        ("fish", "tlsgate.fish"),
    ] {
        std::fs::write(
            assets.join("completions").join(file),
            tlsgate(&["completions", shell]).stdout,
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("tlsgate.deb");
    let built = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--locked",
            "--profile",
            "dev",
            "--fast",
        ])
        .arg("--no-strip")
        .arg("-o")
        .arg(&deb)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let dpkg = |args: &[&str]| -> String {
        let output = Command::new("dpkg-deb")
            .args(args)
            .arg(&deb)
            .output()
            .unwrap();
        assert!(output.status.success(), "dpkg-deb {args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listing = dpkg(&["--contents"]);
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for expected in [
        "./usr/bin/tlsgate",
        "./etc/tlsgate/tlsgate.toml",
        "./usr/lib/systemd/system/tlsgate.service",
        "./usr/lib/sysusers.d/tlsgate.conf",
        "./usr/share/man/man1/tlsgate.1.gz",
        "./usr/share/man/man1/tlsgate-serve.1.gz",
        "./usr/share/man/man1/tlsgate-queue-list.1.gz",
        "./usr/share/bash-completion/completions/tlsgate",
        "./usr/share/zsh/vendor-completions/_tlsgate",
        "./usr/share/fish/vendor_completions.d/tlsgate.fish",
        "./usr/share/doc/tlsgate/README.md",
        "./usr/share/doc/tlsgate/copyright",
    ] {
        assert!(
            files.contains(&expected),
            "{expected} not in the package:\n{listing}"
        );
    }
    // The configuration is a conffile: an upgrade never overwrites the admin's edits.
    assert!(dpkg(&["--info"]).contains("conffiles"));
    let info_dir = dir.path().join("control");
    let extracted = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&info_dir)
        .status()
        .unwrap();
    assert!(extracted.success());
    let conffiles = std::fs::read_to_string(info_dir.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/tlsgate/tlsgate.toml");
    // The service user before its data directory; the unit enabled.
    let postinst = std::fs::read_to_string(info_dir.join("postinst")).unwrap();
    let user = postinst.find("systemd-sysusers").expect("user created");
    let data = postinst
        .find("install -d -m 0700 -o tlsgate -g tlsgate /var/lib/tlsgate")
        .expect("data directory created");
    assert!(user < data, "{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable tlsgate.service"));
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
